"""The lab boots real systemd hosts reachable over ssh, each in its own netns: clone hosts
(the session's ``lab``) and hosts of the minimal image (their own labs, torn down here)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from sockact_lab import aptproxy
from sockact_lab.image import Image
from sockact_lab.lab import Host, Lab
from tests.lab_fixtures import LAB_HOSTS, cannot_run, lab_skip_reason

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.slow]

SYSCTL = "net.ipv4.tcp_migrate_req"


def _root_sysctl() -> str:
    return Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()


def _host_sysctl(host: Host) -> str:
    return host.run("sysctl", "-n", SYSCTL).stdout.strip()


def test_systemd_is_running_in_each_host(lab: Lab) -> None:
    hosts = lab.hosts()
    assert len(hosts) == LAB_HOSTS
    for host in hosts:
        state = host.run("systemctl", "is-system-running", check=False).stdout.strip()
        failed = host.run("systemctl", "--failed", "--no-legend", check=False).stdout
        assert state == "running", f"{host.name}: {state}; failed units: {failed}"


def test_ssh_with_the_key_reaches_each_host(lab: Lab) -> None:
    names = []
    for host in lab.hosts():
        proc = host.ssh("hostname")
        names.append(proc.stdout.strip())
        assert names[-1] == host.name
        # the machine's python and this checkout are visible inside
        assert host.ssh("/usr/bin/python3", "-c", "print(1)").stdout.strip() == "1"
    assert len(set(names)) == LAB_HOSTS


def test_tcp_migrate_req_is_per_host(lab: Lab) -> None:
    first, second = lab.hosts()[:2]
    root_before = _root_sysctl()
    second_before = _host_sysctl(second)
    first_before = _host_sysctl(first)
    try:
        first.run("sysctl", "-w", f"{SYSCTL}=1")
        assert _host_sysctl(first) == "1"
        assert _host_sysctl(second) == second_before
        assert _root_sysctl() == root_before
    finally:
        first.run("sysctl", "-w", f"{SYSCTL}={first_before}")


def test_tcp_server_in_a_host_is_reachable_from_the_root_namespace(lab: Lab) -> None:
    host = lab.hosts()[0]
    unit = "sockact-lab-test-http"
    # python -m http.server would also do (getfqdn resolves from /etc/hosts, no DNS)
    host.run(
        "systemd-run",
        f"--unit={unit}",
        "/usr/bin/python3",
        "-m",
        "http.server",
        "--bind",
        host.address,
        "--directory",
        "/etc",
        "8080",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with opener.open(f"http://{host.address}:8080/hostname", timeout=2) as resp:
                    body = resp.read().decode().strip()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert body == host.name
    finally:
        host.run("systemctl", "stop", unit, check=False)


@pytest.mark.ansible
def test_ansible_reaches_every_host_of_the_inventory(lab: Lab) -> None:
    # ansible-core is a test dependency: it sits next to the interpreter running pytest
    ansible = Path(sys.executable).parent / "ansible"
    assert ansible.exists(), f"{ansible} missing: run .ci/setup"
    proc = subprocess.run(
        [str(ansible), "-i", str(lab.inventory_path), "api", "-m", "ping", "-o"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == LAB_HOSTS


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo") as fh:
        targets = [line.split()[4] for line in fh]
    return [t for t in targets if t == prefix or t.startswith(prefix + "/")]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_down_leaves_no_mount_netns_veth_or_process(lab_image: Image) -> None:
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    directory = Path(tempfile.mkdtemp(prefix="sockact-lab-pytest-down-", dir="/var/tmp"))
    lab = Lab(directory)
    try:
        (host,) = lab.up(1)
        assert _alive(host.nspawn_pid) and _alive(host.init_pid)
        assert _mounts_under(directory)
        proxy = lab.info()["apt_proxy_pid"]
        assert proxy and aptproxy.is_proxy(proxy, str(directory))
        # a fresh Debian 12 of the image: python3 without venv, nothing of this machine
        assert host.run("cat", "/etc/debian_version").stdout.startswith("12.")
        venv = host.run("/usr/bin/python3", "-m", "venv", "/tmp/v", check=False)
        assert venv.returncode != 0 and "ensurepip is not" in venv.stdout + venv.stderr
        for path in (REPO, Path(sys.executable), "/usr/bin/gcc"):
            assert host.run("test", "-e", str(path), check=False).returncode != 0, path
        # the image is the read-only lower layer: the host's files land in its upper one
        assert (directory / host.name / "upper/etc/hostname").read_text().strip() == host.name
        assert (lab_image.rootfs / "etc/hostname").read_text().strip() == "localhost"
    finally:
        lab.down(purge=True)
    assert not _mounts_under(directory)
    assert host.netns not in os.listdir("/run/netns")
    links = os.listdir("/sys/class/net")
    assert f"sa{host.index}h" not in links and f"sa{host.index}c" not in links
    assert not _alive(host.nspawn_pid)
    assert not _alive(host.init_pid)
    assert not _alive(proxy)
    assert not directory.exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(host.root) not in ps.stdout
    assert str(directory) not in ps.stdout


def test_down_after_a_killed_up_stops_what_it_left(lab_image: Image) -> None:
    """``sockact-lab up`` SIGKILLed once its apt proxy runs: ``down`` finds the proxy
    (by its owner on the command line) and the rest, and removes them."""
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    directory = Path(tempfile.mkdtemp(prefix="sockact-lab-pytest-killed-", dir="/var/tmp"))
    lab_cli = Path(sys.executable).parent / "sockact-lab"
    cmd = [str(lab_cli), "up", "--hosts", "2", "--dir", str(directory)]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        seen = []
        for line in up.stdout:
            seen.append(line)
            if line.startswith("apt proxy (pid"):
                break
        else:
            pytest.fail(f"sockact-lab up never started its proxy: {''.join(seen)}")
        up.kill()
        up.wait(timeout=30)
        left = aptproxy.proxy_pids(str(directory))
        assert left, "the killed run's proxy should still run"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        Lab(directory).down(purge=True)
    assert not aptproxy.proxy_pids(str(directory))
    assert not any(_alive(pid) for pid in left)
    assert not _mounts_under(directory)
    assert not directory.exists()


def _wait_exec(pid: int) -> None:
    """Until ``pid``'s command line shows: Popen returns when the exec began, and for a
    moment after that /proc/<pid>/cmdline is still empty."""
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)


def _a_hosts_root(tmp_path: Path) -> tuple[Path, Path]:
    """A lab directory with one host's root in it, as a killed ``up`` leaves them (no state
    file): the lab directory and the root. Skips where a lab cannot run."""
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    directory = tmp_path / "lab"
    root = directory / "sockact-9" / "root"
    root.mkdir(parents=True)
    return directory, root


def test_down_waits_for_a_mount_a_killed_up_left(tmp_path: Path) -> None:
    """A SIGKILLed ``up`` leaves its running ``mount`` of a host's overlay behind, and the
    mount can land after ``down`` looked (CI saw "sockact-3 still has mounts"). ``down``
    waits for the commands ``up`` runs on the lab's paths, then unmounts what they did.
    The stand-in is a shell named ``mount`` (as ``ps`` shows it) that mounts 2 s later."""
    directory, target = _a_hosts_root(tmp_path)
    script = 'sleep 2; mount -t tmpfs sockact-lab-test "$0"'
    helper = subprocess.Popen(["mount", "-c", script, str(target)], executable="/bin/sh")
    try:
        _wait_exec(helper.pid)
        Lab(directory).down()
        helper_left = helper.poll() is None
        helper.wait(timeout=30)
        left = _mounts_under(directory)
        assert not helper_left, "down returned while the killed run's mount still ran"
        assert not left, f"down left mounts: {left}"
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        for mnt in _mounts_under(directory):
            subprocess.run(["umount", "-l", mnt], check=False)


def test_down_stops_the_shell_that_would_become_nspawn(tmp_path: Path) -> None:
    """``up`` starts each nspawn as ``sh -c '<join cgroups>; exec "$@"' sh systemd-nspawn
    -D <root>``: a run killed before the ``exec`` leaves that shell, which would boot the
    host after ``down``. ``down`` stops it like a leftover nspawn."""
    directory, root = _a_hosts_root(tmp_path)
    # blocks on its stdin, so it never execs: the moment before the exec, held open
    cmd = ["sh", "-c", 'read _; exec "$@"', "sh", "systemd-nspawn", "-D", str(root), "-b"]
    wrapper = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    try:
        _wait_exec(wrapper.pid)
        Lab(directory).down()
        assert wrapper.poll() is not None, "down left the shell that would start nspawn"
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
        wrapper.wait()
