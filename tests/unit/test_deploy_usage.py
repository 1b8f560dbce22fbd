"""./deploy's bad usage is exit 2 with one line, before anything boots or builds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rate", "abc"], "--rate must be requests/s (400) or a percentage"),
        (["--rate", "0%"], "--rate must be requests/s (400) or a percentage"),
        (["--listen", "udp"], "--listen must be reuseport or socket"),
        (["--image", "big"], "--image must be minimal or clone"),
        (["--inventory", "/nonexistent/inv.ini"], "cannot read inventory /nonexistent/inv.ini"),
        (["--bogus"], "unknown argument: --bogus"),
    ],
)
def test_bad_usage_is_exit_2(args: list[str], says: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(DEPLOY), *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"deploy: {says}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "run").exists()  # nothing made


def test_help_names_the_flags_the_log_and_the_exit_codes() -> None:
    proc = subprocess.run([str(DEPLOY), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for word in ("--rate R|P%", "--out DIR", "ansible.log", "timeline.png", "Exit codes: 0"):
        assert word in proc.stdout, word
