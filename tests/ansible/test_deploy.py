"""The Ansible role against real hosts: provision (also in check mode), blue/green deploys
of real releases under load, check mode, a broken config rolled back, idempotence, a
relabelled release refused, rollback to the previous release under load, pruning, an
unreachable host, ansible-lint.

Real ``ansible-playbook`` over SSH against a lab of its own (2 hosts, module scope: the
state these tests leave does not leak into other system tests). The tests run in file
order and build on each other. Releases are wheelhouses of different content (the demo
app at 1.0.0, 2.0.0, 3.0.0, tests/releases.py), labelled v1, v2, v3.

Load: :class:`sockact.controller.probe.Probe`, 6 keep-alive + 6 new-connection clients
spread over both hosts' main ports, never retrying; a failed request of any kind, a
second without an answered request, a low rate or a request slower than 2 s fails the
test (playbooks.assert_load_ok). Every old instance a deploy stopped must have ended
cleanly (exit 0, unit not failed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sockact_lab.lab import Host, Lab
from tests.ansible.playbooks import (
    APP_VARS,
    BIN,
    BLUE,
    GREEN,
    HOST_LAYOUT,
    PORT,
    REPO,
    active,
    assert_converged,
    assert_load_ok,
    assert_serves_only,
    deploy_under_load,
    diagnose,
    main_pids,
    playbook,
    record,
    run_infra_suite,
    snapshot,
    units,
)
from tests.lab_fixtures import cannot_run
from tests.system.hostsetup import host_now, stop_problems

pytestmark = [pytest.mark.system, pytest.mark.ansible, pytest.mark.root, pytest.mark.slow]

#: a value of the app's environment that no output may show (not even --diff)
SECRET = "s3cret-do-not-print-7f2a"


@pytest.fixture(scope="module")
def deploy_vars() -> dict[str, Any]:
    # a short drain keeps each swap quick; the demo's warm-up is 1 s
    return {**APP_VARS, "sockact_drain_timeout": 5.0, "sockact_app_env": {"API_TOKEN": SECRET}}


def test_provision_in_check_mode_changes_nothing_on_a_fresh_host(
    alab: Lab, hosts: list[Host], deploy_vars: dict[str, Any]
) -> None:
    before = {h.name: snapshot(h) for h in hosts}
    run = playbook("provision.yml", alab.inventory_path, deploy_vars, "--check", "--diff")
    assert run.rc == 0, run.tail()
    # it says what it would do ...
    assert all(r["changed"] > 0 for r in run.recap.values()), run.tail()
    assert f"(item={HOST_LAYOUT.instance_unit_file})" in run.output, run.tail()
    # ... and does none of it
    for h in hosts:
        assert snapshot(h) == before[h.name], h.name


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


def test_preflight_refuses_a_deploy_without_an_app_or_with_sockact_keys_in_its_env(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    no_app = {k: v for k, v in deploy_vars.items() if k != "sockact_app"}
    run = playbook("deploy.yml", provisioned, {**no_app, **rel["v1"]["vars"]})
    assert run.rc != 0 and "missing required arguments: sockact_app" in run.text, run.tail()
    env = {"API_TOKEN": SECRET, "SOCKACT_PORT": "9999"}
    run = playbook(
        "deploy.yml", provisioned, {**deploy_vars, **rel["v1"]["vars"], "sockact_app_env": env}
    )
    assert run.rc != 0, run.tail()
    assert "sockact_app_env key SOCKACT_PORT: SOCKACT_ variables are settings" in run.text
    assert SECRET not in run.output
    for h in hosts:
        assert h.run("test", "-e", HOST_LAYOUT.deploy_record, check=False).returncode != 0
        assert h.run("ls", HOST_LAYOUT.releases_dir).stdout.split() == []


def test_v1_then_v2_under_load_without_a_failed_request(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    # with --diff: the settings' diff shows, the app's environment (a secret) never does
    run = playbook("deploy.yml", provisioned, {**deploy_vars, **rel["v1"]["vars"]}, "--diff")
    assert run.rc == 0, run.tail()
    assert '+app = "sockact_demo:create_app"' in run.output, run.tail(200)
    assert SECRET not in run.output
    for h in hosts:
        rec = assert_converged(h, rel["v1"]["digest"])
        assert (rec["color"], rec["release"]["dir"]) == ("blue", rel["v1"]["dir"]), rec

    since = {h.name: host_now(h) for h in hosts}
    run, report = deploy_under_load(
        "v1 -> v2", provisioned, {**deploy_vars, **rel["v2"]["vars"]}, hosts
    )
    assert run.rc == 0, run.tail()
    assert_load_ok(report, "v1 -> v2")
    assert {ver for (_inst, ver) in report.samples} == {"1.0.0", "2.0.0"}, report.samples

    for h in hosts:
        rec = assert_converged(h, rel["v2"]["digest"])
        assert (rec["color"], rec["instances"], rec["listen"], rec["port"]) == (
            "green",
            GREEN,
            "reuseport",
            PORT,
        )
        assert rec["release"] == {
            "label": "v2",
            "digest": rel["v2"]["digest"],
            "dir": rel["v2"]["dir"],
            "wheels": rel["v2"]["wheels"],
        }
        assert rec["previous"]["digest"] == rel["v1"]["digest"], rec
        assert stop_problems(h, BLUE, since[h.name]) == [], diagnose(hosts)
        assert_serves_only(h, GREEN, "2.0.0")
        # nothing version-like in the app's environment: only what sockact_app_env says
        env = h.run("cat", HOST_LAYOUT.instance_env(GREEN[0])).stdout
        assert [line for line in env.splitlines() if not line.startswith("#")] == [
            f'API_TOKEN="{SECRET}"'
        ]


def test_deploy_in_check_mode_changes_nothing_and_says_what_it_would_do(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    """v3 with another app environment, in check mode with --diff: the plan line, and the
    files the switch would change (blue's settings and links, the scrape targets, the
    record as diffs; blue's environment files by name only); nothing changes."""
    before = {h.name: snapshot(h) for h in hosts}
    env = {"API_TOKEN": SECRET, "DEMO_NOTE": f"{SECRET}-2"}
    run = playbook(
        "deploy.yml",
        provisioned,
        {**deploy_vars, **rel["v3"]["vars"], "sockact_app_env": env},
        "--check",
        "--diff",
    )
    assert run.rc == 0, run.tail()
    v2, v3 = rel["v2"]["short"], rel["v3"]["short"]
    for h in hosts:
        assert f"{h.name}: would install {rel['v3']['dir']}" in run.text, run.tail()
        plan = f"{h.name}: green (v2 {v2}, 2/2 ready) -> blue (v3 {v3}, 2 instances): switch"
        assert plan in run.text, run.tail(200)
        assert snapshot(h) == before[h.name], h.name
    for path in (
        *(HOST_LAYOUT.instance_config(i) for i in BLUE),
        *(HOST_LAYOUT.instance_link(i) for i in BLUE),
        HOST_LAYOUT.prometheus_targets,
        HOST_LAYOUT.deploy_record,
    ):
        assert f"+++ after: {path}" in run.output, (path, run.tail(300))
    assert f"# api@{BLUE[0]}, release v3 ({v3})." in run.output, run.tail(300)
    assert f"+-> {rel['v3']['dir']}" in run.output, run.tail(300)
    envs = ", ".join(HOST_LAYOUT.instance_env(i) for i in BLUE)
    for h in hosts:
        line = f"{h.name}: would write {envs} (the app environment: content not shown)"
        assert line in run.text, run.tail(300)
    assert SECRET not in run.output


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("1", "DEMO_FAIL=1: this release's warm-up fails on purpose"),
        ("500", "health gate: GET / answered 500"),
    ],
    ids=["warm-up fails", "answers 500 after a fine warm-up"],
)
def test_a_broken_config_is_rolled_back_and_v2_keeps_serving(
    provisioned: Path,
    hosts: list[Host],
    deploy_vars: dict[str, Any],
    rel: dict[str, Any],
    fault: str,
    why: str,
) -> None:
    """The same release v2 with a config that breaks it: a config change is a switch (blue
    with the new config); it fails on the first host and is rolled back there. A release
    whose warm-up is fine but whose app answers 500 never opens its listener: the health
    gate stops it first, so not one client sees a 500."""
    pids_before = {h.name: main_pids(h, GREEN) for h in hosts}
    since = host_now(hosts[0])
    broken = {
        **deploy_vars,
        **rel["v2"]["vars"],
        "sockact_app_env": {"API_TOKEN": SECRET, "DEMO_FAIL": fault},
    }
    run, report = deploy_under_load(
        f"broken config ({why}), rolled back", provisioned, broken, hosts
    )
    assert run.rc != 0, run.tail()
    first = hosts[0].name
    assert f"api@{BLUE[0]} failed to start on {first}" in run.text, run.tail()
    assert why in run.output, run.tail()  # the journal tail says why
    assert SECRET not in run.output
    # the broken instances never listened: no 'serving on' in their journal
    journal = hosts[0].run(
        "journalctl", "--no-pager", "-o", "cat", f"--since={since}",
        *(f"--unit={u}" for u in units(BLUE)), check=False,
    ).stdout  # fmt: skip
    assert why in journal and "serving on" not in journal, journal[-3000:]
    assert run.recap[first]["failed"] == 1, run.tail()
    assert_load_ok(report, "broken config")
    assert {ver for (_inst, ver) in report.samples} == {"2.0.0"}, report.samples
    for h in hosts:
        assert_converged(h, rel["v2"]["digest"])
        assert active(h, BLUE) == ["inactive", "inactive"], diagnose(hosts)
        assert main_pids(h, GREEN) == pids_before[h.name]
    # the hosts after the failed one were never switched
    for h in hosts[1:]:
        assert run.recap[h.name]["failed"] == 0, run.tail()


def test_second_deploy_of_the_same_release_changes_nothing(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    """Also at -vvv (every module's arguments and results): neither the app's environment
    nor its checksum shows (the role compares the .env files' checksums on the host)."""
    pids_before = {h.name: main_pids(h, GREEN) for h in hosts}
    run = playbook("deploy.yml", provisioned, {**deploy_vars, **rel["v2"]["vars"]}, "-vvv")
    assert run.rc == 0, run.tail()
    assert SECRET not in run.output
    for h in hosts:
        env = h.run("cat", HOST_LAYOUT.instance_env(GREEN[0])).stdout.encode()
        for digest in (hashlib.sha1(env).hexdigest(), hashlib.sha256(env).hexdigest()):
            assert digest not in run.output, f"the checksum of {h.name}'s .env shows at -vvv"
    print(f"PLAY RECAP of a second v2 deploy: {run.recap}")
    assert set(run.recap) == {h.name for h in hosts}, run.tail()
    assert all(r["changed"] == 0 for r in run.recap.values()), run.tail(200)
    for h in hosts:
        assert main_pids(h, GREEN) == pids_before[h.name]


def test_a_label_that_names_other_content_is_refused(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    before = {h.name: snapshot(h) for h in hosts}
    relabelled = {**deploy_vars, **rel["v1"]["vars"], "sockact_release": "v2"}
    run = playbook("deploy.yml", provisioned, relabelled)
    assert run.rc != 0, run.tail()
    for h in hosts:
        line = f"release label v2 already names other content on {h.name} (v2-{rel['v2']['short']})"
        assert line in run.text, run.tail()
        assert snapshot(h) == before[h.name], h.name


def test_rollback_to_the_previous_release_under_load(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    releases_before = {h.name: h.run("ls", HOST_LAYOUT.releases_dir).stdout for h in hosts}
    since = {h.name: host_now(h) for h in hosts}
    run, report = deploy_under_load(
        "rollback v2 -> v1", provisioned, deploy_vars, hosts, playbook_name="rollback.yml"
    )
    assert run.rc == 0, run.tail()
    assert_load_ok(report, "rollback")
    assert {ver for (_inst, ver) in report.samples} == {"2.0.0", "1.0.0"}, report.samples
    assert "TASK [sockact : Install" not in run.output, run.tail(200)
    for h in hosts:
        rec = assert_converged(h, rel["v1"]["digest"])
        assert (rec["color"], rec["release"]["label"]) == ("blue", "v1"), rec
        assert rec["previous"]["label"] == "v2", rec
        assert stop_problems(h, GREEN, since[h.name]) == [], diagnose(hosts)
        assert h.run("ls", HOST_LAYOUT.releases_dir).stdout == releases_before[h.name]
        assert_serves_only(h, BLUE, "1.0.0")


def test_keep_releases_prunes_old_ones_but_never_a_linked_one(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    """Blue runs v1 (rolled back to), green's links point at v2. Deploying v3 to green
    with sockact_keep_releases=1 keeps v3 (newest) and v1 (blue links to it, and it is
    the previous release), and removes v2."""
    run = playbook(
        "deploy.yml",
        provisioned,
        {**deploy_vars, **rel["v3"]["vars"], "sockact_keep_releases": 1},
    )
    assert run.rc == 0, run.tail()
    for h in hosts:
        assert_converged(h, rel["v3"]["digest"])
        left = h.run("ls", HOST_LAYOUT.releases_dir).stdout.split()
        assert left == [f"v1-{rel['v1']['short']}", f"v3-{rel['v3']['short']}"], left


def test_testinfra_suite_passes_after_a_good_deploy(provisioned: Path) -> None:
    proc = run_infra_suite(provisioned)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_down_host_fails_the_run_before_any_host_changes(
    alab: Lab,
    provisioned: Path,
    hosts: list[Host],
    deploy_vars: dict[str, Any],
    rel: dict[str, Any],
    tmp_path: Path,
) -> None:
    inventory = tmp_path / "inventory.ini"
    # nothing listens there: ssh is refused at once (loopback, no traffic leaves)
    down = (
        f"down-host ansible_host=127.0.0.1 ansible_port={_closed_loopback_port()} "
        "ansible_user=root ansible_ssh_common_args='-o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=3'\n"
    )
    inventory.write_text(provisioned.read_text(encoding="utf-8") + down, encoding="utf-8")
    before = {h.name: snapshot(h) for h in hosts}
    run = playbook(
        "deploy.yml", inventory, {**deploy_vars, **rel["v2"]["vars"], "sockact_release": "v4"}
    )
    assert run.rc != 0, run.tail()
    named = "fatal: [down-host]" in run.output and "Connection refused" in run.output
    assert named, run.tail()
    print(f"down host: rc={run.rc} in {run.seconds:.0f} s, recap {run.recap}")
    # neither the install nor the switch started
    assert "Install the release on every host" not in run.output, run.tail()
    assert "Switch blue/green" not in run.output, run.tail()
    for h in hosts:
        assert snapshot(h) == before[h.name], h.name
        assert run.recap[h.name]["changed"] == 0, run.tail()
    assert record(hosts[0])["release"]["label"] == "v3"


def test_ansible_lint_production_profile() -> None:
    lint = str(BIN / "ansible-lint") if (BIN / "ansible-lint").exists() else None
    lint = lint or shutil.which("ansible-lint")
    if lint is None:
        cannot_run("ansible-lint not installed (pip install -e '.[test]')")
    proc = subprocess.run(
        [lint, "--profile", "production", "--nocolor", "ansible/"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
