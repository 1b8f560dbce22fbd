"""Fixtures of the system tests: the lab's hosts with sockact deployed like the Ansible role.

* ``wheelhouse`` (session): ``pip wheel`` of this checkout, built once on the controller.
* ``deployed`` (session): both lab hosts set up in parallel, one per listen mode: host 1
  reuseport (units + sysctl drop-in), host 2 socket (``api.socket`` + holder). Each has
  releases 1.0 and 2.0 (venvs from the wheelhouse), the ``api`` user and instances
  1, 2 (1.0), 3, 4 (2.0), 5 (2.0 with a warm-up that fails) and, on the reuseport host,
  6 (1.0, ``WatchdogSec=3`` drop-in).
* ``reuseport`` / ``socket_mode``: one :class:`Deployed` each.

When a test fails, the hosts it used are reported (``systemctl status``, ``journalctl``,
``ss -ltnp``) below the failure, whatever raised.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sockact_lab.lab import Host, Lab
from tests.system import hostsetup as hs

RELEASES = ("1.0", "2.0")
#: instance -> (release, warm-up fails)
INSTANCES = {1: ("1.0", False), 2: ("1.0", False), 3: ("2.0", False), 4: ("2.0", False)}
BROKEN = 5
WATCHDOG = 6
WARMUP = 1.0
DRAIN_TIMEOUT = 10.0


@dataclass
class Deployed:
    host: Host
    mode: str
    releases: dict[str, str] = field(default_factory=dict)
    setup_s: float = 0.0

    def report(self, *units: str) -> str:
        return hs.host_report(self.host, units)

    def ensure_only(self, *instances: int) -> None:
        """Start the wanted instances first, then stop every other ``api@N``."""
        wanted = {f"{hs.NAME}@{i}.service" for i in instances}
        for unit in sorted(wanted):
            self.host.run("systemctl", "start", unit, timeout=120)
        for unit in hs.active_api_units(self.host):
            if unit not in wanted:
                self.host.run("systemctl", "stop", unit, timeout=120)
        for unit in hs.api_units(self.host):
            if unit not in wanted:
                self.host.run("systemctl", "reset-failed", unit, check=False)
        active = set(hs.active_api_units(self.host))
        assert active == wanted, f"active {sorted(active)} != {sorted(wanted)}\n" + self.report()


def _log(msg: str) -> None:
    print(f"[system] {msg}", file=sys.stderr, flush=True)


def deploy(host: Host, mode: str, wheelhouse: Path) -> Deployed:
    """Everything the role does on a host, one helper per step."""
    started = time.monotonic()
    d = Deployed(host, mode)
    where = hs.copy_wheelhouse(host, wheelhouse)
    hs.ensure_user(host)
    for version in RELEASES:
        d.releases[version] = hs.install_release(host, version, where)
    for i, (version, fail) in INSTANCES.items():
        hs.write_instance(host, i, version, warmup=WARMUP, fail=fail, drain_timeout=DRAIN_TIMEOUT)
    hs.write_instance(host, BROKEN, "2.0", warmup=WARMUP, fail=True, drain_timeout=DRAIN_TIMEOUT)
    hs.install_units(host, d.releases["2.0"], mode, drain_timeout=DRAIN_TIMEOUT)
    if mode == "reuseport":
        hs.write_instance(host, WATCHDOG, "1.0", warmup=WARMUP, drain_timeout=DRAIN_TIMEOUT)
        hs.write_file(
            host,
            f"{hs.SYSTEMD_DIR}/{hs.NAME}@{WATCHDOG}.service.d/10-watchdog.conf",
            "[Service]\nWatchdogSec=3\n",
        )
        value = hs.apply_sysctl(host)
        assert value == "1", f"tcp_migrate_req is {value} after sysctl --system"
    hs.daemon_reload(host)
    d.setup_s = time.monotonic() - started
    _log(f"{host.name}: {mode} mode deployed in {d.setup_s:.1f}s")
    return d


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.monotonic()
    path = hs.build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
    _log(f"wheelhouse built in {time.monotonic() - started:.1f}s: {len(list(path.glob('*.whl')))}")
    return path


@pytest.fixture(scope="session")
def deployed(lab: Lab, wheelhouse: Path) -> Iterator[dict[str, Deployed]]:
    hosts = lab.hosts()
    assert len(hosts) >= 2, "the system tests need two lab hosts"
    modes = {"reuseport": hosts[0], "socket": hosts[1]}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {mode: pool.submit(deploy, h, mode, wheelhouse) for mode, h in modes.items()}
        result = {mode: f.result() for mode, f in futures.items()}
    yield result
    for d in result.values():  # leave the hosts quiet for whoever uses the lab next
        for unit in hs.active_api_units(d.host):
            d.host.run("systemctl", "stop", unit, check=False, timeout=120)


@pytest.fixture(scope="session")
def reuseport(deployed: dict[str, Deployed]) -> Deployed:
    return deployed["reuseport"]


@pytest.fixture(scope="session")
def socket_mode(deployed: dict[str, Deployed]) -> Deployed:
    return deployed["socket"]


# --------------------------------------------------------------------------- failure reports


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.when == "call" and rep.failed:
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if isinstance(value, Deployed):
                rep.sections.append((f"host {value.host.name} ({value.mode})", value.report()))
    return rep
