"""Shared pytest setup. Fixtures live in their own modules, registered here."""

import sys
from pathlib import Path

import pytest

# make ``tests.*`` importable whether or not the tests directories are packages
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# asserts in shared helpers explain themselves like those in test modules
pytest.register_assert_rewrite("tests.ansible.playbooks")

pytest_plugins = ["tests.lab_fixtures"]
