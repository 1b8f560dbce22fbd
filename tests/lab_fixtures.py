"""pytest fixtures ``lab_image`` and ``lab``.

``lab_image`` (session): the minimal Debian 12 image lab hosts boot on by default, built
once for the session if the machine has none cached yet (progress on stderr; a later
session reuses it at once). The Ansible and testinfra tests boot their hosts on it.

``lab``: two throwaway hosts with a real systemd, for the whole session, booted on an
overlay of this machine's / (``image="clone"``): the system tests install releases by
hand with the machine's python3 and curl, and what they check (units, signals, sockets)
does not depend on the OS being a fresh one.

Tests that use them should be marked ``system``. They skip (with the reason) when not
root or when systemd-nspawn and friends are missing. The hosts are always torn down: by
the fixture's finalizer, or, if pytest itself was killed, by
``sockact-lab down --dir /var/tmp/sockact-lab-pytest-*``.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from sockact_lab.image import Image, ensure_image
from sockact_lab.lab import IMAGE_CLONE, IMAGE_MINIMAL, Lab, check_requirements
from tests.needs import under_ci

LAB_HOSTS = 2
LAB_PARENT = Path("/var/tmp")


def cannot_run(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI (``CI`` set, as ``.ci/run`` does) fail instead: a CI
    run that quietly skipped every system test would be green and prove nothing."""
    if under_ci():
        pytest.fail(f"CI cannot run this test: {reason}", pytrace=False)
    pytest.skip(reason)


def lab_skip_reason(image: str = IMAGE_MINIMAL) -> str | None:
    """Why system tests cannot boot hosts of kind ``image`` here, or None when they can."""
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn not installed (apt-get install systemd-container)"
    problems = check_requirements(image)
    return "; ".join(problems) if problems else None


def _progress(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def lab_image() -> Image:
    """The minimal host image, built once (minutes) unless the machine has it cached."""
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    return ensure_image(progress=_progress)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A booted :class:`sockact_lab.lab.Lab` with ``LAB_HOSTS`` clone hosts (see
    ``lab.hosts()``, ``lab.inventory_path``); removed again at the end of the session."""
    reason = lab_skip_reason(IMAGE_CLONE)
    if reason:
        cannot_run(reason)
    directory = Path(tempfile.mkdtemp(prefix="sockact-lab-pytest-", dir=LAB_PARENT))
    the_lab = Lab(directory)

    def teardown() -> None:
        the_lab.down(progress=_progress, purge=True)

    # safety net if the session ends without running fixture finalizers
    atexit.register(teardown)
    try:
        the_lab.up(LAB_HOSTS, progress=_progress, image=IMAGE_CLONE)
        yield the_lab
    finally:
        atexit.unregister(teardown)
        teardown()
