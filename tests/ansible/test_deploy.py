"""The Ansible role against real hosts: provision, blue/green deploys under load, rollback,
idempotence, an unreachable host, ansible-lint.

Real ``ansible-playbook`` over SSH against a lab of its own (2 hosts, module scope: the
state these tests leave does not leak into other system tests). The tests run in file
order and build on each other: v1, then v2 under load, a broken v3, v2 again, a down host.

Load: :class:`sockact.probe.Probe`, 6 keep-alive + 6 new-connection clients spread over
both hosts' main ports, never retrying; every failed request of any kind fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sockact.lab import Host, Lab
from sockact.probe import Probe, Report, Target
from tests.lab_fixtures import lab_skip_reason

pytestmark = [pytest.mark.system, pytest.mark.ansible, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
PORT = 8080
BLUE = [1, 2]
GREEN = [101, 102]
#: 6 keep-alive + 6 new-connection clients, as in DESIGN.md's measurements
KEEPALIVE = 6
NEW_CONN = 6
#: seconds each client waits between its requests: continuous load that leaves CPU for the
#: playbook on a 2-core machine (0 = as fast as possible; SOCKACT_PROBE_PAUSE overrides)
PAUSE = float(os.environ.get("SOCKACT_PROBE_PAUSE", "0.002"))
#: a playbook run may take this long (a loaded 2-core machine; installs build venvs)
PLAYBOOK_TIMEOUT = 900

_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)


@dataclass
class Run:
    rc: int
    output: str
    seconds: float

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        tail = self.output[self.output.rfind("PLAY RECAP") :]
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in _RECAP.finditer(tail)
        }

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def _say(msg: str) -> None:
    print(f"[ansible-test] {msg}", file=sys.stderr, flush=True)


def playbook(
    name: str, inventory: Path, extra: dict[str, Any], *, timeout: float = PLAYBOOK_TIMEOUT
) -> Run:
    """Run ansible/<name> with ``extra`` as extra vars (JSON) and return what happened."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    cmd = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(ANSIBLE_DIR / name),
        "-e",
        json.dumps(extra),
    ]
    _say("$ " + shlex.join(cmd))
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    run = Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
    _say(f"{name} {extra.get('sockact_version', '')}: rc={run.rc} in {run.seconds:.1f} s")
    return run


def record(h: Host) -> dict[str, Any]:
    out = h.run("cat", "/etc/api/deploy.json").stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def active(h: Host, instances: list[int]) -> list[str]:
    units = [f"api@{i}.service" for i in instances]
    return h.run("systemctl", "is-active", *units, check=False).stdout.split()


def main_pids(h: Host, instances: list[int]) -> list[str]:
    units = [f"api@{i}.service" for i in instances]
    return h.run("systemctl", "show", "--property=MainPID", "--value", *units).stdout.split()


def diagnose(hosts: list[Host]) -> str:
    """What an operator would look at when a check fails."""
    parts = []
    for h in hosts:
        status = h.run("systemctl", "status", "--no-pager", "--lines=5", "api@*", check=False)
        ss = h.run("ss", "-ltnp", check=False)
        rec = h.run("cat", "/etc/api/deploy.json", check=False)
        parts.append(f"--- {h.name}\n{rec.stdout}\n{status.stdout}\n{ss.stdout}")
    return "\n".join(parts)


def probe_targets(hosts: list[Host]) -> list[Target]:
    return [Target(h.address, PORT, "/") for h in hosts]


def start_probe(hosts: list[Host]) -> Probe:
    return Probe(
        probe_targets(hosts),
        keepalive_clients=KEEPALIVE,
        new_conn_clients=NEW_CONN,
        pause=PAUSE,
        max_duration=PLAYBOOK_TIMEOUT + 60,
    ).start()


def figures(label: str, report: Report) -> str:
    line = (
        f"{label}: {report.total:,} requests, {report.failed} failed "
        f"{dict((k, v) for k, v in report.failures.items() if v)}, "
        f"p99 {report.p99_ms:.1f} ms, max latency {report.max_ms:.1f} ms, "
        f"{report.duration_s:.1f} s"
    )
    print(line)
    _say(line)
    return line


def served_by(h: Host, seconds: float = 2.0) -> dict[tuple[Any, Any], int]:
    """(instance, version) -> responses, from a short probe of this host alone."""
    p = Probe([Target(h.address, PORT, "/")], keepalive_clients=2, new_conn_clients=2)
    p.start()
    time.sleep(seconds)
    report = p.stop()
    assert report.failed == 0, report.format_table()
    return dict(report.samples)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def alab() -> Iterator[Lab]:
    """A lab of 2 hosts for this module only."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    if not (BIN / "ansible-playbook").exists():
        pytest.skip(f"ansible-playbook not installed next to {sys.executable}")
    directory = Path(tempfile.mkdtemp(prefix="sockact-lab-ansible-", dir="/var/tmp"))
    the_lab = Lab(directory)
    try:
        the_lab.up(2, progress=_say)
        yield the_lab
    finally:
        the_lab.down(progress=_say, purge=True)


@pytest.fixture(scope="module")
def hosts(alab: Lab) -> list[Host]:
    return alab.hosts()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once for the module (the playbook would build one per run without it)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out), str(REPO)],
        check=True,
        timeout=600,
    )
    return out


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

    probe = start_probe(hosts)
    try:
        run = playbook("deploy.yml", provisioned, {**deploy_vars, "sockact_version": "v2"})
    finally:
        report = probe.stop()
    figures(f"v1 -> v2 deploy on {len(hosts)} hosts ({run.seconds:.0f} s playbook)", report)
    print(report.format_table())
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
        seen = served_by(h)
        print(f"{h.name} after the deploy: {seen}")
        assert {int(inst) for inst, _ in seen} <= set(GREEN), seen
        assert {ver for _, ver in seen} == {"v2"}, seen


def test_failed_warmup_rolls_back_and_v2_keeps_serving(
    provisioned: Path, hosts: list[Host], deploy_vars: dict[str, Any]
) -> None:
    pids_before = {h.name: main_pids(h, GREEN) for h in hosts}
    probe = start_probe(hosts)
    try:
        run = playbook(
            "deploy.yml",
            provisioned,
            {
                **deploy_vars,
                "sockact_version": "v3",
                "sockact_app_env": {"SOCKACT_DEMO_FAIL": "1"},
            },
        )
    finally:
        report = probe.stop()
    figures(f"broken v3 deploy, rolled back ({run.seconds:.0f} s playbook)", report)
    assert run.rc != 0, run.tail()
    first = hosts[0].name
    # green (v2) is active, so v3 went to blue: instance 1 is the first to fail
    assert f"api@{BLUE[0]} failed to start on {first}" in run.output, run.tail()
    assert "SOCKACT_DEMO_FAIL" in run.output, run.tail()  # the journal tail says why
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
    suite = REPO / "tests" / "infra"
    if not list(suite.glob("test_*.py")):
        pytest.skip("tests/infra has not landed yet")
    cmd = [
        str(BIN / "pytest"),
        "-q",
        "-p",
        "no:cacheprovider",
        str(suite),
        "--hosts=ansible://api",
        f"--ansible-inventory={provisioned}",
    ]
    _say("$ " + shlex.join(cmd))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=900, check=False
    )
    print(proc.stdout[-3000:])
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
