"""``sockact rollout run`` refuses bad flags and unusable paths before the command runs.

The "deploy" would make a marker file: it must never run when the input is bad, and the
answer is one error line with exit 2, not a traceback.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from sockact import cli, errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, list[str], Path]:
    marker = tmp_path / "deployed"
    argv = ["rollout", "run", "--rate", "none", *flags]
    if "--out" not in flags:
        argv += ["--out", str(tmp_path / "run")]
    code = cli.main([*argv, "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    errors_seen = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    return code, errors_seen, marker


@pytest.mark.parametrize(
    ("flag", "value", "why"),
    [
        ("--tail", "inf", "'inf': a finite number of seconds"),
        ("--tail", "nan", "'nan': a finite number of seconds"),
        ("--tail", "-1", "'-1': must be >= 0 seconds"),
        ("--tail", "soon", "'soon' is not a number of seconds"),
        ("--every", "0", "'0': must be > 0 seconds"),
        ("--every", "NaN", "'NaN': a finite number of seconds"),
        ("--capacity-seconds", "-inf", "'-inf': a finite number of seconds"),
        ("--port", "0", "'0': a port is 1-65535"),
        ("--path", "healthz", "'healthz': a URL path, from / (no spaces)"),
        ("--path", "/a b", "'/a b': a URL path, from / (no spaces)"),
        ("--rate", "fast", "'fast': a number of requests/s, or N%"),
        ("--rate", "inf%", "'inf%': must be > 0 (and at most 1000%)"),
        ("--port", "65536", "'65536': a port is 1-65535"),
    ],
)
def test_a_bad_number_is_refused_in_one_line_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, why: str
) -> None:
    code, lines, marker = run(tmp_path, capsys, f"{flag}={value}")
    assert code == errors.EXIT_BAD_INPUT
    help = "(see sockact rollout run --help)"
    assert lines == [f"sockact rollout run: error: argument {flag}: {why} {help}"]
    assert not marker.exists()


def test_out_that_is_a_file_is_refused_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    out.write_text("not a directory\n")
    code, lines, marker = run(tmp_path, capsys, "--out", str(out))
    assert code == errors.EXIT_BAD_INPUT
    assert lines == [f"sockact: error: rollout run: --out {out}: not a directory"]
    assert not marker.exists()
    assert out.read_text() == "not a directory\n"


def test_out_under_a_file_is_refused_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"
    code, lines, marker = run(tmp_path, capsys, "--out", str(out))
    assert code == errors.EXIT_BAD_INPUT
    assert lines == [
        f"sockact: error: rollout run: --out {out}: cannot write in it: Not a directory"
    ]
    assert not marker.exists()


def test_log_that_is_a_directory_is_refused_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs"
    log.mkdir()
    code, lines, marker = run(tmp_path, capsys, "--log", str(log))
    assert code == errors.EXIT_BAD_INPUT
    assert lines == [f"sockact: error: rollout run: --log {log}: a directory, not a file"]
    assert not marker.exists()
    assert list(log.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "why"),
    [("file/ansible.log", "Not a directory"), ("/dev/full", "No space left on device")],
)
def test_a_log_that_cannot_be_written_is_refused_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, why: str
) -> None:
    (tmp_path / "file").write_text("")
    log = tmp_path / where
    code, lines, marker = run(tmp_path, capsys, "--log", str(log))
    assert code == errors.EXIT_BAD_INPUT
    assert lines == [f"sockact: error: rollout run: --log {log}: cannot write: {why}"]
    assert not marker.exists()


def test_good_paths_run_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same calls with usable paths do run it (the tests above are not vacuous)."""
    log = tmp_path / "logs" / "deploy.log"
    code, lines, marker = run(tmp_path, capsys, "--log", str(log), "--tail", "0")
    assert (code, lines) == (0, [])
    assert marker.exists()
    assert "# " in log.read_text()
    assert (tmp_path / "run" / "rollout.json").exists()


def test_a_command_that_does_not_exist_is_refused_before_the_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not after the inventory read and the capacity burst (here the burst would fail:
    nothing listens on the port, exit 6)."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[api]\nlocal ansible_host=127.0.0.1\n")
    missing = str(tmp_path / "ansible-playbok")
    argv = ["rollout", "run", "--out", str(tmp_path / "run"), "-i", str(inventory)]
    argv += ["--port", str(free_port()), "--capacity-seconds", "0.2", "--", missing, "x.yml"]
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == errors.EXIT_BAD_INPUT
    assert captured.err == (
        f"sockact: error: rollout run: {missing}: no such command (or not executable)\n"
    )
    assert "capacity" not in captured.out
    assert not (tmp_path / "run").exists()
