"""What the Ansible tests share: running a playbook, reading a host's state, the load probe."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sockact.controller.probe import Probe, Report, Target
from sockact_lab.lab import Host

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
PORT = 8080
BLUE = [1, 2]
GREEN = [101, 102]
#: 6 keep-alive + 6 new-connection clients, as in the measurements of docs/design.md
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


def say(msg: str) -> None:
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
    say("$ " + shlex.join(cmd))
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
    say(f"{name} {extra.get('sockact_version', '')}: rc={run.rc} in {run.seconds:.1f} s")
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
    say(line)
    return line


def served_by(h: Host, seconds: float = 2.0) -> dict[tuple[Any, Any], int]:
    """(instance, version) -> responses, from a short probe of this host alone."""
    p = Probe([Target(h.address, PORT, "/")], keepalive_clients=2, new_conn_clients=2)
    p.start()
    time.sleep(seconds)
    report = p.stop()
    assert report.failed == 0, report.format_table()
    return dict(report.samples)


def run_infra_suite(inventory: Path) -> subprocess.CompletedProcess[str]:
    """tests/infra against ``inventory`` over Ansible, as an operator runs it."""
    cmd = [
        str(BIN / "pytest"),
        "-q",
        "-p",
        "no:cacheprovider",
        str(REPO / "tests" / "infra"),
        "--hosts=ansible://api",
        f"--ansible-inventory={inventory}",
    ]
    say("$ " + shlex.join(cmd))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=900, check=False
    )
    print(proc.stdout[-3000:])
    return proc


def deploy_under_load(
    label: str, inventory: Path, extra: dict[str, Any], hosts: list[Host]
) -> tuple[Run, Report]:
    """Run deploy.yml with ``extra`` while the probe loads every host; print the figures."""
    probe = start_probe(hosts)
    try:
        run = playbook("deploy.yml", inventory, extra)
    finally:
        report = probe.stop()
    figures(f"{label} on {len(hosts)} hosts ({run.seconds:.0f} s playbook)", report)
    print(report.format_table())
    return run, report


def assert_serves_only(h: Host, instances: list[int], version: str) -> None:
    """A short probe of ``h`` alone is answered by ``instances`` running ``version`` only."""
    seen = served_by(h)
    print(f"{h.name}: {seen}")
    assert {int(inst) for inst, _ in seen} <= set(instances), seen
    assert {ver for _, ver in seen} == {version}, seen
