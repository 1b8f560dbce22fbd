"""Exit codes and the unit's RestartPreventExitStatus= must agree: what a restart cannot
fix stops the unit, what a restart can fix (a broken listener, a crash) restarts it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sockact import errors

UNITS = Path(__file__).resolve().parents[2] / "units"


def _prevented(unit: Path) -> set[int]:
    match = re.search(r"^RestartPreventExitStatus=(.*)$", unit.read_text(), re.M)
    assert match, f"{unit}: no RestartPreventExitStatus="
    return {int(code) for code in match.group(1).split()}


@pytest.mark.parametrize("mode", ["reuseport", "socket"])
def test_restart_prevented_only_for_what_a_restart_cannot_fix(mode: str) -> None:
    prevented = _prevented(UNITS / mode / "api@.service")
    for cannot_fix in (errors.BadInput, errors.AppFailed, errors.AddressError):
        assert cannot_fix.exit_code in prevented, (cannot_fix, prevented)
    for can_fix in (errors.ListenerFailed, errors.SockactError):
        assert can_fix.exit_code not in prevented, (can_fix, prevented)


def test_exit_codes_are_distinct() -> None:
    codes = [
        errors.EXIT_OK,
        errors.EXIT_INTERNAL,
        errors.EXIT_BAD_INPUT,
        errors.EXIT_APP_FAILED,
        errors.EXIT_ADDRESS,
        errors.EXIT_PROBE_FAILED,
        errors.EXIT_CANARY_FAILED,
        errors.EXIT_LISTENER_FAILED,
        errors.EXIT_VERIFY_FAILED,
        errors.EXIT_COMMAND_FAILED,
        errors.EXIT_FORCED,
        errors.EXIT_BROKEN_PIPE,
    ]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize(
    ("args", "code"),
    [(["layout"], errors.EXIT_BROKEN_PIPE), (["settings", "--help"], errors.EXIT_BROKEN_PIPE)],
    ids=["layout", "help"],
)
def test_a_reader_that_goes_away_is_no_internal_error(args: list[str], code: int) -> None:
    """`sockact layout | true`: exit 141 (as a shell reports SIGPIPE), no traceback; the
    same for the help that argparse prints itself."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "sockact.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before Python has even started
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == code, err
    assert err == "", err
