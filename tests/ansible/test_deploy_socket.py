"""The role in socket mode (``sockact_listen=socket``) against real hosts over SSH.

Every instance inherits the one listening socket of ``api.socket``; a blue/green deploy
swaps the instances behind it, and the socket itself must stay the same socket
throughout (a socket restart would refuse connections). A lab of 2 hosts of its own; the
tests build on each other, in file order: provision, v1, v2 under load, testinfra.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sockact_lab.lab import Host, Lab
from tests.ansible.playbooks import (
    BLUE,
    GREEN,
    PORT,
    active,
    assert_serves_only,
    deploy_under_load,
    diagnose,
    playbook,
    record,
    run_infra_suite,
)

pytestmark = [pytest.mark.system, pytest.mark.ansible, pytest.mark.root, pytest.mark.slow]


def listening_socket(h: Host) -> tuple[str, str]:
    """(the socket unit's activation time, the inode of the one listener on PORT)."""
    since = h.run(
        "systemctl", "show", "--property=ActiveEnterTimestampMonotonic", "--value", "api.socket"
    ).stdout.strip()
    ss = h.run("ss", "-Hltne", f"sport = :{PORT}").stdout
    inodes = re.findall(r"\bino:(\d+)", ss)
    assert len(inodes) == 1, f"{h.name}: expected one listener on :{PORT}:\n{ss}"
    return since, inodes[0]


@pytest.fixture(scope="module")
def deploy_vars(wheelhouse: Path) -> dict[str, Any]:
    return {
        "sockact_wheelhouse": str(wheelhouse),
        "sockact_drain_timeout": 5.0,
        "sockact_listen": "socket",
    }


@pytest.fixture(scope="module")
def provisioned(alab: Lab, hosts: list[Host], deploy_vars: dict[str, Any]) -> Path:
    run = playbook("provision.yml", alab.inventory_path, deploy_vars)
    assert run.rc == 0, run.tail()
    for h in hosts:
        units = ("api.socket", "api.service")
        states = h.run("systemctl", "is-active", *units, check=False).stdout.split()
        assert states == ["active", "active"], diagnose(hosts)
        # no sysctl drop-in in socket mode: one shared socket has no queue to migrate
        assert (
            h.run("test", "-e", "/etc/sysctl.d/60-api-reuseport.conf", check=False).returncode != 0
        )
    return alab.inventory_path


def test_socket_mode_v1_then_v2_under_load_keeps_the_one_socket(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any]
) -> None:
    run = playbook("deploy.yml", provisioned, {**deploy_vars, "sockact_version": "v1"})
    assert run.rc == 0, run.tail()
    before = {}
    for h in hosts:
        assert (record(h)["color"], record(h)["listen"]) == ("blue", "socket"), diagnose(hosts)
        assert active(h, BLUE) == ["active", "active"], diagnose(hosts)
        before[h.name] = listening_socket(h)

    run, report = deploy_under_load(
        "socket mode: v1 -> v2", provisioned, {**deploy_vars, "sockact_version": "v2"}, hosts
    )
    assert run.rc == 0, run.tail()
    assert report.total > 0
    assert report.failed == 0, report.format_table()
    assert {ver for (_inst, ver) in report.samples} == {"v1", "v2"}, report.samples

    for h in hosts:
        rec = record(h)
        assert (rec["color"], rec["version"], rec["listen"]) == ("green", "v2", "socket")
        assert active(h, GREEN) == ["active", "active"], diagnose(hosts)
        assert active(h, BLUE) == ["inactive", "inactive"], diagnose(hosts)
        # the same listening socket before and after: it never closed
        assert listening_socket(h) == before[h.name], diagnose(hosts)
        assert_serves_only(h, GREEN, "v2")


def test_testinfra_suite_passes_in_socket_mode(provisioned: Path) -> None:
    proc = run_infra_suite(provisioned)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
