"""Real releases for the tests: wheelhouses that differ in content, built like ./deploy does.

* :func:`build_base`: the dependencies pinned with hashes by examples/demo/requirements.lock
  (``pip wheel --require-hashes``) and sockact's own wheel;
* :func:`demo_wheel`: the demo app at a given version, built from a temporary copy of
  examples/demo with its version changed (the app reports the version of its installed
  distribution, so two versions are two releases of different content);
* :func:`wheelhouse`: the base plus one demo wheel, in a directory of its own.

Compiled extensions are built with ``CFLAGS=-g0``: their debug info would hold pip's random
build path, and the same sources would make different content (another digest).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo"
LOCK = DEMO / "requirements.lock"


def _pip_wheel(dest: Path, *args: str) -> None:
    env = dict(os.environ, CFLAGS=f"{os.environ.get('CFLAGS', '')} -g0".strip())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(dest),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def build_base(dest: Path) -> Path:
    """The locked dependencies and sockact, no app."""
    dest.mkdir(parents=True, exist_ok=True)
    _pip_wheel(dest, "--require-hashes", "-r", str(LOCK))
    _pip_wheel(dest, "--no-deps", str(REPO))
    if not list(dest.glob("sockact-*.whl")):
        raise RuntimeError(f"pip wheel made no sockact wheel in {dest}")
    return dest


def app_wheel(project: Path, version: str, dest: Path) -> Path:
    """A wheel of the app in ``project`` (a directory with a pyproject.toml) whose
    distribution version is ``version``, built from a temporary copy."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    with tempfile.TemporaryDirectory(prefix="sockact-app-src-") as tmp:
        src = Path(tmp) / project.name
        shutil.copytree(
            project, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        )
        pyproject = src / "pyproject.toml"
        text, n = re.subn(
            r'(?m)^version = "[^"]*"$', f'version = "{version}"', pyproject.read_text()
        )
        if n != 1:
            raise RuntimeError(f"no version line in {project / 'pyproject.toml'}")
        pyproject.write_text(text)
        _pip_wheel(dest, "--no-deps", str(src))
    made = [w for w in set(dest.glob(f"*-{version}-*.whl")) - before]
    if len(made) != 1:
        raise RuntimeError(f"pip wheel of {project} at {version} made {made} in {dest}")
    return made[0]


def demo_wheel(version: str, dest: Path) -> Path:
    """A wheel of the demo app whose distribution version is ``version``."""
    return app_wheel(DEMO, version, dest)


def wheelhouse(base: Path, demo: Path, dest: Path) -> Path:
    """``base``'s wheels and the demo wheel ``demo``: one release."""
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in [*base.glob("*.whl"), demo]:
        shutil.copy2(wheel, dest / wheel.name)
    return dest


def releases(versions: tuple[str, ...], work: Path, app: Path = DEMO) -> dict[str, Path]:
    """One wheelhouse per version of the app in ``app`` (the demo unless given), sharing one
    base: version -> wheelhouse. The app's dependencies must be in the lock."""
    base = build_base(work / "base")
    apps = work / "app"
    return {v: wheelhouse(base, app_wheel(app, v, apps), work / f"release-{v}") for v in versions}
