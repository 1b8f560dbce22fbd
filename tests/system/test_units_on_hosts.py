"""The rendered units on real systemd hosts (issue 3).

Host 1 runs reuseport mode, host 2 socket mode (see conftest.py for the deployment).
Load comes from the root namespace to the host's ``10.203.<n>.2:8080`` through
:class:`sockact.controller.probe.Probe`, which never retries. Figures are printed (``-s``
shows them) as ``FIGURES ...`` lines.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sockact import layout
from sockact.controller.probe import Probe, Report, Target
from sockact_lab.lab import Host
from tests.system import hostsetup as hs
from tests.system.conftest import BROKEN, DRAIN_TIMEOUT, WATCHDOG, Deployed

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.slow]

KEEPALIVE = 6
NEW_CONN = 6
#: steady traffic between the steps of a swap
SETTLE = 1.0

# A poller run inside a host (its netns): one line per sample, "<monotonic> <what>".
# mode "ready": GET http://127.0.0.1:<port>/ready -> "<status> <phase>" (0 when refused);
# mode "ss": the PIDs listening on <port> -> "pids 123,456".
POLLER = r"""
import http.client, json, re, subprocess, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
while True:
    now = time.monotonic()
    if mode == "ready":
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/ready")
            r = c.getresponse()
            phase = json.loads(r.read() or b"{}").get("phase", "?")
            line = f"{r.status} {phase}"
            c.close()
        except OSError:
            line = "0 down"
        time.sleep(0.02)
    else:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                             text=True).stdout
        line = "pids " + ",".join(sorted(set(re.findall(r"pid=(\d+)", out))))
    print(f"{now:.6f} {line}", flush=True)
"""


@dataclass
class Poller:
    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    thread: threading.Thread | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            stamp, _, rest = raw.strip().partition(" ")
            try:
                self.lines.append((float(stamp), rest))
            except ValueError:
                continue


@contextmanager
def poll_in_host(host: Host, mode: str, port: int) -> Iterator[Poller]:
    proc = subprocess.Popen(
        host.nsenter_args("/usr/bin/python3", "-c", POLLER, mode, str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    poller = Poller(proc)
    poller.thread = threading.Thread(target=poller._read, daemon=True)
    poller.thread.start()
    try:
        deadline = time.monotonic() + 10
        while not poller.lines and time.monotonic() < deadline:
            time.sleep(0.02)
        assert poller.lines, f"poller in {host.name} printed nothing"
        yield poller
    finally:
        proc.terminate()  # our own child, by its PID
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        poller.thread.join(timeout=5)


def get(host: Host, path: str = "/", timeout: float = 10) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection(host.address, hs.PORT, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def load(host: Host, timeout: float = 5.0) -> Probe:
    return Probe(
        targets=[Target(host.address, hs.PORT)],
        keepalive_clients=KEEPALIVE,
        new_conn_clients=NEW_CONN,
        timeout=timeout,
    )


def figures(name: str, report: Report, steps: dict[str, float]) -> str:
    by_version: dict[str, int] = {}
    for (_inst, ver), n in report.samples.items():
        by_version[str(ver)] = by_version.get(str(ver), 0) + n
    line = (
        f"FIGURES {name}: requests={report.total} ok={report.ok} failed={report.failed} "
        f"failures={ {k: v for k, v in report.failures.items() if v} } "
        f"p50={report.p50_ms:.1f}ms p99={report.p99_ms:.1f}ms max={report.max_ms:.1f}ms "
        f"rps={report.rps:.0f} duration={report.duration_s:.1f}s versions={by_version} "
        f"steps={ {k: round(v, 2) for k, v in steps.items()} }"
    )
    print(line, flush=True)
    return line


def timed(
    host: Host, *cmd: str, check: bool = True
) -> tuple[float, subprocess.CompletedProcess[str]]:
    began = time.monotonic()
    proc = host.run(*cmd, check=check, timeout=120)
    return time.monotonic() - began, proc


def swap_under_load(d: Deployed, name: str) -> tuple[Report, str]:
    """api@1, api@2 (1.0) -> api@3, api@4 (2.0) under load: start 3, stop 1, start 4, stop 2."""
    d.ensure_only(1, 2)
    before = hs.api_units(d.host)
    probe = load(d.host).start()
    steps: dict[str, float] = {}
    try:
        time.sleep(SETTLE)
        for verb, i in (("start", 3), ("stop", 1), ("start", 4), ("stop", 2)):
            steps[f"{verb} {i}"], _ = timed(d.host, "systemctl", verb, f"{hs.NAME}@{i}")
            time.sleep(SETTLE)
    finally:
        report = probe.stop()
    line = figures(name, report, steps)
    after = hs.active_api_units(d.host)
    assert report.failed == 0, f"{line}\n{report.format_table()}\n{d.report()}"
    assert report.ok > 1000, line
    assert after == ["api@3.service", "api@4.service"], f"{before} -> {after}\n{d.report()}"
    versions = {ver for (_inst, ver) in report.samples}
    assert {"1.0", "2.0"} <= versions, line
    return report, line


# --------------------------------------------------------------------------- reuseport host


def test_start_returns_only_when_the_instance_serves(reuseport: Deployed) -> None:
    host = reuseport.host
    reuseport.ensure_only(1)
    with poll_in_host(host, "ready", 9002) as poller:
        began = time.monotonic()
        timed(host, "systemctl", "start", "api@2")
        returned = time.monotonic()
        status, body = get(host)
        admin_status, admin = hs.admin_get(host, 2, "/ready")
        time.sleep(0.1)
    report = reuseport.report("api@2")
    assert status == 200 and body.get("instance") in (1, 2), f"{status} {body}\n{report}"
    assert admin_status == 200 and admin.get("phase") == "ready", f"{admin}\n{report}"

    samples = [(t, s) for t, s in poller.lines if began <= t]
    seq = [s.split()[0] for _, s in samples]
    first_200 = next((t for t, s in samples if s.startswith("200")), None)
    last_503 = max((t for t, s in samples if s.startswith("503")), default=None)
    warming = [t for t, s in samples if s == "503 warming"]
    shown = " ".join(f"{t - began:.2f}:{s}" for t, s in samples[:: max(1, len(samples) // 40)])
    assert warming, f"never saw /ready 503 warming during the start: {shown}\n{report}"
    assert first_200 is not None and last_503 is not None, shown
    assert first_200 > last_503, f"/ready said 200 before a later 503: {shown}"
    assert all(s.startswith("200") for _, s in samples if s and _ >= first_200), shown
    assert last_503 < returned, shown
    # READY=1 follows the listener; the journal has the "serving on" line of this PID
    pid = hs.main_pid(host, "api@2")
    entries = journal(host, "api@2")
    serving = [
        int(e["__MONOTONIC_TIMESTAMP"]) / 1e6
        for e in entries
        if str(e.get("MESSAGE", "")).startswith("serving on") and e.get("_PID") == str(pid)
    ]
    assert serving, f"no 'serving on' journal line from pid {pid}\n{report}"
    # phase=ready is set just before READY=1 and the log line: allow their few ms
    assert first_200 >= serving[-1] - 0.25, f"200 at {first_200}, READY log {serving[-1]}"
    assert seq.count("503") >= 5, f"warm-up of {reuseport.mode} too short to see: {shown}"
    print(
        f"FIGURES start api@2: systemctl start took {returned - began:.2f}s, "
        f"/ready 503 for {last_503 - began:.2f}s then 200 at {first_200 - began:.2f}s"
    )
    st = host.run("systemctl", "status", "--no-pager", "api@2", check=False).stdout
    assert re.search(r'Status: "serving on SO_REUSEPORT 0\.0\.0\.0:8080 \(instance 2', st), st


def journal(host: Host, unit: str) -> list[dict[str, str]]:
    out = host.run("journalctl", "--no-pager", "-u", unit, "-o", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_journal_has_phase_lines_with_instance_fields(reuseport: Deployed) -> None:
    host = reuseport.host
    reuseport.ensure_only(2)
    entries = [e for e in journal(host, "api@2") if "INSTANCE" in e]
    phases = {e.get("PHASE") for e in entries}
    assert entries, f"no journal entry with INSTANCE\n{reuseport.report('api@2')}"
    assert {e["INSTANCE"] for e in entries} == {"2"}, entries[:3]
    assert {"starting", "warming", "ready"} <= phases, phases
    warming = [e for e in entries if e.get("PHASE") == "warming"]
    assert any("warming up sockact_demo:create_app" in e["MESSAGE"] for e in warming), warming
    # the unit's system call filter lets the warm-up thread lower its priority
    refused = [e["MESSAGE"] for e in entries if "cannot lower the warm-up" in e["MESSAGE"]]
    assert not refused, refused


def test_metrics_under_the_hardened_unit(reuseport: Deployed) -> None:
    """/metrics of an instance run by the rendered unit (its sandbox, the release venv):
    the process metrics read /proc, build info finds the demo's distribution."""
    host = reuseport.host
    reuseport.ensure_only(2)
    code, text = hs.http_get(host, f"http://127.0.0.1:{layout.admin_port(2)}/metrics")
    assert code == 200, f"{code}\n{reuseport.report('api@2')}"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("sockact_phase", (("phase", "ready"),))] == 1
    build = [labels for name, labels in samples if name == "sockact_build_info"]
    assert len(build) == 1 and dict(build[0])["app_distribution"] == "sockact-demo", build
    for name in ("process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"):
        assert (name, ()) in samples, sorted(n for n, _ in samples)
    assert not any("instance" in dict(labels) for _, labels in samples)


def test_stop_lets_a_request_in_flight_finish(reuseport: Deployed) -> None:
    host = reuseport.host
    reuseport.ensure_only(1)
    result: dict[str, tuple[int, dict[str, object]]] = {}
    errors: list[str] = []

    def slow() -> None:
        try:
            result["response"] = get(host, "/slow?ms=3000", timeout=20)
        except Exception as exc:
            errors.append(repr(exc))

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)  # the request is with api@1 (the only listener) and sleeping
    took, _ = timed(host, "systemctl", "stop", "api@1")
    t.join(20)
    report = reuseport.report("api@1")
    assert not errors and "response" in result, f"{errors}\n{report}"
    status, body = result["response"]
    assert status == 200 and body["instance"] == 1 and body["slept_ms"] == 3000, body
    assert 2.0 <= took < DRAIN_TIMEOUT, f"stop took {took:.2f}s\n{report}"
    print(f"FIGURES stop with /slow?ms=3000 in flight: 200 from api@1, stop took {took:.2f}s")


def test_failed_warm_up_never_listens_and_does_not_loop(reuseport: Deployed) -> None:
    host = reuseport.host
    reuseport.ensure_only(1)
    good = hs.main_pid(host, "api@1")
    unit = f"api@{BROKEN}"
    probe = load(host).start()
    try:
        with poll_in_host(host, "ss", hs.PORT) as poller:
            took, proc = timed(host, "systemctl", "start", unit, check=False)
            failed_props = hs.unit_props(host, unit, "ActiveState", "Result", "ExecMainStatus")
            time.sleep(0.3)
    finally:
        report = probe.stop()
    line = figures(f"failing start {unit}", report, {f"start {BROKEN}": took})
    text = hs.host_report(host, [unit, "api@1"])
    assert proc.returncode != 0, f"systemctl start {unit} succeeded\n{text}"
    assert failed_props["ExecMainStatus"] == "3", f"{failed_props}\n{text}"
    assert failed_props["Result"] == "exit-code", f"{failed_props}\n{text}"
    assert report.failed == 0 and report.ok > 100, f"{line}\n{text}"
    seen = {p for _, s in poller.lines for p in s.removeprefix("pids ").split(",") if p}
    assert seen == {str(good)}, f"listeners seen on :{hs.PORT}: {seen}, api@1 is {good}\n{text}"
    # RestartSec=5: a restart loop would show within 7 s
    time.sleep(7)
    props = hs.unit_props(host, unit, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert props["ActiveState"] == "failed" and props["NRestarts"] == "0", f"{props}\n{text}"
    host.run("systemctl", "reset-failed", unit, check=False)


def test_watchdog_kills_and_restarts_a_frozen_instance(reuseport: Deployed) -> None:
    host = reuseport.host
    unit = f"api@{WATCHDOG}"
    reuseport.ensure_only(WATCHDOG)
    before = hs.unit_props(host, unit, "MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] in ("3s", "3000000"), before
    old = int(before["MainPID"])
    host.run("kill", "-STOP", str(old))
    began = time.monotonic()
    deadline = began + 30
    now: dict[str, str] = {}
    while time.monotonic() < deadline:
        now = hs.unit_props(host, unit, "MainPID", "NRestarts", "ActiveState", "SubState")
        if now["ActiveState"] == "active" and now["MainPID"] not in ("0", str(old)):
            break
        time.sleep(0.3)
    took = time.monotonic() - began
    text = reuseport.report(unit)
    assert int(now["NRestarts"]) > int(before["NRestarts"]), f"{now}\n{text}"
    assert now["MainPID"] not in ("0", str(old)) and now["ActiveState"] == "active", text
    status, ready = hs.admin_get(host, WATCHDOG, "/ready")
    assert status == 200 and ready["pid"] == int(now["MainPID"]), f"{ready}\n{text}"
    log = host.run("journalctl", "--no-pager", "-u", unit, "-n", "50").stdout
    assert "Watchdog timeout" in log, text
    print(f"FIGURES watchdog: frozen pid {old} replaced by {now['MainPID']} in {took:.1f}s")
    host.run("systemctl", "stop", unit)


def test_reuseport_swap_under_load_loses_nothing(reuseport: Deployed) -> None:
    value = reuseport.host.run("sysctl", "-n", "net.ipv4.tcp_migrate_req").stdout.strip()
    assert value == "1", reuseport.report()
    swap_under_load(reuseport, "reuseport swap 1,2 -> 3,4")


# --------------------------------------------------------------------------- socket host


def test_socket_swap_under_load_loses_nothing(socket_mode: Deployed) -> None:
    host = socket_mode.host
    socket_mode.ensure_only(1, 2)
    assert hs.unit_props(host, "api.socket", "ActiveState")["ActiveState"] == "active"
    anchor = ("ActiveState", "ActiveEnterTimestampMonotonic")
    holder = hs.unit_props(host, "api.service", *anchor)
    sock = hs.unit_props(host, "api.socket", *anchor)
    assert holder["ActiveState"] == "active", socket_mode.report()
    swap_under_load(socket_mode, "socket swap 1,2 -> 3,4")
    # the socket and its holder stayed up the whole time (never stopped, re-triggered)
    assert hs.unit_props(host, "api.service", *anchor) == holder, socket_mode.report()
    assert hs.unit_props(host, "api.socket", *anchor) == sock, socket_mode.report()
    # nobody asked for any other instance, and systemd started none by itself
    units = hs.api_units(host)
    unasked = sorted(u for u in units if u not in {f"api@{i}.service" for i in range(1, 5)})
    assert not unasked, f"{units}\n{socket_mode.report()}"
    log = host.run(
        "journalctl", "--no-pager", "-u", "api.socket", "-u", "api.service", "-n", "50"
    ).stdout
    assert "Triggering" not in log and "refusing" not in log, log


def test_socket_restart_of_the_only_instance_refuses_nothing(socket_mode: Deployed) -> None:
    host = socket_mode.host
    socket_mode.ensure_only(1)
    # connections wait in api.socket's queue for the whole stop + warm-up (1.7-3.4 s seen on
    # a busy machine): a long budget, so that waiting is not miscounted as a timeout
    probe = load(host, timeout=15.0).start()
    try:
        time.sleep(SETTLE)
        took, _ = timed(host, "systemctl", "restart", "api@1")
        time.sleep(SETTLE)
    finally:
        report = probe.stop()
    line = figures("socket restart api@1 (only instance)", report, {"restart 1": took})
    assert report.failed == 0 and report.ok > 500, f"{line}\n{socket_mode.report()}"
    assert hs.active_api_units(host) == ["api@1.service"], socket_mode.report()


# --------------------------------------------------------------------------- both


#: `systemd-analyze security api@1.service` on a host, as docs/units.md states it (systemd
#: 252 rounds up to one decimal); a different systemd may weigh an option differently
EXPOSURE = {"reuseport": 1.2, "socket": 1.2}
EXPOSURE_MARGIN = 0.1


@pytest.mark.parametrize("mode", ["reuseport", "socket"])
def test_security_exposure_and_verify(deployed: dict[str, Deployed], mode: str) -> None:
    d = deployed[mode]
    d.ensure_only(1)
    out = d.host.run("systemd-analyze", "security", "--no-pager", "api@1.service").stdout
    m = re.search(r"Overall exposure level for api@1\.service: (\d+\.\d+)", out)
    assert m, out
    exposure = float(m.group(1))
    print(f"FIGURES {mode}: systemd-analyze security api@1.service = {exposure}")
    assert abs(exposure - EXPOSURE[mode]) <= EXPOSURE_MARGIN + 1e-9, out
    names = ["api@1.service"] + (["api.socket", "api.service"] if mode == "socket" else [])
    proc = d.host.run("systemd-analyze", "verify", "--man=no", *names, check=False)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (0, "", ""), proc


def open_files(host: Host, pid: str) -> tuple[str, str]:
    """Soft and hard RLIMIT_NOFILE of ``pid`` in ``host``."""
    limits = host.run("cat", f"/proc/{pid}/limits").stdout
    found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, flags=re.MULTILINE)
    assert found, limits
    return found.group(1), found.group(2)


@pytest.mark.parametrize("mode", ["reuseport", "socket"])
def test_hardening_is_in_force(deployed: dict[str, Deployed], mode: str) -> None:
    """What the unit promises, seen from inside a running instance."""
    d = deployed[mode]
    d.ensure_only(1)
    pid = hs.main_pid(d.host, "api@1")
    # LimitNOFILE=65536, soft = hard; systemd sets the closest it can when its own hard
    # limit is lower (a lab host inherits the machine's, 20000 here)
    ceiling = open_files(d.host, "1")[1]
    expected = str(min(65536, int(ceiling)))
    assert open_files(d.host, str(pid)) == (expected, expected), (pid, ceiling)
    # PrivateUsers=yes: a user namespace of its own, mapping only root and the service user
    uid_map = d.host.run("cat", f"/proc/{pid}/uid_map").stdout.split()
    api_uid = d.host.run("id", "-u", hs.USER).stdout.strip()
    assert uid_map[:3] == ["0", "0", "1"] and uid_map[3:6] == [api_uid, api_uid, "1"], uid_map
    own = d.host.run("readlink", f"/proc/{pid}/ns/user").stdout
    assert own != d.host.run("readlink", "/proc/1/ns/user").stdout
    # ProcSubset=pid in socket mode: /proc/sys is not there for the instance
    mounts = d.host.run("cat", f"/proc/{pid}/mountinfo").stdout
    proc_opts = [line for line in mounts.splitlines() if " /proc " in line and "proc" in line]
    assert proc_opts, mounts
    assert ("subset=pid" in proc_opts[-1]) is (mode == "socket"), proc_opts
    _status, ready = hs.admin_get(d.host, 1, "/ready")
    assert ready.get("phase") == "ready", ready
    if mode == "reuseport":  # the user namespace still reads the sysctl: no warning
        log = d.host.run("journalctl", "--no-pager", "-u", "api@1", "-o", "cat").stdout
        assert "tcp_migrate_req" not in log, log
