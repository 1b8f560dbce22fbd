"""Command line: ``sockact serve | check-config | print-config | units | probe | timeline |
canary | rollout | layout | settings | release | verify``.

Only this module ends the process: every other module raises
:class:`sockact.errors.SockactError`, which is mapped here to its exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from sockact import __version__
from sockact.errors import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_OK, SockactError


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error of one line (what is wrong, where to read more) instead
    of the usage block and then the error; the subcommands' parsers are of this class too
    (``add_subparsers`` makes its parsers of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole argument parser; each subcommand module adds its own part."""
    from sockact import settings
    from sockact.controller import canary, probe, rollout, timeline, units
    from sockact.controller.verify import command as verify
    from sockact.runtime import commands, release

    parser: argparse.ArgumentParser = _Parser(
        prog="sockact",
        description=(
            "Zero-downtime WSGI instances under systemd: warm up, then listen, "
            "then READY=1; drain on stop."
        ),
        epilog="Exit codes: 0 ok, 1 internal error, 2 bad input, 3 app failed (factory, "
        "warm-up, health gate), 4 address problem, 6 probe saw a failed request (or none), "
        "7 canary failed, 8 the main listener failed while serving (systemd restarts it), "
        "9 verify: a check failed on a host (4: the pattern matched no host), "
        "10 rollout: the command run under load failed, "
        "130 forced stop (a second stop signal) or interrupted (Ctrl-C), "
        "141 the output's reader went away. "
        "See README.md.",
    )
    parser.add_argument("--version", action="version", version=f"sockact {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_subcommands(sub)
    units.add_subcommand(sub)
    probe.add_subcommand(sub)
    canary.add_subcommand(sub)
    timeline.add_subcommand(sub)
    rollout.add_subcommand(sub)
    units.add_layout_subcommand(sub)
    settings.add_subcommand(sub)
    release.add_subcommand(sub)
    verify.add_subcommand(sub)
    return parser


def _to_devnull(*fds: int) -> None:
    """Point ``fds`` at /dev/null: a pipe whose reader went away takes nothing more, not
    even the flush at exit."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in fds:
        os.dup2(null, fd)
    os.close(null)


def _say(line: str) -> None:
    """One line to stderr, unless its reader went away too."""
    with contextlib.suppress(BrokenPipeError):
        print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, and return its exit code."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, a usage error: argparse has printed
            sys.stdout.flush()
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the exit
    except SockactError as exc:
        _say(f"sockact: error: {exc.message}")
        for line in exc.details:
            _say(f"sockact: error: {line}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`sockact layout | head`): not an error of ours
        _to_devnull(sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        _say(f"sockact: internal error: {type(exc).__name__}: {exc}")
        import traceback

        with contextlib.suppress(BrokenPipeError):
            traceback.print_exc()
        return EXIT_INTERNAL
    return code


def run() -> None:
    """Console-script entry point."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        _to_devnull(sys.stdout.fileno(), sys.stderr.fileno())
    sys.exit(code)


if __name__ == "__main__":
    run()
