"""What a test needs from the machine: skip where it is missing, but FAIL under CI.

A test that needs root, a namespace or a tool skips with the reason on a developer's
machine. Under CI (the environment variable ``CI`` set, as ``.ci/run`` does) the same
test fails instead: a CI run that quietly skipped every root test would be green and
prove nothing.

>>> need(True, "always there")  # returns quietly when the need is met
"""

from __future__ import annotations

import os
import shutil

import pytest


def under_ci() -> bool:
    """True when the environment says this is a CI run (``CI`` set and not empty/0/false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need(condition: bool, reason: str) -> None:
    """Skip the calling test with ``reason`` unless ``condition``; under CI, fail."""
    if condition:
        return
    if under_ci():
        pytest.fail(f"CI is set, and this test cannot run here: {reason}", pytrace=False)
    pytest.skip(reason)


def need_root(why: str) -> None:
    """The test must run as root (``why``: what it does with root)."""
    need(os.geteuid() == 0, f"needs root: {why}")


def need_tool(name: str, package: str) -> str:
    """The path of the program ``name`` (from the Debian ``package``); skip/fail without it."""
    path = shutil.which(name)
    need(path is not None, f"needs {name} (apt-get install {package})")
    assert path is not None
    return path
