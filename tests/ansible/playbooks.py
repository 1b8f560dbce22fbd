"""What the Ansible tests share: running (or killing) a playbook, reading a host's state,
the load probe and what it must show."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sockact import layout
from sockact.controller.probe import Probe, Report, Target
from sockact_lab.lab import Host
from tests.system import hostsetup as hs

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
PORT = 8080
HOST_LAYOUT = layout.HostLayout(layout.DEFAULT_NAME)
BLUE = layout.instances_of("blue", 2)
GREEN = layout.instances_of("green", 2)
#: The app every deploy of these tests runs (the role has no default app, on purpose).
#: The canary is off: test_fleet.py tests it; elsewhere it would add its window to the
#: first switch of every deploy, and fail closed on deploys made without load.
APP_VARS: dict[str, Any] = {
    "sockact_app": "sockact_demo:create_app",
    "sockact_warmup": "sockact_demo:warmup",
    "sockact_canary_seconds": 0,
}
#: 6 keep-alive + 6 new-connection clients, as in the measurements of docs/design.md
KEEPALIVE = 6
NEW_CONN = 6
#: seconds each client waits between its requests: continuous load that leaves CPU for the
#: playbook on a 2-core machine (0 = as fast as possible; SOCKACT_PROBE_PAUSE overrides)
PAUSE = float(os.environ.get("SOCKACT_PROBE_PAUSE", "0.01"))
#: a fleet's load (test_fleet.py, bench/fleet.py): one keep-alive and one new-connection
#: client per host, each waiting REST_PAUSE between its requests, which leaves the 2
#: shared cores to the installs and switches of 8 hosts; on the canary host 2 of each,
#: CANARY_PAUSE apart: the canary needs some hundreds of requests per color in its window
REST_PAUSE = 0.05
CANARY_PAUSE = 0.02
#: a playbook run may take this long (a loaded 2-core machine; installs build venvs)
PLAYBOOK_TIMEOUT = 900
#: no request may take this long: a generous bound on a busy 2-core machine that a real
#: stall (a listener gone, a queue not served) still exceeds
STALL_BOUND_MS = 2000.0
#: answered requests per second over a whole load window, at least (some hundreds is usual;
#: an outage or a stall drags the mean down, a gap shows in the per-second check)
MIN_RATE = 20.0

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

    @property
    def text(self) -> str:
        """The output with every run of whitespace as one space: messages that the YAML
        callback wrapped over lines read as one line again."""
        return " ".join(self.output.split())

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def say(msg: str) -> None:
    print(f"[ansible-test] {msg}", file=sys.stderr, flush=True)


def _command(
    name: str, inventory: Path, extra: dict[str, Any], args: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    cmd = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(ANSIBLE_DIR / name),
        "-e",
        json.dumps(extra),
        *args,
    ]
    say("$ " + shlex.join(cmd))
    return cmd, env


def playbook(
    name: str,
    inventory: Path,
    extra: dict[str, Any],
    *args: str,
    timeout: float = PLAYBOOK_TIMEOUT,
) -> Run:
    """Run ansible/<name> with ``extra`` as extra vars (JSON) and return what happened."""
    cmd, env = _command(name, inventory, extra, args)
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
    say(f"{name} {extra.get('sockact_release', '')}: rc={run.rc} in {run.seconds:.1f} s")
    return run


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every descendant of ``pid``: Ansible's workers
    call setsid(), so the group alone would leave them running their task."""
    tree = _descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def playbook_killed(
    name: str,
    inventory: Path,
    extra: dict[str, Any],
    banner: str,
    *args: str,
    then: Callable[[], None] | None = None,
    timeout: float = PLAYBOOK_TIMEOUT,
) -> Run:
    """Run ansible/<name> and SIGKILL ansible-playbook, its workers and their ssh clients
    (:func:`kill_tree`) as soon as it prints the TASK banner containing ``banner``
    (after ``then()`` returns, when given). A real kill: nothing of the run gets to clean
    up. Fails when the banner never shows."""
    cmd, env = _command(name, inventory, extra, args)
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    killed = False
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("TASK [") and banner in line:
                if then is not None:
                    then()
                kill_tree(proc.pid)
                killed = True
                where = line.strip().rstrip("*").strip()
                say(f"{name}: SIGKILL at {where} after {time.monotonic() - started:.1f} s")
                break
            if time.monotonic() - started > timeout:
                break
    finally:
        if not killed:
            kill_tree(proc.pid)
        rest, _ = proc.communicate(timeout=60)
        lines.append(rest or "")
    run = Run(proc.returncode, "".join(lines), time.monotonic() - started)
    assert killed, f"never saw the banner {banner!r}:\n{run.tail()}"
    return run


# --------------------------------------------------------------------------- host state


def record(h: Host) -> dict[str, Any]:
    out = h.run("cat", HOST_LAYOUT.deploy_record).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def units(instances: list[int]) -> list[str]:
    return [HOST_LAYOUT.instance_unit(i) for i in instances]


def active(h: Host, instances: list[int]) -> list[str]:
    return h.run("systemctl", "is-active", *units(instances), check=False).stdout.split()


def enabled(h: Host, instances: list[int]) -> list[str]:
    return h.run("systemctl", "is-enabled", *units(instances), check=False).stdout.split()


def running_instances(h: Host) -> list[int]:
    """Every api@N that is active, activating or deactivating."""
    out = h.run(
        "systemctl",
        "list-units",
        "--plain",
        "--no-legend",
        "--full",
        "--state=active,activating,deactivating",
        f"{HOST_LAYOUT.name}@*.service",
        check=False,
    ).stdout
    found = re.findall(rf"^{HOST_LAYOUT.name}@(\d+)\.service", out, re.M)
    return sorted(int(i) for i in found)


def enabled_instances(h: Host) -> list[int]:
    out = h.run("sh", "-c", f"ls {HOST_LAYOUT.unit_dir}/*.wants/ 2>/dev/null", check=False).stdout
    found = re.findall(rf"\b{HOST_LAYOUT.name}@(\d+)\.service\b", out)
    return sorted({int(i) for i in found})


def main_pids(h: Host, instances: list[int]) -> list[str]:
    return h.run(
        "systemctl", "show", "--property=MainPID", "--value", *units(instances)
    ).stdout.split()


def admin_json(h: Host, instance: int, path: str) -> dict[str, Any]:
    code, doc = hs.admin_get(h, instance, path)
    assert code == 200, f"{h.name}: admin {path} of instance {instance}: {code} {doc}"
    return doc


def assert_converged(h: Host, digest: str) -> dict[str, Any]:
    """Exactly one color runs, every instance of it ready on release ``digest``, the record
    names it, the enabled units are exactly its instances, no intent is left."""
    rec = record(h)
    running = running_instances(h)
    assert running == rec["instances"], f"{h.name}: running {running}, record {rec}"
    assert enabled_instances(h) == rec["instances"], f"{h.name}: enabled vs record {rec}"
    assert rec["release"]["digest"] == digest, rec
    for i in rec["instances"]:
        assert admin_json(h, i, "/release")["digest"] == digest, f"{h.name} {i}"
    intent = h.run("test", "-e", HOST_LAYOUT.deploy_intent, check=False)
    assert intent.returncode != 0, f"{h.name}: {HOST_LAYOUT.deploy_intent} left behind"
    return rec


def diagnose(hosts: list[Host]) -> str:
    """What an operator would look at when a check fails."""
    parts = []
    for h in hosts:
        status = h.run("systemctl", "status", "--no-pager", "--lines=5", "api@*", check=False)
        ss = h.run("ss", "-ltnp", check=False)
        rec = h.run("cat", HOST_LAYOUT.deploy_record, check=False)
        intent = h.run("cat", HOST_LAYOUT.deploy_intent, check=False)
        parts.append(
            f"--- {h.name}\nrecord: {rec.stdout}\nintent: {intent.stdout}\n"
            f"{status.stdout}\n{ss.stdout}"
        )
    return "\n".join(parts)


def snapshot(h: Host) -> str:
    """Everything a deploy or provisioning could change on ``h``, as text: files (mode,
    owner, size, mtime, link target, content hash) under the config dir, the release root
    (each release's top level), the unit and sysctl files; users; unit states and PIDs."""
    lay = HOST_LAYOUT
    fmt = "%p %y %m %u %g %s %T@ %l\\n"
    script = f"""
        find {lay.config_dir} {lay.release_root} -maxdepth 3 -printf '{fmt}' 2>/dev/null | sort
        find {lay.config_dir} -type f -exec sha256sum {{}} + 2>/dev/null | sort
        ls -l --time-style=+%s {lay.unit_dir} {lay.unit_dir}/*.wants {lay.sysctl_dir} 2>/dev/null
        sha256sum {lay.unit_dir}/{lay.name}* {lay.sysctl_dir}/*{lay.name}* 2>/dev/null
        getent passwd {lay.name}; getent group {lay.name}
        systemctl list-units --all --plain --no-legend --full '{lay.name}*'
        systemctl show --property=Id,MainPID,ActiveEnterTimestampMonotonic,UnitFileState \\
            '{lay.name}@*' '{lay.name}.socket'
        cat /proc/sys/net/ipv4/tcp_migrate_req
    """
    return h.run("sh", "-c", script, check=False).stdout


# --------------------------------------------------------------------------- load


def probe_targets(hosts: list[Host]) -> list[Target]:
    return [Target(h.address, PORT, "/") for h in hosts]


def start_probe(hosts: list[Host], pause: float = PAUSE) -> Probe:
    return Probe(
        probe_targets(hosts),
        keepalive_clients=KEEPALIVE,
        new_conn_clients=NEW_CONN,
        pause=pause,
        max_duration=3 * PLAYBOOK_TIMEOUT,
    ).start()


def figures(label: str, report: Report) -> str:
    line = (
        f"{label}: {report.total:,} requests, {report.failed} failed "
        f"{dict((k, v) for k, v in report.failures.items() if v)}, "
        f"{report.rps:.0f}/s, p99 {report.p99_ms:.1f} ms, max latency {report.max_ms:.1f} ms, "
        f"{report.duration_s:.1f} s"
    )
    print(line)
    say(line)
    return line


def assert_load_ok(report: Report, label: str = "load") -> None:
    """No failed request; an answered request in every whole second of the window; at
    least MIN_RATE requests per second; no request slower than STALL_BOUND_MS."""
    table = f"{label}\n{report.format_table()}"
    assert report.failed == 0, table
    answered = {s.t: s.ok for s in report.series}
    empty = [t for t in range(int(report.duration_s)) if answered.get(t, 0) == 0]
    assert not empty, f"no answered request in second(s) {empty} of the window\n{table}"
    assert report.rps >= MIN_RATE, f"{report.rps:.1f} requests/s < {MIN_RATE}\n{table}"
    assert report.max_ms < STALL_BOUND_MS, f"a request took {report.max_ms:.0f} ms\n{table}"


def served_by(h: Host, seconds: float = 2.0) -> dict[tuple[Any, Any], int]:
    """(instance, version) -> responses, from a short probe of this host alone."""
    p = Probe([Target(h.address, PORT, "/")], keepalive_clients=2, new_conn_clients=2)
    p.start()
    time.sleep(seconds)
    report = p.stop()
    assert report.failed == 0, report.format_table()
    return dict(report.samples)


def assert_serves_only(h: Host, instances: list[int], version: str) -> None:
    """A short probe of ``h`` alone is answered by ``instances`` running ``version`` only."""
    seen = served_by(h)
    print(f"{h.name}: {seen}")
    assert {int(inst) for inst, _ in seen} <= set(instances), seen
    assert {ver for _, ver in seen} == {version}, seen


def deploy_under_load(
    label: str,
    inventory: Path,
    extra: dict[str, Any],
    hosts: list[Host],
    playbook_name: str = "deploy.yml",
) -> tuple[Run, Report]:
    """Run a playbook with ``extra`` while the probe loads every host; print the figures."""
    probe = start_probe(hosts)
    try:
        run = playbook(playbook_name, inventory, extra)
    finally:
        report = probe.stop()
    figures(f"{label} on {len(hosts)} hosts ({run.seconds:.0f} s playbook)", report)
    print(report.format_table())
    return run, report


def run_infra_suite(inventory: Path) -> subprocess.CompletedProcess[str]:
    """``sockact verify`` of the group ``api`` of ``inventory``, as an operator runs it."""
    cmd = [str(BIN / "sockact"), "verify", "-i", str(inventory), "--hosts", "api"]
    say("$ " + shlex.join(cmd))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=900, check=False
    )
    print(proc.stdout[-3000:])
    return proc
