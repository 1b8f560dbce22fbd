"""The role in socket mode (``sockact_listen=socket``) against real hosts over SSH, with the
main listener on each host's own address (``sockact_host``, not a wildcard).

Every instance inherits the one listening socket of ``api.socket``; a blue/green deploy
swaps the instances behind it, and the socket itself must stay the same socket
throughout (a socket restart would refuse connections). The deploy's request to the main
port goes to the configured address: nothing listens on 127.0.0.1:8080 here, so a deploy
that asked the loopback would roll back. A lab of 2 hosts of its own; the tests build on
each other, in file order: provision, v1, v2 under load, testinfra.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sockact_lab.lab import Host, Lab
from tests.ansible.playbooks import (
    APP_VARS,
    BLUE,
    GREEN,
    PORT,
    assert_converged,
    assert_load_ok,
    assert_serves_only,
    deploy_under_load,
    diagnose,
    host_now,
    playbook,
    record,
    run_infra_suite,
    stop_problems,
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
    assert f"{h.address}:{PORT}" in ss, f"{h.name}: not bound to {h.address}:\n{ss}"
    return since, inodes[0]


@pytest.fixture(scope="module")
def inventory(alab: Lab, hosts: list[Host]) -> Path:
    """The lab's inventory with ``sockact_host`` = each host's own address."""
    path = alab.directory / "inventory-own-address.ini"
    lines = []
    for line in alab.inventory_path.read_text(encoding="utf-8").splitlines():
        for h in hosts:
            if line.startswith(f"{h.name} "):
                line += f" sockact_host={h.address}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def deploy_vars(releases: dict[str, Path]) -> dict[str, Any]:
    return {**APP_VARS, "sockact_drain_timeout": 5.0, "sockact_listen": "socket"}


@pytest.fixture(scope="module")
def provisioned(inventory: Path, hosts: list[Host], deploy_vars: dict[str, Any]) -> Path:
    run = playbook("provision.yml", inventory, deploy_vars)
    assert run.rc == 0, run.tail()
    for h in hosts:
        units = ("api.socket", "api.service")
        states = h.run("systemctl", "is-active", *units, check=False).stdout.split()
        assert states == ["active", "active"], diagnose(hosts)
        # no sysctl drop-in in socket mode: one shared socket has no queue to migrate
        assert (
            h.run("test", "-e", "/etc/sysctl.d/60-api-reuseport.conf", check=False).returncode != 0
        )
    return inventory


def test_socket_mode_v1_then_v2_under_load_keeps_the_one_socket(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    run = playbook("deploy.yml", provisioned, {**deploy_vars, **rel["v1"]["vars"]})
    assert run.rc == 0, run.tail()
    before = {}
    for h in hosts:
        assert (record(h)["color"], record(h)["listen"]) == ("blue", "socket"), diagnose(hosts)
        assert_converged(h, rel["v1"]["digest"])
        before[h.name] = listening_socket(h)

    since = {h.name: host_now(h) for h in hosts}
    run, report = deploy_under_load(
        "socket mode: v1 -> v2", provisioned, {**deploy_vars, **rel["v2"]["vars"]}, hosts
    )
    assert run.rc == 0, run.tail()
    assert_load_ok(report, "socket mode: v1 -> v2")
    assert {ver for (_inst, ver) in report.samples} == {"1.0.0", "2.0.0"}, report.samples

    for h in hosts:
        rec = assert_converged(h, rel["v2"]["digest"])
        assert (rec["color"], rec["listen"], rec["instances"]) == ("green", "socket", GREEN)
        # the same listening socket before and after: it never closed
        assert listening_socket(h) == before[h.name], diagnose(hosts)
        assert stop_problems(h, BLUE, since[h.name]) == [], diagnose(hosts)
        assert_serves_only(h, GREEN, "2.0.0")


def test_testinfra_suite_passes_in_socket_mode(provisioned: Path) -> None:
    proc = run_infra_suite(provisioned)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
