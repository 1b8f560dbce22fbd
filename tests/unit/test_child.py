"""sockact.controller.child: the command under ``sockact rollout`` with real processes.

The stops by signal and by a closed stdout are tested end to end (``sockact rollout run``)
in tests/integration/test_rollout_stops.py; here, what only the function shows.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from sockact.controller.child import Stops, run_command
from tests.integration.support import alive


def test_a_failing_tick_stops_the_command_before_the_error_goes_on(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    sleeper = (
        f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )

    def tick() -> None:
        if pidfile.exists() and pidfile.read_text():
            raise RuntimeError("the progress line broke")

    pid = 0
    try:
        with (
            (tmp_path / "log").open("w") as log,
            pytest.raises(RuntimeError, match="progress line broke"),
        ):
            run_command([sys.executable, "-c", sleeper], log, Stops(), tick=tick, every=0.1)
        pid = int(pidfile.read_text())
        assert not alive(pid)
    finally:
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_failing_tick_leaves_nothing_of_the_commands_process_group(tmp_path: Path) -> None:
    """The command ends on SIGTERM, but a child of it ignores SIGTERM (an Ansible worker
    busy in a module): once the command ended, what is left of its group gets SIGKILL, as
    after a stop by signal."""
    pidfile = tmp_path / "pid"
    # the child ignores SIGTERM and writes its pid; the leader waits for it
    child = f"trap '' TERM; echo $$ > {pidfile}; exec sleep 600"
    leader = f"sh -c {shlex.quote(child)} & wait"

    def tick() -> None:
        if pidfile.exists() and pidfile.read_text().strip():
            raise RuntimeError("the progress line broke")

    pid = 0
    try:
        with (
            (tmp_path / "log").open("w") as log,
            pytest.raises(RuntimeError, match="progress line broke"),
        ):
            run_command(["sh", "-c", leader], log, Stops(), tick=tick, every=0.1)
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "a child of the command outlived the failed rollout"
    finally:
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_log_that_fails_does_not_block_the_command(tmp_path: Path) -> None:
    """A full disk under the log: the output is still read (the command would block on a
    full pipe otherwise), and the error is kept for the end."""
    chatty = (
        "import signal; signal.alarm(60)\n"  # a blocked command fails the test, not hangs it
        "for i in range(5000): print(f'line {i} ' + 'x' * 60)\n"
    )
    lines: list[str] = []
    began = time.monotonic()
    log = open("/dev/full", "w")  # noqa: SIM115 (its close fails too)
    try:
        ran = run_command([sys.executable, "-c", chatty], log, Stops(), feed=lines.append)
    finally:
        with contextlib.suppress(OSError):
            log.close()
    assert ran.rc == 0, f"exit {ran.rc} after {time.monotonic() - began:.0f} s"
    assert "No space left on device" in ran.log_error
    assert len(lines) == 5000 and lines[-1].startswith("line 4999 ")
