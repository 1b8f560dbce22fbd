"""The testinfra suite (tests/infra) passes on a right host and fails on a broken one.

Boots its own two lab hosts (fresh Debian 12 hosts of the minimal image), sets them up by
hand (no Ansible) with the helpers of tests/system/hostsetup.py: python3-venv with apt,
host 1 in reuseport mode, host 2 in socket mode, blue instances 1 and 2 of release 1.0,
the record in /etc/api/deploy.json. Then runs
``pytest tests/infra --hosts=ansible://... --ansible-inventory=<lab inventory>`` as an
operator would, breaks host 1 in one way per case, and restores it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from sockact_lab.image import Image
from sockact_lab.lab import Host, Lab
from tests.lab_fixtures import cannot_run, lab_skip_reason
from tests.system import hostsetup as hs

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VERSION = "1.0"
BLUE = (1, 2)
DRAIN = 3.0
SUITE_TIMEOUT = 300


@dataclass
class Setup:
    lab: Lab
    reuseport: Host
    socket: Host
    ansible_cfg: Path


def _record(host: Host, listen: str, digest: str = "") -> str:
    return json.dumps(
        {
            "color": "blue",
            "release": {
                "label": VERSION,
                "digest": digest or hs.release_digest(host, VERSION),
                "dir": f"{hs.RELEASE_ROOT}/releases/{VERSION}",
            },
            "instances": list(BLUE),
            "listen": listen,
            "port": hs.PORT,
            "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        indent=2,
    )


def deploy_by_hand(host: Host, wheelhouse: Path, listen: str) -> None:
    """Release, user, units (+ sysctl or socket and holder), blue 1 and 2 up, the record."""
    hs.ensure_venv_support(host)
    release = hs.install_release(host, VERSION, hs.copy_wheelhouse(host, wheelhouse))
    hs.ensure_user(host)
    host.run("install", "-d", "-m", "0755", hs.CONFIG_DIR)
    for i in (*BLUE, 101):  # 101: a green instance, started only to break the host
        hs.write_instance(host, i, VERSION, warmup=0.2, drain_timeout=DRAIN)
    hs.install_units(host, release, listen, drain_timeout=DRAIN)
    if listen == "reuseport":
        assert hs.apply_sysctl(host) == "1"
    hs.daemon_reload(host)
    if listen == "socket":
        host.run("systemctl", "start", f"{hs.NAME}.socket")
        host.run("systemctl", "start", f"{hs.NAME}.service")
    host.run("systemctl", "start", *(f"{hs.NAME}@{i}" for i in BLUE), timeout=120)
    hs.write_file(host, f"{hs.CONFIG_DIR}/deploy.json", _record(host, listen) + "\n")


@pytest.fixture(scope="module")
def setup(lab_image: Image) -> Iterator[Setup]:
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    work = Path(tempfile.mkdtemp(prefix="sockact-infra-selftest-", dir="/var/tmp"))
    lab = Lab(work / "lab")
    try:
        wheelhouse = hs.build_wheelhouse(work / "wheelhouse")
        first, second = lab.up(2, progress=lambda m: print(f"[lab] {m}", file=sys.stderr))
        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(deploy_by_hand, first, wheelhouse, "reuseport"),
                pool.submit(deploy_by_hand, second, wheelhouse, "socket"),
            ]
            for fut in done:
                fut.result()
        # one ssh connection per host for the whole suite run (see tests/infra/README.md)
        (work / "cp").mkdir()
        cfg = work / "ansible.cfg"
        cfg.write_text(
            "[ssh_connection]\ncontrol_path = %(directory)s/%%h-%%p-%%r\n"
            f"[persistent_connection]\ncontrol_path_dir = {work / 'cp'}\n"
        )
        yield Setup(lab, first, second, cfg)
    finally:
        lab.down(purge=True)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Run:
    rc: int
    out: str
    seconds: float

    @property
    def failed(self) -> set[str]:
        """Names of the failed or erroring checks (without the host parameter)."""
        return set(re.findall(r"^(?:FAILED|ERROR) \S+::(\w+)", self.out, re.M))

    @property
    def passed(self) -> int:
        m = re.search(r"(\d+) passed", self.out)
        return int(m.group(1)) if m else 0


def run_suite(s: Setup, pattern: str = "api") -> Run:
    """The operator's command, against the lab inventory."""
    cmd = [
        str(REPO / ".venv" / "bin" / "pytest"),
        "tests/infra",
        f"--hosts=ansible://{pattern}",
        f"--ansible-inventory={s.lab.inventory_path}",
        "-q",
        "-rfE",
        "-p",
        "no:cacheprovider",
    ]
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        env={**os.environ, "ANSIBLE_CONFIG": str(s.ansible_cfg)},
        check=False,
    )
    run = Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
    print(f"suite on {pattern}: exit {run.rc}, {run.seconds:.1f}s, failed {sorted(run.failed)}")
    return run


def test_suite_passes_on_right_hosts(setup: Setup) -> None:
    run = run_suite(setup)
    assert run.rc == 0 and run.passed > 0, run.out
    # both hosts, every check (tcp_migrate_req is skipped on the socket host)
    assert run.passed >= 2 * 9, run.out


def _expect_failure(setup: Setup, check: str, mention: str) -> Run:
    run = run_suite(setup, setup.reuseport.name)
    assert run.rc == 1, f"expected the suite to fail (exit 1), got {run.rc}:\n{run.out}"
    assert check in run.failed, f"{check} did not fail; failed: {sorted(run.failed)}\n{run.out}"
    assert mention in run.out, f"{mention!r} not in the output:\n{run.out}"
    # failures explain themselves: the diagnosis of the unit is in the message
    assert "systemctl status" in run.out and "ss -ltnp" in run.out, run.out
    return run


def test_stopped_instance_fails(setup: Setup) -> None:
    host = setup.reuseport
    host.run("systemctl", "stop", f"{hs.NAME}@2")
    try:
        run = _expect_failure(setup, "test_exactly_the_recorded_color_is_active", "api@2.service")
        assert "test_instances_active_notify_ready_and_check_ok" in run.failed
    finally:
        host.run("systemctl", "start", f"{hs.NAME}@2", timeout=120)


def test_sysctl_off_fails(setup: Setup) -> None:
    host = setup.reuseport
    host.run("sysctl", "-w", "net.ipv4.tcp_migrate_req=0")
    try:
        run = _expect_failure(
            setup, "test_tcp_migrate_req_where_reuseport", "net.ipv4.tcp_migrate_req = '0'"
        )
        assert run.failed == {"test_tcp_migrate_req_where_reuseport"}, run.out
    finally:
        host.run("sysctl", "-w", "net.ipv4.tcp_migrate_req=1")


def test_both_colors_running_fails(setup: Setup) -> None:
    host = setup.reuseport
    host.run("systemctl", "start", f"{hs.NAME}@101", timeout=120)
    try:
        run = _expect_failure(setup, "test_exactly_the_recorded_color_is_active", "api@101.service")
        # a third listener on the port, owned by a process the record does not name
        assert "test_main_port_held_by_the_recorded_instances" in run.failed, run.out
    finally:
        host.run("systemctl", "stop", f"{hs.NAME}@101", timeout=60)


def test_wrong_release_fails(setup: Setup) -> None:
    host = setup.reuseport
    path = f"{hs.CONFIG_DIR}/deploy.json"
    other = "0" * 64  # a release the host does not run
    hs.write_file(host, path, _record(host, "reuseport", other) + "\n")
    try:
        run = _expect_failure(
            setup, "test_instances_run_the_recorded_release", f"recorded {other!r}"
        )
        assert run.failed == {"test_instances_run_the_recorded_release"}, run.out
    finally:
        hs.write_file(host, path, _record(host, "reuseport") + "\n")


def test_weakened_hardening_fails(setup: Setup) -> None:
    host = setup.reuseport
    dropin = f"{hs.SYSTEMD_DIR}/{hs.NAME}@2.service.d/weaken.conf"
    hs.write_file(host, dropin, "[Service]\nNoNewPrivileges=no\n")
    hs.daemon_reload(host)
    host.run("systemctl", "restart", f"{hs.NAME}@2", timeout=120)
    try:
        run = _expect_failure(setup, "test_hardening_of_running_units_matches_unit_file", "weaken")
        assert "NoNewPrivileges: running 'no', unit file 'yes'" in run.out, run.out
    finally:
        host.run("rm", "-rf", str(Path(dropin).parent))
        hs.daemon_reload(host)
        host.run("systemctl", "restart", f"{hs.NAME}@2", timeout=120)


def test_suite_passes_again_after_restoring(setup: Setup) -> None:
    run = run_suite(setup)
    assert run.rc == 0 and run.passed > 0, run.out
