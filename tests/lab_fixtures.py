"""pytest fixture ``lab``: two throwaway hosts with a real systemd, for the whole session.

Tests that use it should be marked ``system``. It skips (with the reason) when not root
or when systemd-nspawn and friends are missing. The hosts are always torn down: by the
fixture's finalizer, or, if pytest itself was killed, by
``sockact-lab down --dir /var/tmp/sockact-lab-pytest-*``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from sockact_lab.lab import Lab, check_requirements

LAB_HOSTS = 2
LAB_PARENT = Path("/var/tmp")


def cannot_run(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI (``CI`` set, as ``.ci/run`` does) fail instead: a CI
    run that quietly skipped every system test would be green and prove nothing."""
    if os.environ.get("CI"):
        pytest.fail(f"CI cannot run this test: {reason}", pytrace=False)
    pytest.skip(reason)


def lab_skip_reason() -> str | None:
    """Why system tests cannot boot hosts here, or None when they can."""
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn not installed (apt-get install systemd-container)"
    problems = check_requirements()
    return "; ".join(problems) if problems else None


def _progress(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A booted :class:`sockact_lab.lab.Lab` with ``LAB_HOSTS`` hosts (see ``lab.hosts()``,
    ``lab.inventory_path``); removed again at the end of the session."""
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    directory = Path(tempfile.mkdtemp(prefix="sockact-lab-pytest-", dir=LAB_PARENT))
    the_lab = Lab(directory)

    def teardown() -> None:
        the_lab.down(progress=_progress, purge=True)

    # safety net if the session ends without running fixture finalizers
    atexit.register(teardown)
    try:
        the_lab.up(LAB_HOSTS, progress=_progress)
        yield the_lab
    finally:
        atexit.unregister(teardown)
        teardown()
