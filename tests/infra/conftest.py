"""Options and fixtures of the testinfra suite (see README.md in this directory).

Self-contained: nothing here depends on tests/conftest.py. Without ``--hosts`` (or
``--connection``) testinfra would check the machine pytest runs on; the plain root
``pytest`` does that by collecting everything under tests/, so every test here is then
skipped with the reason instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the suite's helper module, whatever the import mode
    sys.path.insert(0, str(HERE))

from sockact_infra import Record, parse_record  # noqa: E402

# testinfra's ansible:// backend runs `ansible-inventory` from PATH: find the one installed
# next to this pytest when the venv is used without being activated (.venv/bin/pytest)
_BIN = Path(sys.executable).parent
if shutil.which("ansible-inventory") is None and (_BIN / "ansible-inventory").exists():
    os.environ["PATH"] = f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

SKIP_REASON = (
    "tests/infra checks deployed hosts and needs a target: "
    "pytest tests/infra --hosts=ansible://api --ansible-inventory=FILE (tests/infra/README.md)"
)

_OPTIONS: dict[str, tuple[Any, str]] = {
    "name": ("api", "unit name prefix, as in `sockact units render --name` (default api)"),
    "user": ("api", "system user the instances run as (default api)"),
    "config_dir": ("", "config directory holding deploy.json (default /etc/<name>)"),
    "release_root": ("", "releases and instance links (default /opt/<name>)"),
    "unit_dir": ("/etc/systemd/system", "where the unit files are installed"),
    "sysctl_dir": ("/etc/sysctl.d", "where the reuseport sysctl drop-in is installed"),
    "max_exposure": (2.0, "highest `systemd-analyze security` exposure accepted (default 2.0)"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sockact", "sockact host checks (tests/infra)")
    for key, (default, help_text) in _OPTIONS.items():
        kwargs: dict[str, Any] = {"default": default, "help": help_text}
        if isinstance(default, float):
            kwargs["type"] = float
        group.addoption(f"--sockact-{key.replace('_', '-')}", dest=f"sockact_{key}", **kwargs)


def _targeted(config: pytest.Config) -> bool:
    return bool(config.getoption("hosts", None) or config.getoption("connection", None))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in item.path.parents]
    if not ours:
        return
    if not _targeted(config):
        skip = pytest.mark.skip(reason=SKIP_REASON)
        for item in ours:
            item.add_marker(skip)
        return
    # `--hosts=ansible://typo` matches nothing: testinfra then leaves one skipped item per
    # test ("got empty parameter set"); a suite that checked no host must not look green.
    for item in ours:
        for mark in item.iter_markers("skip"):
            if "empty parameter set" in str(mark.kwargs.get("reason", "")):
                raise pytest.UsageError(
                    f"tests/infra: --hosts={config.getoption('hosts')} matched no host "
                    "(check the pattern and --ansible-inventory)"
                )


@dataclass(frozen=True)
class Layout:
    """Names and paths on the hosts (docs/architecture.md, unit name configurable)."""

    name: str
    user: str
    config_dir: str
    release_root: str
    unit_dir: str
    sysctl_dir: str
    max_exposure: float

    @property
    def record_path(self) -> str:
        return f"{self.config_dir}/deploy.json"

    @property
    def sysctl_file(self) -> str:
        return f"{self.sysctl_dir}/60-{self.name}-reuseport.conf"


@pytest.fixture(scope="session")
def layout(pytestconfig: pytest.Config) -> Layout:
    def opt(key: str) -> Any:
        # getoption's fallback: options of a conftest loaded after the command line was
        # parsed (root `pytest --hosts ...`) exist only with their defaults
        return pytestconfig.getoption(f"sockact_{key}", _OPTIONS[key][0])

    name = opt("name")
    return Layout(
        name=name,
        user=opt("user"),
        config_dir=opt("config_dir") or f"/etc/{name}",
        release_root=opt("release_root") or f"/opt/{name}",
        unit_dir=opt("unit_dir"),
        sysctl_dir=opt("sysctl_dir"),
        max_exposure=float(opt("max_exposure")),
    )


@pytest.fixture(scope="module")
def record(host: Any, layout: Layout) -> Record:
    """The deploy record of this host; every check starts from it."""
    res = host.run("cat %s", layout.record_path)
    if res.rc != 0:
        pytest.fail(
            f"deploy record {layout.record_path} unreadable (exit {res.rc}): {res.stderr.strip()}"
            " -- has a deploy completed on this host?",
            pytrace=False,
        )
    rec, problems = parse_record(res.stdout)
    if rec is None:
        pytest.fail(
            f"deploy record {layout.record_path} is invalid:\n  "
            + "\n  ".join(problems)
            + f"\n--- content\n{res.stdout}",
            pytrace=False,
        )
    return rec
