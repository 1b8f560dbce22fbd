"""``sockact verify``'s own decisions, without hosts: its ``--hosts`` list and how pytest's
outcome becomes its exit code. The command against a host: tests/integration and
tests/infra_selftest."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockact.cli import build_parser, main
from sockact.controller.verify import command
from sockact.errors import (
    EXIT_BAD_INPUT,
    EXIT_FORCED,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_VERIFY_FAILED,
    BadInput,
    SockactError,
)


@pytest.mark.parametrize(
    ("hosts", "position"), [("a,,b", "2 of 3"), ("api,", "2 of 2"), (" ,api", "1 of 2")]
)
def test_an_empty_name_in_hosts_is_one_line_of_bad_input(
    hosts: str, position: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[api]\nthis-machine ansible_connection=local\n")
    assert main(["verify", "-i", str(inventory), "--hosts", hosts]) == EXIT_BAD_INPUT
    out = capsys.readouterr()
    assert out.err == (
        f"sockact: error: --hosts {hosts!r}: name {position} is empty (comma-separated "
        "group or host names, or globs)\n"
    )
    assert out.out == ""


def test_hosts_become_testinfra_specs() -> None:
    assert command.host_specs("web-*, db") == ["ansible://web-*", "ansible://db"]
    with pytest.raises(BadInput):
        command.host_specs("")


def test_a_keyboard_interrupt_is_exit_130() -> None:
    # what pytest.main returns, and what its keyboard interrupt hook saw, on Ctrl-C
    assert command.exit_code(pytest.ExitCode.INTERRUPTED, KeyboardInterrupt()) == EXIT_FORCED
    # an INTERRUPTED outcome whose cause the hook did not see: interrupted all the same
    assert command.exit_code(pytest.ExitCode.INTERRUPTED, None) == EXIT_FORCED


def test_errors_during_collection_are_not_an_interrupt() -> None:
    # pytest ends a run whose collection failed with a KeyboardInterrupt subclass
    stopped = pytest.Session.Interrupted("1 error during collection")
    with pytest.raises(SockactError) as err:
        command.exit_code(pytest.ExitCode.INTERRUPTED, stopped)
    assert err.value.exit_code == EXIT_INTERNAL
    assert err.value.message == (
        "pytest stopped the run: 1 error during collection (its errors above)"
    )


def test_pytest_outcomes_as_exit_codes() -> None:
    assert command.exit_code(pytest.ExitCode.OK, None) == EXIT_OK
    assert command.exit_code(pytest.ExitCode.TESTS_FAILED, None) == EXIT_VERIFY_FAILED
    assert command.exit_code(pytest.ExitCode.INTERNAL_ERROR, None) == EXIT_INTERNAL
    for code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.NO_TESTS_COLLECTED):
        with pytest.raises(BadInput):
            command.exit_code(code, None)


def test_the_service_group_reaches_the_checks() -> None:
    """``--group`` (the role's ``sockact_group``) becomes the plugin's ``--sockact-group``;
    without it the checks take the default ``units render`` gives (the user's name)."""

    def argv(*flags: str) -> list[str]:
        return command.pytest_args(build_parser().parse_args(["verify", "-i", "inv", *flags]))

    assert "--sockact-group=web" in argv("--user", "api", "--group", "web")
    assert not any(a.startswith("--sockact-group") for a in argv("--user", "api"))
