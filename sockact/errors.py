"""Errors that end a sockact command, each with the exit code scripts can rely on.

Library code raises these; only :mod:`sockact.cli` turns them into an exit.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_APP_FAILED = 3
#: an address problem; for ``sockact verify``, a host pattern that matches no host
EXIT_ADDRESS = 4
EXIT_PROBE_FAILED = 6  # sockact probe: a request failed, or none was made
EXIT_CANARY_FAILED = 7  # sockact canary: the new color is worse, or too few requests to tell
#: The main listener failed while serving. Not in the unit's RestartPreventExitStatus=
#: (2 3 4): a fresh start gets a fresh socket, so systemd restarts the instance.
EXIT_LISTENER_FAILED = 8
EXIT_VERIFY_FAILED = 9  # sockact verify: a check failed on a host
#: ``sockact rollout run``: the command it ran under load (a deploy) failed
EXIT_COMMAND_FAILED = 10
EXIT_FORCED = 130
#: stdout was closed by its reader (`sockact layout | head`): 128 + SIGPIPE, what a shell
#: reports for a command that SIGPIPE ended
EXIT_BROKEN_PIPE = 141


class SockactError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: further lines (one problem each) printed after the message
        self.details = details or []


class BadInput(SockactError):
    """Config, flags, unit names or inventory values are wrong (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class MissingExtra(SockactError):
    """An optional extra is not installed, e.g. matplotlib for ``sockact[plot]`` (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class AppFailed(SockactError):
    """The app factory or its warm-up failed or timed out (exit 3)."""

    exit_code = EXIT_APP_FAILED


class AddressError(SockactError):
    """A port cannot be had: taken, not shareable, or not inherited; or no host to check
    (exit 4)."""

    exit_code = EXIT_ADDRESS


class CanaryFailed(SockactError):
    """The canary could not read an instance's metrics: fails closed (exit 7)."""

    exit_code = EXIT_CANARY_FAILED


class ListenerFailed(SockactError):
    """The main listener broke while serving; what was open has been drained (exit 8)."""

    exit_code = EXIT_LISTENER_FAILED


class ForcedExit(SockactError):
    """A second stop signal arrived during the drain (exit 130)."""

    exit_code = EXIT_FORCED
