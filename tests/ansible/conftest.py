"""Fixtures of the Ansible tests: a lab of 2 hosts per test module (or the module's
``LAB_HOSTS``); releases (wheelhouses of different content) built once per session."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sockact.runtime import release
from sockact_lab.image import Image
from sockact_lab.lab import Host, Lab
from tests.ansible.playbooks import BIN, HOST_LAYOUT, say
from tests.lab_fixtures import cannot_run, lab_skip_reason
from tests.releases import releases as build_releases


@pytest.fixture(scope="module")
def alab(lab_image: Image, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A lab for this module only, fresh Debian 12 hosts of the minimal image: 2 hosts, or
    the module's ``LAB_HOSTS``."""
    count = int(getattr(request.module, "LAB_HOSTS", 2))
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    if not (BIN / "ansible-playbook").exists():
        cannot_run(f"ansible-playbook not installed next to {sys.executable}")
    directory = Path(tempfile.mkdtemp(prefix="sockact-lab-ansible-", dir="/var/tmp"))
    the_lab = Lab(directory)
    try:
        the_lab.up(count, progress=say)
        yield the_lab
    finally:
        the_lab.down(progress=say, purge=True)


@pytest.fixture(scope="module")
def hosts(alab: Lab) -> list[Host]:
    return alab.hosts()


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo version -> a wheelhouse of sockact, the locked dependencies and the demo at
    that version: real releases of different content, built once for the session (the
    playbook would build one per run without them)."""
    return build_releases(("1.0.0", "2.0.0", "3.0.0"), tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="session")
def rel(releases: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """label (v1, v2, v3: the demo at 1.0.0, 2.0.0, 3.0.0) -> the variables that deploy
    it, its digest, its directory on a host and its wheels."""
    out = {}
    for label, version in (("v1", "1.0.0"), ("v2", "2.0.0"), ("v3", "3.0.0")):
        house = releases[version]
        ident = release.from_wheelhouse(house)
        out[label] = {
            "vars": {"sockact_release": label, "sockact_wheelhouse": str(house)},
            "digest": ident.digest,
            "short": ident.short,
            "version": version,
            "dir": HOST_LAYOUT.release_dir(f"{label}-{ident.short}"),
            "wheels": sorted(w.name for w in house.glob("*.whl")),
        }
    return out
