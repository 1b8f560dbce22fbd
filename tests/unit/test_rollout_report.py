"""``sockact rollout report DIR`` on a run's files that are damaged: truncated, not JSON,
wrong types. Each is one error line naming the file and what is wrong, exit 2, and the
directory is left as it was (no summary.txt, events.json or timeline.png written).

The host files are real (tests/unit/data/deploy, from a lab deploy); rollout.json and
probe.json are cut to what the summary reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sockact import cli, errors

DATA = Path(__file__).parent / "data" / "deploy"
URLS = ["http://10.203.1.2:8080/", "http://10.203.2.2:8080/"]


def make_run(out: Path) -> None:
    (out / "hosts").mkdir(parents=True)
    for f in DATA.glob("sockact-?.*"):
        (out / "hosts" / f.name).write_bytes(f.read_bytes())
    meta = {
        "label": "deploy v2",
        "log": str(out / "ansible.log"),
        "name": "api",
        "machine": "vm",
        "hosts": [{"name": f"sockact-{i}", "url": u} for i, u in enumerate(URLS, 1)],
        "capacity": {"rps": 1000.0, "fraction": 0.25, "measured": True},
        "command_rc": 0,
        "command_s": 136.0,
        "command_t": [0.5, 136.5],
        "plays": [{"t": 0.6, "play": "Preflight"}, {"t": 136.0, "play": ""}],
        "journal": {"ok": True},
    }
    report = {
        "mode": "open",
        "rate": 250.0,
        "started_at": 1.7e9,
        "targets": URLS,
        "total": 100,
        "failed": 0,
        "failures": {"reset": 0},
        "duration_s": 138.0,
        "latency_ms": {"p50": 2.0, "p99": 12.5, "max": 80.0},
        "late": 0,
        "send_lag_ms": {"p99": 1.0, "max": 12.0},
        "samples": [{"instance": "1", "version": "1.0.0", "count": 100}],
        "series": [{"t": 0, "ok": 100, "p99_ms": 12.5, "max_ms": 80.0}],
        "bucket_s": 0.1,
        "buckets": [
            {"t": 0.0, "ok": 100, "targets_failed": [0, 0], "answered": [["1", "1.0.0", 100]]}
        ],
    }
    (out / "rollout.json").write_text(json.dumps(meta))
    (out / "probe.json").write_text(json.dumps(report))


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def report(out: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    code = cli.main(["rollout", "report", str(out), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_good_run_is_summarized(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The run the damaged ones below start from (they are not refused for another reason)."""
    make_run(tmp_path)
    code, out, err = report(tmp_path, capsys, "--no-png")
    assert (code, err) == (0, "")
    assert "deploy v2: 2 host(s)" in out and "sockact-1  v1 -> v2" in out
    assert (tmp_path / "summary.txt").exists()


def edit_json(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        path = out / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return edit


def set_key(key: str, value: Any) -> Callable[[Any], Any]:
    def change(doc: Any) -> Any:
        doc[key] = value
        return doc

    return change


def truncate(name: str) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        path = out / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return edit


def write(name: str, data: bytes) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        (out / name).write_bytes(data)

    return edit


def first_bucket_answered(doc: Any) -> Any:
    doc["buckets"][0]["answered"] = [["1", "1.0.0"]]
    return doc


def first_play_without_t(doc: Any) -> Any:
    del doc["plays"][0]["t"]
    return doc


def journal_dir(out: Path) -> None:
    path = out / "hosts" / "sockact-2.journal.jsonl"
    path.unlink()
    path.mkdir()


DAMAGE = {
    "rollout.json truncated": (truncate("rollout.json"), "rollout.json: not JSON: "),
    "rollout.json a list": (
        write("rollout.json", b"[]"),
        "rollout.json: the document: must be an object, not []",
    ),
    "rollout.json not UTF-8": (
        write("rollout.json", b"\xff\xfe{"),
        "rollout.json: not UTF-8 text: ",
    ),
    "a host's url a number": (
        edit_json("rollout.json", set_key("hosts", [{"name": "sockact-1", "url": 5}])),
        "rollout.json: hosts[0].url: must be a string, not 5",
    ),
    "hosts an object": (
        edit_json("rollout.json", set_key("hosts", {"sockact-1": URLS[0]})),
        "rollout.json: hosts: must be a list, not {",
    ),
    "command_s text": (
        edit_json("rollout.json", set_key("command_s", "136 s")),
        'rollout.json: command_s: must be a number, not "136 s"',
    ),
    "a play without t": (
        edit_json("rollout.json", first_play_without_t),
        "rollout.json: plays[0].t: missing",
    ),
    "capacity fraction text": (
        edit_json("rollout.json", set_key("capacity", {"fraction": "25%", "rps": 1000})),
        'rollout.json: capacity.fraction: must be a number, not "25%"',
    ),
    "probe.json truncated": (truncate("probe.json"), "probe.json: not JSON: "),
    "probe.json total text": (
        edit_json("probe.json", set_key("total", "100")),
        'probe.json: total: must be an integer, not "100"',
    ),
    "probe.json NaN": (
        edit_json("probe.json", set_key("duration_s", float("nan"))),
        "probe.json: duration_s: must be a number, not NaN",
    ),
    "probe.json a bucket's answered short": (
        edit_json("probe.json", first_bucket_answered),
        'probe.json: buckets[0].answered[0]: must be a list of 3, not ["1", "1.0.0"]',
    ),
    "probe.json missing": (
        lambda out: (out / "probe.json").unlink(),
        "cannot read {out}/probe.json: No such file or directory",
    ),
    "a deploy record truncated": (
        truncate("hosts/sockact-1.deploy.json"),
        "hosts/sockact-1.deploy.json: not JSON: ",
    ),
    "a deploy record a list": (
        write("hosts/sockact-1.deploy.json", b"[101, 102]\n"),
        "hosts/sockact-1.deploy.json: the document: must be an object, not [101, 102]",
    ),
    "a journal line not JSON": (
        write("hosts/sockact-1.journal.jsonl", b'{"MESSAGE": "ok"}\n{"MESS\n'),
        "hosts/sockact-1.journal.jsonl: journal line 2: not JSON: ",
    ),
    "a journal a directory": (
        journal_dir,
        "cannot read {out}/hosts/sockact-2.journal.jsonl: Is a directory",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_file_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    edit, why = DAMAGE[damage]
    make_run(tmp_path)
    edit(tmp_path)
    before = files(tmp_path)
    code, out, err = report(tmp_path, capsys)
    assert code == errors.EXIT_BAD_INPUT
    lines = err.splitlines()
    assert len(lines) == 1, err
    why = why.replace("{out}", str(tmp_path))
    assert lines[0].startswith("sockact: error: rollout: "), err
    if why.startswith("cannot read"):
        assert lines[0] == f"sockact: error: rollout: {why}"
    else:
        assert lines[0].startswith(f"sockact: error: rollout: {tmp_path}/{why}"), err
    assert out == ""
    assert files(tmp_path) == before


def test_a_run_without_load_has_no_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``rollout run --rate none`` leaves: said so, not 'cannot read probe.json'."""
    (tmp_path / "rollout.json").write_text(json.dumps({"label": "x", "command_rc": 0}))
    code, out, err = report(tmp_path, capsys)
    assert (code, out) == (errors.EXIT_BAD_INPUT, "")
    assert err == (
        f"sockact: error: rollout: {tmp_path}: a run without load (--rate none): no summary\n"
    )
    assert files(tmp_path) == {"rollout.json": b'{"label": "x", "command_rc": 0}'}
