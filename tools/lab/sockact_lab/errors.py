"""Errors of the test-host tool, each with the exit code ``sockact-lab`` ends with."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
#: a host did not boot, did not answer, or could not be removed; the image did not build
EXIT_LAB = 5


class LabError(Exception):
    """A lab operation failed; ``message`` is one line, ``details`` further lines."""

    exit_code = EXIT_LAB

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class LabUsageError(LabError):
    """Bad arguments (exit 2)."""

    exit_code = EXIT_USAGE
