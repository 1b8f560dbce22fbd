"""``sockact verify`` passes on right hosts and fails the right checks on broken ones.

Boots its own two lab hosts (fresh Debian 12 hosts of the minimal image), sets them up by
hand (no Ansible) with the helpers of tests/system/hostsetup.py: python3-venv with apt,
host 1 in reuseport mode, host 2 in socket mode, blue instances 1 and 2 of release 1.0,
the record in /etc/api/deploy.json. Then runs ``sockact verify -i <lab inventory>`` as an
operator would, breaks host 1 in one way per case, checks that exactly the checks that
look at what was broken fail (and every other check passes), and restores it.
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

from sockact import layout
from sockact.errors import EXIT_ADDRESS, EXIT_VERIFY_FAILED
from sockact_lab.image import Image
from sockact_lab.lab import Host, Lab
from tests.lab_fixtures import cannot_run, lab_skip_reason
from tests.system import hostsetup as hs

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.slow]

SOCKACT = Path(sys.executable).parent / "sockact"
LAYOUT = layout.HostLayout(hs.NAME)
VERSION = "1.0"
BLUE = layout.instances_of("blue", 2)
GREEN = layout.instances_of("green", 1)
DRAIN = 3.0
SUITE_TIMEOUT = 300

#: Checks on a right host, by listen mode: 14 once per host and 17 per instance (2
#: instances), but three host checks are for socket mode only (its units verify, the socket
#: unit runs, systemd holds the port) and two for reuseport mode only (tcp_migrate_req is
#: on, and persists): they skip on the other mode's host.
RIGHT = {"reuseport": {"passed": 45, "skipped": 3}, "socket": {"passed": 46, "skipped": 2}}


#: the checks of what the service can reach that stat and find its files (pytest -k)
REACH = "belong_to_root_and_hide_from_others or release_is_not_writable_by_the_service"


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
                "dir": LAYOUT.release_dir(VERSION),
            },
            "instances": BLUE,
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
    host.run("install", "-d", "-m", "0755", LAYOUT.config_dir)
    for i in (*BLUE, *GREEN):  # green: started only to break the host
        hs.write_instance(host, i, VERSION, warmup=0.2, drain_timeout=DRAIN)
    hs.install_units(host, release, listen, drain_timeout=DRAIN)
    if listen == "reuseport":
        assert hs.apply_sysctl(host) == "1"
    hs.daemon_reload(host)
    if listen == "socket":
        host.run("systemctl", "start", LAYOUT.socket_unit)
        host.run("systemctl", "start", LAYOUT.holder_unit)
    host.run("systemctl", "start", *(LAYOUT.instance_unit(i) for i in BLUE), timeout=120)
    hs.write_file(host, LAYOUT.deploy_record, _record(host, listen) + "\n")


@pytest.fixture(scope="module")
def setup(lab_image: Image) -> Iterator[Setup]:
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    work = Path(tempfile.mkdtemp(prefix="sockact-infra-selftest-", dir="/var/tmp"))
    lab = Lab(work / "lab")
    try:
        wheelhouse = hs.build_wheelhouse(work / "wheelhouse", versions=(VERSION,))
        first, second = lab.up(2, progress=lambda m: print(f"[lab] {m}", file=sys.stderr))
        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(deploy_by_hand, first, wheelhouse, "reuseport"),
                pool.submit(deploy_by_hand, second, wheelhouse, "socket"),
            ]
            for fut in done:
                fut.result()
        # one ssh connection per host for the whole run (README.md, "Is this host right?")
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


_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected)")
_OUTCOME = re.compile(r"^(FAILED|ERROR) \S+::(\w+)\[([^\]\s]+)\](?: - (.*))?$", re.M)


@dataclass
class Run:
    rc: int
    out: str
    seconds: float

    @property
    def counts(self) -> dict[str, int]:
        """pytest's last summary line: passed, failed, skipped, error(s)."""
        last = [line for line in self.out.splitlines() if re.match(r"^=+ .* in [\d.]+s", line)]
        found = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                 for n, kind in _SUMMARY.findall(last[-1] if last else "")}  # fmt: skip
        return {k: found.get(k, 0) for k in ("passed", "failed", "skipped", "error")}

    @property
    def failed(self) -> set[str]:
        """``check[instance]`` (the instance unit's name, or ``host``) of every failed or
        erroring check."""
        return set(self.reasons)

    @property
    def reasons(self) -> dict[str, str]:
        """``check[instance]`` -> the first line of its failure."""
        out = {}
        for _kind, check, test_id, why in _OUTCOME.findall(self.out):
            # ids: <backend>://<host> for a host's check, <backend>://<host>/<unit> else
            instance = re.fullmatch(r"\w+://[^/]+/(.+)", test_id)
            out[f"{check}[{instance.group(1) if instance else 'host'}]"] = why
        return out


def run_verify(
    s: Setup, pattern: str = "api", *pytest_args: str, ansible_cfg: Path | None = None
) -> Run:
    """The operator's command, against the lab inventory (``ansible_cfg``: the run's
    ansible.cfg, by default the one that reuses one ssh connection per host)."""
    cmd = [str(SOCKACT), "verify", "-i", str(s.lab.inventory_path), "--hosts", pattern]
    if pytest_args:
        cmd += ["--", *pytest_args]
    cfg = ansible_cfg or s.ansible_cfg
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        # wide enough for pytest's summary lines to keep each failure's first line
        env={**os.environ, "ANSIBLE_CONFIG": str(cfg), "COLUMNS": "400"},
        check=False,
    )
    run = Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
    print(
        f"FIGURES sockact verify --hosts {pattern}: exit {run.rc} in {run.seconds:.1f}s, "
        f"{run.counts}, failed:"
    )
    for check, why in sorted(run.reasons.items()):
        print(f"  {check}: {why}")
    return run


def test_verify_passes_on_right_hosts(setup: Setup) -> None:
    run = run_verify(setup)
    expected = {
        "passed": RIGHT["reuseport"]["passed"] + RIGHT["socket"]["passed"],
        "failed": 0,
        "skipped": RIGHT["reuseport"]["skipped"] + RIGHT["socket"]["skipped"],
        "error": 0,
    }
    assert (run.rc, run.counts) == (0, expected), run.out


def test_reach_checks_pass_with_one_ssh_connection_per_command(
    setup: Setup, tmp_path: Path
) -> None:
    """Without connection reuse (an ansible.cfg without ``control_path``, as where the
    role's tests run ``sockact verify``), every command's stderr starts with ssh's
    "Warning: Permanently added ... to the list of known hosts." (the lab's inventory has
    no known_hosts file): the checks that read stat's stderr must not take it for stat's.
    With a reused connection only the first command of a host prints it, which hid this."""
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    run = run_verify(setup, "api", "-k", REACH, ansible_cfg=cfg)
    # per host: the files of each of its 2 instances, and the release
    expected = {"passed": 2 * (2 + 1), "failed": 0, "skipped": 0, "error": 0}
    assert (run.rc, run.counts) == (0, expected), run.out


def test_a_pattern_that_matches_no_host_is_exit_4(setup: Setup) -> None:
    run = run_verify(setup, "no-such-host")
    assert run.rc == EXIT_ADDRESS, run.out
    assert run.out.strip() == (
        f"sockact: error: --hosts 'no-such-host' matches no host or group of "
        f"{setup.lab.inventory_path}"
    ), run.out


def _expect_failures(setup: Setup, failed: set[str], mention: str) -> Run:
    """``sockact verify`` of the broken reuseport host fails exactly the ``failed`` checks
    (``check[unit]``, or ``check[host]``), says ``mention``, and passes every other check."""
    run = run_verify(setup, setup.reuseport.name)
    right = RIGHT["reuseport"]
    expected = {
        "passed": right["passed"] - len(failed),
        "failed": len(failed),
        "skipped": right["skipped"],
        "error": 0,
    }
    assert run.rc == EXIT_VERIFY_FAILED, f"expected exit {EXIT_VERIFY_FAILED}:\n{run.out}"
    assert run.failed == failed, (
        f"failed {sorted(run.failed)}, expected {sorted(failed)}\n{run.out[-20000:]}"
    )
    assert run.counts == expected, run.out
    assert mention in run.out, f"{mention!r} not in the output:\n{run.out}"
    # failures explain themselves: the diagnosis of the unit is in the message
    assert "systemctl status" in run.out and "ss -ltnp" in run.out, run.out
    return run


def test_stopped_instance_fails(setup: Setup) -> None:
    host = setup.reuseport
    unit = LAYOUT.instance_unit(2)
    host.run("systemctl", "stop", unit)
    try:
        _expect_failures(
            setup,
            {
                f"test_instance_is_running[{hs.NAME}@2]",
                f"test_instance_is_ready[{hs.NAME}@2]",
                f"test_instance_check_passes[{hs.NAME}@2]",
                f"test_instance_holds_the_main_port[{hs.NAME}@2]",
                f"test_instance_runs_from_its_link[{hs.NAME}@2]",
                f"test_instance_reports_the_recorded_release[{hs.NAME}@2]",
                # no process, so no start time to read its journal from
                f"test_journal_has_no_errors_since_start[{hs.NAME}@2]",
                # one listener on the port where the record names two instances
                "test_main_port_listener_count[host]",
            },
            f"{unit} of the recorded blue color is not active",
        )
    finally:
        host.run("systemctl", "start", unit, timeout=120)


def test_sysctl_off_fails(setup: Setup) -> None:
    host = setup.reuseport
    host.run("sysctl", "-w", "net.ipv4.tcp_migrate_req=0")
    try:
        _expect_failures(
            setup, {"test_tcp_migrate_req_is_on[host]"}, "net.ipv4.tcp_migrate_req = 0"
        )
    finally:
        host.run("sysctl", "-w", "net.ipv4.tcp_migrate_req=1")


def test_both_colors_running_fails(setup: Setup) -> None:
    host = setup.reuseport
    green = LAYOUT.instance_unit(GREEN[0])
    host.run("systemctl", "start", green, timeout=120)
    try:
        _expect_failures(
            setup,
            {
                "test_no_other_instance_runs[host]",
                # a third listener on the port, owned by a process the record does not name
                "test_main_port_listener_count[host]",
                "test_main_port_held_by_nobody_else[host]",
            },
            f"running, but not in the record (blue [1, 2]): ['{green}']",
        )
    finally:
        host.run("systemctl", "stop", green, timeout=60)


def test_wrong_release_fails(setup: Setup) -> None:
    host = setup.reuseport
    other = "0" * 64  # a release the host does not run
    hs.write_file(host, LAYOUT.deploy_record, _record(host, "reuseport", other) + "\n")
    try:
        _expect_failures(
            setup,
            {
                "test_release_dir_holds_the_recorded_digest[host]",
                f"test_instance_reports_the_recorded_release[{hs.NAME}@1]",
                f"test_instance_reports_the_recorded_release[{hs.NAME}@2]",
            },
            f"recorded {other!r}",
        )
    finally:
        hs.write_file(host, LAYOUT.deploy_record, _record(host, "reuseport") + "\n")


def test_weakened_hardening_fails(setup: Setup) -> None:
    host = setup.reuseport
    unit = LAYOUT.instance_unit(2)
    dropin = f"{LAYOUT.unit_dir}/{unit}.d/weaken.conf"
    hs.write_file(host, dropin, "[Service]\nNoNewPrivileges=no\n")
    hs.daemon_reload(host)
    host.run("systemctl", "restart", unit, timeout=120)
    try:
        run = _expect_failures(
            setup,
            {
                f"test_unit_has_no_drop_in[{hs.NAME}@2]",
                f"test_running_sandbox_is_the_unit_files[{hs.NAME}@2]",
                f"test_instance_exposure[{hs.NAME}@2]",
            },
            "weaken.conf",
        )
        assert "NoNewPrivileges: running 'no', unit file 'yes'" in run.out, run.out
    finally:
        host.run("rm", "-rf", str(Path(dropin).parent))
        hs.daemon_reload(host)
        host.run("systemctl", "restart", unit, timeout=120)


def test_loosened_files_and_an_exposed_admin_server_fail(setup: Setup) -> None:
    """An env file others can read, a release the service's group can write, and an admin
    server on every address (issue 11's hardening of what the service can reach)."""
    host = setup.reuseport
    env, release = (
        LAYOUT.instance_env(1),
        json.loads(host.run("cat", LAYOUT.deploy_record).stdout)["release"]["dir"],
    )
    config, unit = LAYOUT.instance_config(2), LAYOUT.instance_unit(2)
    original = host.run("cat", config).stdout
    host.run("chmod", "0644", env)
    host.run("chmod", "g+w", release)
    hs.write_file(host, config, original + 'admin_host = "0.0.0.0"\n', mode="0640",
                  owner=f"root:{hs.USER}")  # fmt: skip
    host.run("systemctl", "restart", unit, timeout=120)
    try:
        run = _expect_failures(
            setup,
            {
                f"test_instance_files_belong_to_root_and_hide_from_others[{hs.NAME}@1]",
                "test_release_is_not_writable_by_the_service[host]",
                f"test_admin_server_listens_on_loopback[{hs.NAME}@2]",
            },
            f"{env}: root:{hs.USER} 0644",
        )
        # the release dir is named once, with its mode, by the stat of the dirs above it
        assert f"{release}: root:root 0775" in run.out, run.out
        assert f"{release}: not root's" not in run.out, run.out
    finally:
        host.run("chmod", "0640", env)
        host.run("chmod", "g-w", release)
        hs.write_file(host, config, original, mode="0640", owner=f"root:{hs.USER}")
        host.run("systemctl", "restart", unit, timeout=120)


def test_verify_passes_again_after_restoring(setup: Setup) -> None:
    run = run_verify(setup)
    assert run.rc == 0 and run.counts["failed"] == run.counts["error"] == 0, run.out
    assert run.counts["passed"] == RIGHT["reuseport"]["passed"] + RIGHT["socket"]["passed"]
