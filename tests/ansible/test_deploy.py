"""The Ansible role against real hosts: provision, blue/green deploys under load, rollback,
idempotence, an unreachable host, ansible-lint.

Real ``ansible-playbook`` over SSH against a lab of its own (2 hosts, module scope: the
state these tests leave does not leak into other system tests). The tests run in file
order and build on each other: v1, then v2 under load, a broken v3, v2 again, a down host.

Load: :class:`sockact.controller.probe.Probe`, 6 keep-alive + 6 new-connection clients spread over
both hosts' main ports, never retrying; every failed request of any kind fails the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sockact_lab.lab import Host, Lab
from tests.ansible.playbooks import (
    BIN,
    BLUE,
    GREEN,
    PORT,
    REPO,
    active,
    assert_serves_only,
    deploy_under_load,
    diagnose,
    main_pids,
    playbook,
    record,
    run_infra_suite,
)

pytestmark = [pytest.mark.system, pytest.mark.ansible, pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def deploy_vars(wheelhouse: Path) -> dict[str, Any]:
    # a short drain keeps each swap quick; the demo's warm-up is 1 s
    return {"sockact_wheelhouse": str(wheelhouse), "sockact_drain_timeout": 5.0}


@pytest.fixture(scope="module")
def provisioned(alab: Lab, hosts: list[Host], deploy_vars: dict[str, Any]) -> Path:
    run = playbook("provision.yml", alab.inventory_path, deploy_vars)
    assert run.rc == 0, run.tail()
    for h in hosts:
        assert h.run("cat", "/proc/sys/net/ipv4/tcp_migrate_req").stdout.strip() == "1"
    again = playbook("provision.yml", alab.inventory_path, deploy_vars)
    assert again.rc == 0, again.tail()
    assert all(r["changed"] == 0 for r in again.recap.values()), again.tail()
    return alab.inventory_path


# --------------------------------------------------------------------------- tests


def test_v1_then_v2_under_load_without_a_failed_request(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any]
) -> None:
    run = playbook("deploy.yml", provisioned, {**deploy_vars, "sockact_version": "v1"})
    assert run.rc == 0, run.tail()
    for h in hosts:
        assert record(h)["color"] == "blue", diagnose(hosts)
        assert active(h, BLUE) == ["active", "active"], diagnose(hosts)

    run, report = deploy_under_load(
        "v1 -> v2", provisioned, {**deploy_vars, "sockact_version": "v2"}, hosts
    )
    assert run.rc == 0, run.tail()
    assert report.total > 0
    assert report.failed == 0, report.format_table()
    versions = {ver for (_inst, ver) in report.samples}
    assert versions == {"v1", "v2"}, report.samples

    for h in hosts:
        rec = record(h)
        assert (rec["color"], rec["version"], rec["instances"]) == ("green", "v2", GREEN)
        assert (rec["listen"], rec["port"]) == ("reuseport", PORT)
        assert active(h, GREEN) == ["active", "active"], diagnose(hosts)
        assert active(h, BLUE) == ["inactive", "inactive"], diagnose(hosts)
        assert_serves_only(h, GREEN, "v2")


def test_failed_warmup_rolls_back_and_v2_keeps_serving(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any]
) -> None:
    pids_before = {h.name: main_pids(h, GREEN) for h in hosts}
    broken = {**deploy_vars, "sockact_version": "v3", "sockact_app_env": {"DEMO_FAIL": "1"}}
    run, report = deploy_under_load("broken v3 deploy, rolled back", provisioned, broken, hosts)
    assert run.rc != 0, run.tail()
    first = hosts[0].name
    # green (v2) is active, so v3 went to blue: instance 1 is the first to fail
    assert f"api@{BLUE[0]} failed to start on {first}" in run.output, run.tail()
    assert "DEMO_FAIL" in run.output, run.tail()  # the journal tail says why
    assert run.recap[first]["failed"] == 1, run.tail()
    assert report.failed == 0, report.format_table()
    assert {ver for (_inst, ver) in report.samples} == {"v2"}, report.samples
    for h in hosts:
        assert record(h)["version"] == "v2", diagnose(hosts)
        assert active(h, GREEN) == ["active", "active"], diagnose(hosts)
        assert active(h, BLUE) == ["inactive", "inactive"], diagnose(hosts)
        assert main_pids(h, GREEN) == pids_before[h.name]
    # the hosts after the failed one were never switched (the release was only installed)
    for h in hosts[1:]:
        assert run.recap[h.name]["failed"] == 0, run.tail()


def test_second_deploy_of_the_same_release_changes_nothing(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any]
) -> None:
    pids_before = {h.name: main_pids(h, GREEN) for h in hosts}
    run = playbook("deploy.yml", provisioned, {**deploy_vars, "sockact_version": "v2"})
    assert run.rc == 0, run.tail()
    print(f"PLAY RECAP of a second v2 deploy: {run.recap}")
    assert set(run.recap) == {h.name for h in hosts}, run.tail()
    assert all(r["changed"] == 0 for r in run.recap.values()), run.tail(200)
    for h in hosts:
        assert main_pids(h, GREEN) == pids_before[h.name]


def test_testinfra_suite_passes_after_a_good_deploy(provisioned: Path) -> None:
    proc = run_infra_suite(provisioned)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_down_host_fails_the_run_before_any_host_changes(
    alab: Lab, provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory.ini"
    # nothing listens there: ssh is refused at once (loopback, no traffic leaves)
    down = (
        f"down-host ansible_host=127.0.0.1 ansible_port={_closed_loopback_port()} "
        "ansible_user=root ansible_ssh_common_args='-o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=3'\n"
    )
    inventory.write_text(provisioned.read_text(encoding="utf-8") + down, encoding="utf-8")
    before = {h.name: (record(h), main_pids(h, GREEN)) for h in hosts}
    run = playbook("deploy.yml", inventory, {**deploy_vars, "sockact_version": "v4"})
    assert run.rc != 0, run.tail()
    named = "fatal: [down-host]" in run.output and "Connection refused" in run.output
    assert named, run.tail()
    print(f"down host: rc={run.rc} in {run.seconds:.0f} s, recap {run.recap}")
    # neither the install nor the switch started
    assert "Install the release on every host" not in run.output, run.tail()
    assert "Upgrade blue/green" not in run.output, run.tail()
    for h in hosts:
        assert (record(h), main_pids(h, GREEN)) == before[h.name]
        assert h.run("test", "-e", "/opt/api/releases/v4", check=False).returncode != 0
        assert run.recap[h.name]["changed"] == 0, run.tail()


def test_ansible_lint_production_profile() -> None:
    lint = BIN / "ansible-lint"
    if not lint.exists() and shutil.which("ansible-lint") is None:
        pytest.skip("ansible-lint not installed")
    proc = subprocess.run(
        [str(lint), "--profile", "production", "--nocolor", "ansible/"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
