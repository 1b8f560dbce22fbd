"""``sockact verify -i INVENTORY``: run the host checks against deployed hosts.

Runs :mod:`sockact.controller.verify.checks` with pytest and pytest-testinfra (the extra
``sockact[verify]``) over the inventory's hosts, and turns pytest's outcome into
sockact's exit codes: 0 every check passed, 9 a check failed, 4 the pattern matched no
host, 2 bad input (an inventory that does not parse, pytest arguments it refuses or that
select no check, the extra missing, an empty name in ``--hosts``), 130 interrupted (Ctrl-C),
1 anything else (a check module that pytest could not collect, too).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from sockact import layout
from sockact.errors import (
    EXIT_ADDRESS,
    EXIT_BAD_INPUT,
    EXIT_FORCED,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_VERIFY_FAILED,
    AddressError,
    BadInput,
    MissingExtra,
    SockactError,
)

HERE = Path(__file__).resolve().parent
CHECKS = HERE / "checks.py"
PLUGIN = "sockact.controller.verify.plugin"
#: what ``sockact[verify]`` installs: module or program -> distribution
NEEDS = {"pytest": "pytest", "testinfra": "pytest-testinfra", "ansible-inventory": "ansible-core"}
#: the group the playbooks run on unless told otherwise (``sockact_hosts``)
DEFAULT_PATTERN = "api"

DESCRIPTION = """\
Is this host right? Checks every host of the inventory that the pattern matches against
its deploy record (deploy.json): the unit files installed, loaded and verified, the
recorded color running and ready and no other, the main port held by its instances, the
sysctl of reuseport mode, the sandbox as rendered, the release each instance runs, the
journal. One check per test and instance, run by pytest and pytest-testinfra over SSH as
Ansible connects (pip install 'sockact[verify]').
"""

EPILOG = f"""\
exit codes:
  0    every check passed on every host
  {EXIT_VERIFY_FAILED}    a check failed (the output names it, with the unit's status, journal
       and listeners)
  {EXIT_ADDRESS}    the pattern matched no host or group of the inventory
  {EXIT_BAD_INPUT}    bad input: an inventory that does not parse, flags, pytest arguments
       refused or selecting no check, sockact[verify] not installed
  {EXIT_FORCED}  interrupted (Ctrl-C, SIGINT)
  {EXIT_INTERNAL}    internal error (pytest could not collect the checks: its errors above)

examples:
  sockact verify -i inventory.ini                     # the group api
  sockact verify -i inventory.ini --hosts 'web-*'     # hosts or groups by glob
  sockact verify -i inventory.ini -- -k release -v    # pytest arguments after --
"""


def _missing_extra() -> list[str]:
    missing = [dist for mod, dist in NEEDS.items() if "-" not in mod and not _importable(mod)]
    if _ansible_inventory() is None:
        missing.append(NEEDS["ansible-inventory"])
    return missing


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _ansible_inventory() -> str | None:
    """The ``ansible-inventory`` testinfra's ansible backend will run, found on PATH or
    beside this interpreter (a venv used without being activated)."""
    return shutil.which("ansible-inventory") or shutil.which(
        "ansible-inventory", path=str(Path(sys.executable).parent)
    )


def host_specs(hosts: str) -> list[str]:
    """testinfra's host specs (``ansible://PATTERN``) of ``--hosts``; an empty name in the
    list (``a,,b``, a trailing comma) is bad input, not "every host" or a host named ""."""
    names = [part.strip() for part in hosts.split(",")]
    empty = [n for n, name in enumerate(names, 1) if not name]
    if empty:
        raise BadInput(
            f"--hosts {hosts!r}: name {empty[0]} of {len(names)} is empty "
            "(comma-separated group or host names, or globs)"
        )
    return [f"ansible://{name}" for name in names]


def pytest_args(args: argparse.Namespace) -> list[str]:
    """The pytest command line ``sockact verify`` runs; its configuration is the
    ``pytest.ini`` beside the checks, not the caller's."""
    spec = ",".join(host_specs(args.hosts))
    ours = [
        str(CHECKS),
        "-p",
        PLUGIN,
        f"--hosts={spec}",
        f"--ansible-inventory={args.inventory}",
    ]
    for key in ("name", "user", "group", "config_dir", "release_root", "unit_dir", "sysctl_dir"):
        value = getattr(args, key)
        if value:
            ours.append(f"--sockact-{key.replace('_', '-')}={value}")
    if args.max_exposure:
        ours.append(f"--sockact-max-exposure={args.max_exposure}")
    return ours + list(args.pytest_args)


class _Outcome:
    """Registered with pytest.main: what the exit code alone does not say."""

    #: what ended the session early (pytest's hook sees a Ctrl-C, pytest.exit and pytest's
    #: own "errors during collection", a KeyboardInterrupt subclass, alike)
    interrupt: BaseException | None = None

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.interrupt = excinfo.value


def exit_code(code: int, interrupt: BaseException | None) -> int:
    """sockact's exit code for pytest's exit ``code`` (``interrupt``: what the keyboard
    interrupt hook saw, if it ran)."""
    import pytest

    # pytest.Session.Interrupted ("N errors during collection") subclasses KeyboardInterrupt
    by_user = isinstance(interrupt, KeyboardInterrupt) and not isinstance(
        interrupt, pytest.Session.Interrupted
    )
    if by_user or (code == pytest.ExitCode.INTERRUPTED and interrupt is None):
        return EXIT_FORCED
    if code == pytest.ExitCode.OK:
        return EXIT_OK
    if code == pytest.ExitCode.TESTS_FAILED:
        return EXIT_VERIFY_FAILED
    if code == pytest.ExitCode.USAGE_ERROR:
        raise BadInput("pytest refused the arguments (see its message above)")
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        raise BadInput("no check ran: the pytest arguments deselected every check")
    if isinstance(interrupt, pytest.Session.Interrupted):
        # most often "N errors during collection": a check module that does not import,
        # a host whose record could not be read while collecting
        raise SockactError(f"pytest stopped the run: {interrupt} (its errors above)")
    return EXIT_INTERNAL


def _resolve_hosts(args: argparse.Namespace) -> list[Any]:
    import testinfra

    try:
        hosts: list[Any] = testinfra.get_hosts(
            host_specs(args.hosts), ansible_inventory=args.inventory
        )
    except (AssertionError, RuntimeError) as exc:  # ansible-inventory failed, or parsed nothing
        last = str(exc).strip().splitlines()[-1:] or ["(no message)"]
        raise BadInput(f"--inventory {args.inventory}: cannot read it: {last[0]}") from exc
    return hosts


def run(args: argparse.Namespace) -> int:
    host_specs(args.hosts)  # bad input first, before anything runs
    missing = _missing_extra()
    if missing:
        raise MissingExtra(
            f"sockact verify needs the extra sockact[verify] ({', '.join(missing)} missing): "
            "pip install 'sockact[verify]'"
        )
    inventory = Path(args.inventory)
    if not inventory.exists():
        raise BadInput(f"--inventory {args.inventory}: no such file or directory")
    tool = _ansible_inventory()
    if tool and shutil.which("ansible-inventory") is None:  # testinfra runs it from PATH
        os.environ["PATH"] = f"{Path(tool).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if not _resolve_hosts(args):
        raise AddressError(f"--hosts {args.hosts!r} matches no host or group of {args.inventory}")

    import pytest

    outcome = _Outcome()
    code = pytest.main(pytest_args(args), plugins=[outcome])
    return exit_code(code, outcome.interrupt)


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact verify``."""
    p = sub.add_parser(
        "verify",
        help="check deployed hosts against their deploy record (testinfra; sockact[verify])",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--inventory", required=True, help="Ansible inventory of the hosts")
    p.add_argument(
        "--hosts",
        default=DEFAULT_PATTERN,
        metavar="PATTERN",
        help="group or host names, or globs (web-*), comma-separated (default api, the "
        "role's group)",
    )
    p.add_argument("--name", default="", help=f"unit name (default {layout.DEFAULT_NAME})")
    p.add_argument("--user", default="", help="user the units were rendered with (default api)")
    p.add_argument(
        "--group",
        default="",
        help="group the units were rendered with (the role's sockact_group; default: the "
        "user's name)",
    )
    p.add_argument("--config-dir", default="", help="default /etc/<name>")
    p.add_argument("--release-root", default="", help="default /opt/<name>")
    p.add_argument("--unit-dir", default="", help=f"default {layout.HostLayout().unit_dir}")
    p.add_argument("--sysctl-dir", default="", help=f"default {layout.HostLayout().sysctl_dir}")
    p.add_argument(
        "--max-exposure",
        type=float,
        default=0.0,
        help="highest `systemd-analyze security` exposure of a running instance (default: "
        "the installed unit file's own, offline)",
    )
    p.add_argument(
        "pytest_args",
        nargs="*",
        metavar="-- PYTEST_ARG",
        help="passed to pytest after --: -k EXPR, -v, -x, --ssh-config FILE, --sudo...",
    )
    p.set_defaults(func=run)
