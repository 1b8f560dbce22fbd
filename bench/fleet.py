"""Fleet benchmark: the wall time of one deploy on 2 hosts against 8 (or any sizes), with
the same batch schedule and the same load per host, and where the time goes.

For each size N: boot N lab hosts (the minimal Debian 12 image), provision them, deploy v1
everywhere at once, then time the deploy of v2 with the schedule (default
``[1, "25%", "100%"]``: one canary host, a quarter, the rest) and the canary on the first
batch, under load: one probe on the first host (2 keep-alive + 2 new-connection
clients, 20 ms between requests), one on the others (one of each per host, 50 ms between
requests), as in tests/ansible/test_fleet.py. It prints, per size, the wall time of
each play, the slowest tasks (summed over the run, as the output's TASK banners show
them), each host's switch time as the role prints it, and the load's figures; and the
ratio of the largest size's deploy to the smallest's. ``--variants`` adds switch-only
deploys (both releases installed, no canary) with Ansible's SSH connection reuse or
pipelining turned off. Not a test: it asserts nothing.

    sudo .venv/bin/python bench/fleet.py                      # 2 and 8 hosts
    sudo .venv/bin/python bench/fleet.py --hosts 2 4 8 --canary-seconds 0
    sudo .venv/bin/python bench/fleet.py --hosts 8 \
        --variants default no-controlpersist no-pipelining
    .venv/bin/python bench/fleet.py --from-json bench/results/<file>-fleet.json

Needs root, systemd-nspawn and the lab's image (sockact-lab image build), like the
Ansible tests. Raw results go to ``bench/results/<UTC date>-<commit>-fleet.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sockact.controller.probe import Probe  # noqa: E402
from sockact_lab.lab import Lab  # noqa: E402
from tests.ansible.playbooks import (  # noqa: E402
    APP_VARS,
    CANARY_PAUSE,
    REST_PAUSE,
    _command,
    probe_targets,
)
from tests.releases import releases as build_releases  # noqa: E402

RESULTS = REPO / "bench" / "results"
DEFAULT_SCHEDULE: list[int | str] = [1, "25%", "100%"]


@dataclass
class Timed:
    """One playbook run: its wall time, its plays and tasks, streamed and timestamped."""

    rc: int
    seconds: float
    #: (play name, seconds), in order; a play of several batches appears once per batch
    plays: list[tuple[str, float]] = field(default_factory=list)
    #: task name -> seconds summed over the run (from its banner to the next banner)
    tasks: dict[str, float] = field(default_factory=dict)
    #: host -> the role's "in X s" switch time
    switch: dict[str, float] = field(default_factory=dict)
    canary: list[str] = field(default_factory=list)
    #: CPU seconds of ansible-playbook, its workers and their ssh clients (the controller)
    controller_cpu: float = 0.0


#: --variants: switch-only deploys (the release already installed, no canary) with
#: Ansible's SSH settings changed, to show what connection reuse buys
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "no-controlpersist": {"ANSIBLE_SSH_ARGS": "-o ControlMaster=no"},
    "no-pipelining": {"ANSIBLE_PIPELINING": "False"},
}


def timed_playbook(
    name: str, inventory: Path, extra: dict[str, Any], env_extra: dict[str, str] | None = None
) -> Timed:
    cmd, env = _command(name, inventory, extra, ())
    env.update(env_extra or {})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    plays: list[tuple[str, float]] = []
    tasks: dict[str, float] = defaultdict(float)
    current_play: tuple[str, float] | None = None
    current_task: tuple[str, float] | None = None
    for line in proc.stdout:
        now = time.monotonic()
        lines.append(line)
        banner = re.match(r"^(PLAY|TASK) \[(.*)\]", line)
        if banner is None and not line.startswith("PLAY RECAP"):
            continue
        if current_task is not None:
            tasks[current_task[0]] += now - current_task[1]
            current_task = None
        if banner is not None and banner[1] == "TASK":
            current_task = (banner[2], now)
        else:
            if current_play is not None:
                plays.append((current_play[0], now - current_play[1]))
            current_play = (banner[2], now) if banner is not None else None
    rc = proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = " ".join("".join(lines).split())
    said = re.findall(r"(sockact-\d+): (?:nothing to do|\S+ -> \S+ \(\S+\)) in (\d+\.\d) s", text)
    switch = {h: float(s) for h, s in said}
    canary = re.findall(r"(sockact-\d+: canary of .*?window \S+ \.\. \S+)", text)
    if rc != 0:
        print("".join(lines[-60:]), file=sys.stderr)
    return Timed(rc, time.monotonic() - started, plays, dict(tasks), switch, canary, round(cpu, 1))


def one_size(count: int, args: argparse.Namespace, houses: dict[str, Path]) -> dict[str, Any]:
    base = {
        **APP_VARS,
        "sockact_drain_timeout": 5.0,
        "sockact_canary_seconds": args.canary_seconds,
        "sockact_canary_min_requests": 100,
    }
    lab = Lab(Path(tempfile.mkdtemp(prefix="sockact-lab-bench-fleet-", dir="/var/tmp")))
    out: dict[str, Any] = {"hosts": count}
    try:
        t0 = time.monotonic()
        lab.up(count, progress=lambda m: print(f"[lab] {m}", file=sys.stderr))
        out["boot_s"] = round(time.monotonic() - t0, 1)
        hosts = lab.hosts()
        inv = lab.inventory_path
        prov = timed_playbook("provision.yml", inv, base)
        out["provision"] = asdict(prov)
        v1 = {**base, "sockact_release": "v1", "sockact_wheelhouse": str(houses["1.0.0"])}
        first = timed_playbook("deploy.yml", inv, {**v1, "sockact_serial": "100%"})
        out["deploy_v1"] = asdict(first)
        if prov.rc or first.rc:
            out["error"] = "provision or v1 failed"
            return out
        v2 = {
            **base,
            "sockact_release": "v2",
            "sockact_wheelhouse": str(houses["2.0.0"]),
            "sockact_serial": args.schedule,
        }
        canary = Probe(
            probe_targets(hosts[:1]), keepalive_clients=2, new_conn_clients=2, pause=CANARY_PAUSE
        ).start()
        rest = (
            Probe(
                probe_targets(hosts[1:]),
                keepalive_clients=count - 1,
                new_conn_clients=count - 1,
                pause=REST_PAUSE,
            ).start()
            if count > 1
            else None
        )
        try:
            load1 = os.getloadavg()[0]
            run = timed_playbook("deploy.yml", inv, v2)
            load2 = os.getloadavg()[0]
        finally:
            reports = [canary.stop()] + ([rest.stop()] if rest is not None else [])
        out["deploy_v2"] = asdict(run)
        out["load_average"] = [round(load1, 1), round(load2, 1)]
        # switch-only deploys back and forth (both releases installed), one per variant
        out["variants"] = {}
        current = "v2"
        for variant in args.variants:
            label = "v1" if current == "v2" else "v2"
            extra = {
                **base,
                "sockact_release": label,
                "sockact_wheelhouse": str(houses["1.0.0" if label == "v1" else "2.0.0"]),
                "sockact_serial": args.schedule,
                "sockact_canary_seconds": 0,
            }
            t = timed_playbook("deploy.yml", inv, extra, VARIANTS[variant])
            out["variants"][variant] = {
                "to": label,
                "rc": t.rc,
                "seconds": round(t.seconds, 1),
                "controller_cpu": t.controller_cpu,
                "switch_median": statistics.median(t.switch.values()) if t.switch else None,
            }
            current = label if t.rc == 0 else current
        out["probe"] = [
            {
                "requests": r.total,
                "failed": r.failed,
                "failures": {k: v for k, v in r.failures.items() if v},
                "rps": round(r.rps),
                "p99_ms": round(r.p99_ms, 1),
                "max_ms": round(r.max_ms, 1),
            }
            for r in reports
        ]
        return out
    finally:
        lab.down(progress=lambda m: print(f"[lab] {m}", file=sys.stderr), purge=True)


def print_size(r: dict[str, Any]) -> None:
    n = r["hosts"]
    print(f"\n== {n} hosts (lab boot {r.get('boot_s', '?')} s)")
    for key in ("provision", "deploy_v1", "deploy_v2"):
        t = r.get(key)
        if not t:
            continue
        cpu = t.get("controller_cpu", 0.0)
        print(f"  {key:<10} {t['seconds']:7.1f} s  rc={t['rc']}  controller CPU {cpu:.1f} s")
    v2 = r.get("deploy_v2")
    if not v2:
        print("  ", r.get("error", "no v2 deploy"))
        return
    print("  v2 plays:")
    for name, secs in v2["plays"]:
        print(f"    {secs:7.1f} s  {name}")
    print("  v2 slowest tasks (summed over the run):")
    for name, secs in sorted(v2["tasks"].items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {secs:7.1f} s  {name}")
    if v2["switch"]:
        times = sorted(v2["switch"].values())
        print(
            f"  per-host switch: median {statistics.median(times):.1f} s, "
            f"min {times[0]:.1f} s, max {times[-1]:.1f} s ({len(times)} hosts)"
        )
    for line in v2["canary"]:
        print("  " + line)
    for label, p in zip(("canary host", "other hosts"), r.get("probe", []), strict=False):
        print(
            f"  load, {label}: {p['requests']:,} requests, {p['failed']} failed "
            f"{p['failures']}, {p['rps']}/s, p99 {p['p99_ms']} ms, max {p['max_ms']} ms"
        )
    print(f"  load average before/after the v2 deploy: {r.get('load_average')}")
    for variant, v in r.get("variants", {}).items():
        print(
            f"  switch-only deploy to {v['to']} ({variant}): {v['seconds']:.1f} s, rc={v['rc']}, "
            f"controller CPU {v['controller_cpu']:.1f} s, median host switch {v['switch_median']} s"
        )


def print_all(doc: dict[str, Any]) -> None:
    print(f"fleet benchmark {doc['date']} commit {doc['commit']}, schedule {doc['schedule']}")
    for r in doc["sizes"]:
        print_size(r)
    done = [r for r in doc["sizes"] if r.get("deploy_v2")]
    if len(done) >= 2:
        small, large = done[0], done[-1]
        a, b = small["deploy_v2"]["seconds"], large["deploy_v2"]["seconds"]
        print(
            f"\nv2 deploy: {large['hosts']} hosts {b:.1f} s, {small['hosts']} hosts {a:.1f} s: "
            f"{b / a:.2f}x"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--schedule", type=json.loads, default=DEFAULT_SCHEDULE)
    ap.add_argument("--canary-seconds", type=float, default=15.0)
    ap.add_argument(
        "--variants",
        nargs="*",
        choices=sorted(VARIANTS),
        default=[],
        help="after v2, switch-only deploys back and forth with these SSH settings",
    )
    ap.add_argument("--from-json", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.from_json:
        print_all(json.loads(args.from_json.read_text()))
        return 0
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"{stamp}-{commit}-fleet.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "schedule": args.schedule,
        "canary_seconds": args.canary_seconds,
        "cores": os.cpu_count(),
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="sockact-bench-fleet-") as tmp:
        houses = build_releases(("1.0.0", "2.0.0"), Path(tmp))
        for n in args.hosts:
            doc["sizes"].append(one_size(n, args, houses))
            # after each size: an interrupted run keeps what it measured
            out.write_text(json.dumps(doc, indent=2) + "\n")
    print_all(doc)
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
