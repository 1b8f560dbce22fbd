"""Release identity (sockact/runtime/release.py): a digest of what the wheels contain, equal
for the wheelhouse and for what pip installed from it, reported by the admin server."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from sockact.cli import main
from sockact.errors import BadInput
from sockact.runtime import release
from sockact.runtime.admin import AdminServer
from sockact.runtime.metrics import Metrics


def _row(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(where: Path, version: str = "1.0", body: str = "X = 1\n", *, stamp: int = 0) -> Path:
    """A small pure wheel, written by hand (``stamp`` changes only the zip timestamps)."""
    name = f"tiny-{version}"
    files = {
        "tiny/__init__.py": body.encode(),
        f"{name}.data/purelib/tiny_extra.py": b"Y = 2\n",
        f"{name}.data/scripts/tiny-tool": b"#!python\nprint(1)\n",
        f"{name}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: Tiny\nVersion: {version}\n"
        ).encode(),
        f"{name}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "\n".join([*(_row(p, d) for p, d in files.items()), f"{name}.dist-info/RECORD,,"])
    files[f"{name}.dist-info/RECORD"] = record.encode() + b"\n"
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"tiny-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, data in files.items():
            zf.writestr(zipfile.ZipInfo(p, (1980 + stamp, 1, 1, 0, 0, 0)), data)
    return path


def test_the_digest_is_the_content_not_the_zip_bytes(tmp_path: Path) -> None:
    a = make_wheel(tmp_path / "a")
    b = make_wheel(tmp_path / "b", stamp=5)
    assert a.read_bytes() != b.read_bytes()
    assert release.from_wheel(a) == release.from_wheel(b)
    changed = make_wheel(tmp_path / "c", body="X = 2\n")
    assert release.from_wheel(changed).digest != release.from_wheel(a).digest
    # the version is part of the identity: 1.0 and 1.00 are different releases
    assert release.from_wheel(make_wheel(tmp_path / "d", "1.00")) != release.from_wheel(a)


def test_installed_by_pip_it_has_the_wheelhouse_digest(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        + ["--disable-pip-version-check", "--target", str(target)]
        + [str(w) for w in house.glob("*.whl")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (target / "tiny_extra.py").exists()  # .data/purelib lands in site-packages
    wheels = release.from_wheelhouse(house)
    installed = release.installed([str(target)])
    assert installed.problems == ()
    assert installed.digest == wheels.digest
    assert installed.to_dict()["distributions"] == {
        "tiny": {"version": "1.0", "digest": wheels.distributions[0].digest}
    }


def test_a_wheelhouse_with_two_versions_of_one_distribution_is_refused(tmp_path: Path) -> None:
    make_wheel(tmp_path, "1.0")
    make_wheel(tmp_path, "2.0")
    with pytest.raises(BadInput, match=r"tiny twice: 1.0 and 2.0"):
        release.from_wheelhouse(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match=r"no \*\.whl files"):
        release.from_wheelhouse(tmp_path / "empty")


def test_release_command_prints_the_wheelhouse_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_wheel(tmp_path)
    assert main(["release", "--wheelhouse", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["digest"] == release.from_wheelhouse(tmp_path).digest
    assert doc["short"] == doc["digest"][: release.SHORT]
    assert doc["wheels"] == ["tiny-1.0-py3-none-any.whl"]
    assert main(["release", "--wheelhouse", str(tmp_path / "none")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_admin_release_reports_what_this_process_has_installed() -> None:
    admin = AdminServer("127.0.0.1", 0, Metrics(1))
    admin.start()
    try:
        with urllib.request.urlopen(f"http://{admin.address}/release", timeout=5) as resp:
            doc = json.load(resp)
    finally:
        admin.close()
    assert doc["digest"] == release.installed().digest
    assert doc["distributions"]["sockact"]["version"]
    assert doc["prefix"] == sys.prefix
