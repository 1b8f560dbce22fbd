"""Shared pytest setup. Fixtures live in their own modules, registered here."""

import sys
from pathlib import Path

# make ``tests.*`` importable whether or not the tests directories are packages
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pytest_plugins = ["tests.lab_fixtures"]
