"""The role's file writer (ansible/roles/sockact/library/sockact_files.py), run as Ansible
runs a module: files and links written whole, check mode writes nothing, secrets never in
the diff."""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

MODULE = Path(__file__).resolve().parents[2] / "ansible/roles/sockact/library/sockact_files.py"
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def run(tmp_path: Path, args: dict[str, Any], **flags: bool) -> dict[str, Any]:
    args = {**args, **{f"_ansible_{k}": v for k, v in flags.items()}}
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run(
        [sys.executable, str(MODULE), str(path)], capture_output=True, text=True, check=False
    )
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def spec(path: Path, content: str, mode: str = "0640") -> dict[str, str]:
    return {"path": str(path), "content": content, "mode": mode, "owner": USER, "group": GROUP}


def test_writes_files_and_links_then_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a.toml"
    link = tmp_path / "link"
    args = {"files": [spec(target, "x = 1\n")], "links": [{"path": str(link), "src": "/opt"}]}
    first = run(tmp_path, args)
    assert first["changed"] and first["changed_paths"] == [str(target), str(link)]
    assert target.read_text() == "x = 1\n" and oct(target.stat().st_mode & 0o777) == "0o640"
    assert os.readlink(link) == "/opt"
    assert run(tmp_path, args)["changed"] is False
    # a mode change alone is a change
    assert run(tmp_path, {"files": [spec(target, "x = 1\n", "0644")]})["changed"] is True


def test_check_mode_writes_nothing_and_diff_hides_secret_files(tmp_path: Path) -> None:
    shown, secret = tmp_path / "a.toml", tmp_path / "a.env"
    args = {
        "files": [spec(shown, "x = 2\n")],
        "secret_files": [spec(secret, 'TOKEN="hunter2"\n')],
        "absent": [str(tmp_path / "nothing-here")],
    }
    result = run(tmp_path, args, check_mode=True, diff=True)
    assert result["changed"] and not shown.exists() and not secret.exists()
    text = json.dumps(result)
    assert "x = 2" in text and "hunter2" not in text
    run(tmp_path, args)
    assert secret.read_text() == 'TOKEN="hunter2"\n'
    gone = run(tmp_path, {"absent": [str(secret)]})
    assert gone["changed_paths"] == [str(secret)] and not secret.exists()


def test_check_mode_diff_shows_where_a_link_would_point(tmp_path: Path) -> None:
    """--check --diff of a switch reports the instance links it would repoint."""
    link, fresh = tmp_path / "101", tmp_path / "102"
    os.symlink("/opt/api/releases/v2", link)
    args = {
        "links": [
            {"path": str(link), "src": "/opt/api/releases/v3"},
            {"path": str(fresh), "src": "/opt/api/releases/v3"},
        ]
    }
    result = run(tmp_path, args, check_mode=True, diff=True)
    assert result["changed_paths"] == [str(link), str(fresh)]
    assert [(d["before"], d["after"]) for d in result["diff"]] == [
        ("-> /opt/api/releases/v2\n", "-> /opt/api/releases/v3\n"),
        ("", "-> /opt/api/releases/v3\n"),
    ]
    assert os.readlink(link) == "/opt/api/releases/v2" and not os.path.lexists(fresh)
