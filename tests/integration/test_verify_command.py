"""``sockact verify`` as a command: its exit codes, and what it says when it cannot run.

A lab-free part: the inventory names this machine with ``ansible_connection=local``, and
``--config-dir`` points at a directory with no deploy record, so the checks run (through
pytest and testinfra, as on a real host) and fail on the record. The checks against real
hosts, right and broken, are in tests/infra_selftest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sockact.cli import build_parser
from sockact.controller.verify import command
from sockact.errors import (
    EXIT_ADDRESS,
    EXIT_BAD_INPUT,
    EXIT_FORCED,
    EXIT_INTERNAL,
    EXIT_VERIFY_FAILED,
)

SOCKACT = Path(sys.executable).parent / "sockact"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.ini"
    path.write_text("[api]\nthis-machine ansible_connection=local\n")
    return path


def verify(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SOCKACT), "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


def with_plugin(tmp_path: Path, name: str, code: str) -> dict[str, str]:
    """The environment of a run whose pytest can load the plugin ``name`` (``-- -p name``)."""
    (tmp_path / f"{name}.py").write_text(code)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_ctrl_c_during_a_check_is_exit_130(inventory: Path, tmp_path: Path) -> None:
    # as a SIGINT while a check waits for its host: the KeyboardInterrupt reaches pytest
    env = with_plugin(
        tmp_path, "ctrl_c", "def pytest_runtest_call(item):\n    raise KeyboardInterrupt\n"
    )
    proc = verify(
        "-i", str(inventory), "--config-dir", str(tmp_path), "--", "-p", "ctrl_c", env=env
    )
    assert proc.returncode == EXIT_FORCED, proc.stdout + proc.stderr


def test_checks_that_cannot_be_collected_are_an_error_not_an_interrupt(
    inventory: Path, tmp_path: Path
) -> None:
    # pytest ends such a run as "Interrupted: 1 error during collection", by raising a
    # KeyboardInterrupt subclass: nobody pressed Ctrl-C
    plugin = "def pytest_generate_tests(metafunc):\n    raise RuntimeError('no host')\n"
    env = with_plugin(tmp_path, "broken", plugin)
    proc = verify(
        "-i", str(inventory), "--config-dir", str(tmp_path), "--", "-p", "broken", env=env
    )
    assert proc.returncode == EXIT_INTERNAL, proc.stdout + proc.stderr
    assert "RuntimeError: no host" in proc.stdout, proc.stdout
    assert proc.stderr.endswith(
        "sockact: error: pytest stopped the run: 1 error during collection (its errors above)\n"
    ), proc.stderr


def test_a_host_without_a_deploy_record_fails_the_record_check(
    inventory: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "etc-api"
    empty.mkdir()
    # from a directory whose pytest configuration would break any run: it does not apply
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --no-such-option\n")
    proc = verify("-i", str(inventory), "--config-dir", str(empty), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_VERIFY_FAILED, out
    assert "FAILED" in out and "test_deploy_record_is_valid[ansible://this-machine]" in out, out
    assert f"{empty}/deploy.json unreadable" in out, out


def test_a_pattern_that_matches_no_host(inventory: Path) -> None:
    proc = verify("-i", str(inventory), "--hosts", "web-*")
    assert proc.returncode == EXIT_ADDRESS, proc.stdout + proc.stderr
    assert (
        proc.stderr == f"sockact: error: --hosts 'web-*' matches no host or group of {inventory}\n"
    )
    assert proc.stdout == ""


def test_an_inventory_that_does_not_exist(tmp_path: Path) -> None:
    proc = verify("-i", str(tmp_path / "nope.ini"))
    assert proc.returncode == EXIT_BAD_INPUT
    assert (
        proc.stderr
        == f"sockact: error: --inventory {tmp_path}/nope.ini: no such file or directory\n"
    )


def test_pytest_arguments_that_select_no_check(inventory: Path, tmp_path: Path) -> None:
    proc = verify("-i", str(inventory), "--config-dir", str(tmp_path), "--", "-k", "no_such_check")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
    assert "no check ran" in proc.stderr


def test_pytest_arguments_pytest_refuses(inventory: Path) -> None:
    proc = verify("-i", str(inventory), "--", "--no-such-option")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
    assert "unrecognized arguments: --no-such-option" in proc.stderr


def test_without_the_extra_it_says_what_to_install(inventory: Path) -> None:
    script = (
        "import sys; sys.modules['testinfra'] = None\n"  # as if pytest-testinfra were missing
        "from sockact.cli import main\n"
        f"sys.exit(main(['verify', '-i', {str(inventory)!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr == (
        "sockact: error: sockact verify needs the extra sockact[verify] (pytest-testinfra "
        "missing): pip install 'sockact[verify]'\n"
    )


def test_the_layout_flags_reach_the_checks() -> None:
    args = build_parser().parse_args(
        ["verify", "-i", "inv.ini", "--hosts", "web-1,db", "--name", "web", "--max-exposure",
         "1.5", "--", "-x", "-k", "release"]
    )  # fmt: skip
    argv = command.pytest_args(args)
    assert argv[0] == str(command.CHECKS)
    assert "--hosts=ansible://web-1,ansible://db" in argv
    assert "--ansible-inventory=inv.ini" in argv
    assert "--sockact-name=web" in argv and "--sockact-max-exposure=1.5" in argv
    assert not any(a.startswith("--sockact-config-dir") for a in argv)  # the layout's default
    assert argv[-3:] == ["-x", "-k", "release"]


def test_help_gives_the_exit_codes() -> None:
    proc = verify("--help")
    assert proc.returncode == 0
    for code in (EXIT_VERIFY_FAILED, EXIT_ADDRESS, EXIT_BAD_INPUT):
        assert f"\n  {code} " in proc.stdout, proc.stdout
