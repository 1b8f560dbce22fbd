"""A fleet: 8 hosts upgraded in batches under load, with the canary on the first batch.

Real ``ansible-playbook`` over SSH against 8 fresh Debian 12 hosts of the lab's minimal
image, one lab for the whole module (``LAB_HOSTS``); the tests build on each other, in
file order:

1. provision the 8 hosts and deploy v1 everywhere at once (``sockact_serial: "100%"``: a
   first deploy has no old color to compare with, so no canary);
2. v1 -> v2 under load with the schedule ``[1, "25%", "100%"]`` (one host, then 2, then
   the other 5): 0 failed requests anywhere, every host on v2, each host's switch time
   printed; the canary ran on the first host only, printed its comparison and passed;
   each host's Prometheus targets file lists the color that runs (checked by promtool);
3. v3 built with a fault that shows only under load (``DEMO_ERROR_RATE=0.05``, set through
   ``sockact_app_env``: 1 request in 20 answers 500; the health gate, /check and the
   deploy's request to the port all pass): the canary on the first host finds it worse,
   that host rolls back by itself (v3 stopped, v2 never stopped, record unchanged) and the
   run stops: the other 7 hosts never change (records, PIDs, no v3 instance started).
   The canary host's users saw the new color's 500s, and only between its start and its
   stop; no other host's users saw a failed request;
4. the canary is crash safe: killed while the canary compares (its intent says
   "pending"), the re-run compares again and rolls back; killed once the verdict is
   recorded ("failed"), the re-run rolls back without comparing again.

Load: two probes that never retry. One on the canary host alone (2 keep-alive + 2
new-connection clients: enough requests on each color for the canary), one on the
other 7 hosts (one keep-alive and one new-connection client each: a closed-loop client
stays with one target).
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sockact.controller.probe import Probe, Report
from sockact_lab.lab import Host, Lab
from tests.ansible.playbooks import (
    APP_VARS,
    BIN,
    BLUE,
    CANARY_PAUSE,
    GREEN,
    HOST_LAYOUT,
    REST_PAUSE,
    Run,
    assert_converged,
    assert_load_ok,
    diagnose,
    enabled_instances,
    figures,
    main_pids,
    playbook,
    playbook_killed,
    probe_targets,
    record,
    running_instances,
    say,
    units,
)
from tests.system.hostsetup import host_now, stop_problems

pytestmark = [pytest.mark.system, pytest.mark.ansible, pytest.mark.root, pytest.mark.slow]

#: the lab of this module (tests/ansible/conftest.py reads it)
LAB_HOSTS = 8
SCHEDULE: list[int | str] = [1, "25%", "100%"]
#: hosts per batch of SCHEDULE on 8 hosts (Ansible: a percentage of all hosts, at least 1)
BATCHES = [1, 2, 5]
CANARY_SECONDS = 15
#: the fault of the bad release: one request in 20 answers 500
BAD_ENV = {"DEMO_ERROR_RATE": "0.05"}
SWITCH_PLAY = "PLAY [Switch blue/green, host by host]"


@pytest.fixture(scope="module")
def deploy_vars() -> dict[str, Any]:
    return {
        **APP_VARS,
        "sockact_drain_timeout": 5.0,
        "sockact_serial": SCHEDULE,
        "sockact_canary_seconds": CANARY_SECONDS,
        # the canary host's probe makes some hundreds of requests per color in the window
        "sockact_canary_min_requests": 100,
    }


@pytest.fixture(scope="module")
def fleet(alab: Lab, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]) -> Path:
    """8 provisioned hosts running v1 on blue."""
    inv = alab.inventory_path
    run = playbook("provision.yml", inv, deploy_vars)
    assert run.rc == 0, run.tail()
    run = playbook(
        "deploy.yml", inv, {**deploy_vars, **rel["v1"]["vars"], "sockact_serial": "100%"}
    )
    assert run.rc == 0, run.tail()
    for h in hosts:
        assert assert_converged(h, rel["v1"]["digest"])["color"] == "blue"
    return inv


# --------------------------------------------------------------------------- load


@dataclass
class Loads:
    """What the canary host's users and the other hosts' users saw."""

    canary: Report
    rest: Report


def start_loads(hosts: list[Host]) -> tuple[Probe, Probe]:
    canary = Probe(
        probe_targets(hosts[:1]), keepalive_clients=2, new_conn_clients=2, pause=CANARY_PAUSE
    ).start()
    rest = Probe(
        probe_targets(hosts[1:]),
        keepalive_clients=len(hosts) - 1,
        new_conn_clients=len(hosts) - 1,
        pause=REST_PAUSE,
    ).start()
    return canary, rest


def deploy_under_loads(
    label: str, inventory: Path, extra: dict[str, Any], hosts: list[Host], *args: str
) -> tuple[Run, Loads]:
    canary, rest = start_loads(hosts)
    try:
        run = playbook("deploy.yml", inventory, extra, *args)
    finally:
        loads = Loads(canary.stop(), rest.stop())
    figures(
        f"{label}, the canary host {hosts[0].name} ({run.seconds:.0f} s playbook)", loads.canary
    )
    figures(f"{label}, the other {len(hosts) - 1} hosts", loads.rest)
    return run, loads


# --------------------------------------------------------------------------- reading the run


def switch_times(run: Run) -> dict[str, float]:
    """host -> seconds of its switch, from the role's 'Say how long' lines."""
    found = re.findall(
        r"(sockact-\d+): (?:nothing to do|\S+ -> \S+ \(\S+\)) in (\d+\.\d) s", run.text
    )
    return {host: float(s) for host, s in found}


def batches(run: Run) -> list[list[str]]:
    """The hosts of each batch of the switch play, in order."""
    out = []
    for part in run.output.split(SWITCH_PLAY)[1:]:
        part = part.split("PLAY [Clean up the controller]")[0]
        out.append(sorted(set(re.findall(r"ok: \[(sockact-\d+)\]", part)), key=_index))
    return out


def _index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def canary_lines(run: Run) -> list[str]:
    """The comparisons the role printed: one text per canary."""
    return re.findall(r"(sockact-\d+: canary of .*?window \S+ \.\. \S+)", run.text)


def canary_window(text: str) -> tuple[float, float]:
    m = re.search(r"window (\S+)Z \.\. (\S+)Z", text)
    assert m, text
    return tuple(  # type: ignore[return-value]
        datetime.datetime.fromisoformat(t).replace(tzinfo=datetime.UTC).timestamp()
        for t in m.groups()
    )


def targets_file(h: Host) -> list[dict[str, Any]]:
    doc: list[dict[str, Any]] = json.loads(h.run("cat", HOST_LAYOUT.prometheus_targets).stdout)
    return doc


def assert_targets(h: Host, instances: list[int], label: str) -> None:
    """The host's file_sd file lists exactly ``instances``, with their labels, and
    Prometheus' own checker accepts it."""
    doc = targets_file(h)
    assert [e["targets"] for e in doc] == [[f"127.0.0.1:{9000 + i}"] for i in instances], doc
    for e, i in zip(doc, instances, strict=True):
        assert e["labels"] == {
            "color": "blue" if i < 100 else "green",
            "sockact_instance": str(i),
            "release": label,
            "host": h.name,
        }, doc
    mode = h.run("stat", "-c", "%a %U", HOST_LAYOUT.prometheus_targets).stdout.split()
    assert mode == ["644", "root"], mode


def promtool_check(h: Host, tmp: Path) -> None:
    promtool = shutil.which("promtool", path=str(BIN)) or shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (bash .ci/setup puts it into .venv/bin)")
    sd = tmp / f"{h.name}-targets.json"
    sd.write_text(h.run("cat", HOST_LAYOUT.prometheus_targets).stdout)
    config = tmp / f"{h.name}-prometheus.yml"
    config.write_text(
        f"scrape_configs:\n  - job_name: sockact\n    file_sd_configs:\n      - files: [{sd}]\n"
    )
    proc = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def journal_span(h: Host, instances: list[int], since: str) -> tuple[float, float] | None:
    """Wall-clock time of the first and the last journal entry of ``instances`` since
    ``since``: from the start of the units to their stop. None when they have none."""
    args = ["journalctl", "--no-pager", "-o", "json", "--since", since]
    for i in instances:
        args += ["-u", HOST_LAYOUT.instance_unit(i)]
    out = h.run(*args, check=False).stdout
    stamps = [int(json.loads(line)["__REALTIME_TIMESTAMP"]) / 1e6 for line in out.splitlines()]
    return (min(stamps), max(stamps)) if stamps else None


def failures_in_time(report: Report) -> list[tuple[float, dict[str, int]]]:
    """(wall-clock time of the 100 ms bucket, failures by kind) for each bucket that failed."""
    return [(report.started_at + b.t, dict(b.failures)) for b in report.buckets if b.failed]


# --------------------------------------------------------------------------- tests


def test_preflight_refuses_a_bad_schedule_or_canary_before_any_host_changes(
    fleet: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    before = {h.name: (record(h), main_pids(h, BLUE)) for h in hosts}
    bad = {**deploy_vars, **rel["v2"]["vars"], "sockact_serial": [1, "0%", "x"]}
    run = playbook("deploy.yml", fleet, {**bad, "sockact_canary_max_p99_ratio": 0.5})
    assert run.rc != 0, run.tail()
    assert 'bad batch or canary variables: sockact_serial=[1, "0%", "x"]' in run.text, run.tail()
    assert "PLAY [Install the release on every host]" not in run.output, run.tail()
    for h in hosts:
        assert (record(h), main_pids(h, BLUE)) == before[h.name], h.name


@dataclass
class Upgrade:
    run: Run
    loads: Loads
    since: dict[str, str]


@pytest.fixture(scope="module")
def upgraded(
    fleet: Path, hosts: list[Host], deploy_vars: dict[str, Any], rel: dict[str, Any]
) -> Upgrade:
    """v1 -> v2 on the 8 hosts with the schedule, under load."""
    since = {h.name: host_now(h) for h in hosts}
    run, loads = deploy_under_loads("v1 -> v2", fleet, {**deploy_vars, **rel["v2"]["vars"]}, hosts)
    return Upgrade(run, loads, since)


def test_eight_hosts_upgraded_in_batches_under_load_without_a_failed_request(
    upgraded: Upgrade, hosts: list[Host], rel: dict[str, Any], tmp_path: Path
) -> None:
    run, loads = upgraded.run, upgraded.loads
    assert run.rc == 0, run.tail(150)
    assert_load_ok(loads.rest, "v1 -> v2, the other hosts")
    assert_load_ok(loads.canary, "v1 -> v2, the canary host")
    assert {ver for (_inst, ver) in loads.rest.samples} == {"1.0.0", "2.0.0"}, loads.rest.samples

    # the schedule: one host, then 25% of 8, then the rest
    names = [h.name for h in hosts]
    done = batches(run)
    assert [len(b) for b in done] == BATCHES, done
    assert [n for b in done for n in b] == names, done

    times = switch_times(run)
    print("switch time per host (s):", times)
    assert set(times) == set(names), run.tail(100)

    for h in hosts:
        rec = assert_converged(h, rel["v2"]["digest"])
        assert rec["instances"] == GREEN, rec
        assert stop_problems(h, BLUE, upgraded.since[h.name]) == [], diagnose([h])
        assert_targets(h, GREEN, "v2")
    promtool_check(hosts[0], tmp_path)


def test_a_good_release_passes_the_canary_of_the_first_batch_only(
    upgraded: Upgrade, hosts: list[Host]
) -> None:
    lines = canary_lines(upgraded.run)
    for line in lines:
        print(line)
    assert len(lines) == 1, upgraded.run.tail(200)
    assert lines[0].startswith(f"{hosts[0].name}: canary of green (v2) against blue (v1)"), lines
    assert "verdict: pass" in lines[0], lines[0]
    start, end = canary_window(lines[0])
    assert end - start >= CANARY_SECONDS - 1, lines[0]


def test_a_release_bad_only_under_load_is_rolled_back_by_the_canary_host_alone(
    upgraded: Upgrade,
    fleet: Path,
    hosts: list[Host],
    deploy_vars: dict[str, Any],
    rel: dict[str, Any],
) -> None:
    assert upgraded.run.rc == 0, "needs the fleet on v2"
    before = {h.name: (record(h), main_pids(h, GREEN)) for h in hosts}
    since = {h.name: host_now(h) for h in hosts}
    bad = {**deploy_vars, **rel["v3"]["vars"], "sockact_app_env": BAD_ENV}
    run, loads = deploy_under_loads("v2 -> v3 (bad under load)", fleet, bad, hosts)
    assert run.rc != 0, run.tail(100)
    canary_host, rest = hosts[0], hosts[1:]

    lines = canary_lines(run)
    for line in lines:
        print(line)
    assert len(lines) == 1 and lines[0].startswith(f"{canary_host.name}: canary of blue (v3)"), (
        lines
    )
    assert "verdict: FAIL: error ratio" in lines[0], lines[0]
    assert f"failed on {canary_host.name}" in run.text and "lost the canary" in run.text, run.tail()
    assert "rolled back: blue stopped, green still serving" in run.text, run.tail()
    # the run stopped after the first batch
    assert len(batches(run)) == 1, batches(run)

    # the canary host: back on v2 as it was, v3 stopped cleanly, nothing left half done
    rec, pids = before[canary_host.name]
    assert record(canary_host) == rec
    assert main_pids(canary_host, GREEN) == pids
    assert_converged(canary_host, rel["v2"]["digest"])
    assert stop_problems(canary_host, BLUE, since[canary_host.name]) == [], diagnose([canary_host])
    assert_targets(canary_host, GREEN, "v2")

    # the other 7 never changed: same record, same processes, no v3 instance ever started
    for h in rest:
        rec, pids = before[h.name]
        assert (record(h), main_pids(h, GREEN)) == (rec, pids), h.name
        assert running_instances(h) == GREEN, h.name
        assert journal_span(h, BLUE, since[h.name]) is None, f"{h.name}: a blue unit moved"
        assert_converged(h, rel["v2"]["digest"])
    assert_load_ok(loads.rest, "v2 -> v3, the other hosts")

    # what the canary host's users saw: the new color's 500s, only while it ran
    exposure = journal_span(canary_host, BLUE, since[canary_host.name])
    assert exposure is not None, diagnose([canary_host])
    window = canary_window(lines[0])
    failed = failures_in_time(loads.canary)
    kinds = {k for _, f in failed for k in f}
    in_window = sum(sum(f.values()) for t, f in failed if window[0] - 1 <= t <= window[1] + 1)
    total = loads.canary.failed
    served_by_v3 = sum(n for (_inst, ver), n in loads.canary.samples.items() if ver == "3.0.0")
    summary = (
        f"canary host users: {loads.canary.total} requests, {total} failed (all {kinds}), "
        f"{in_window} of them in the canary's window ({window[1] - window[0]:.0f} s), "
        f"{total - in_window} between the new color's start and the window or between the "
        f"window and its stop ({exposure[1] - exposure[0]:.1f} s in all); "
        f"{served_by_v3} answered 200 by v3"
    )
    print(summary)
    say(summary)
    assert kinds <= {"http_5xx"}, loads.canary.format_table()
    assert total > 0, "the bad release never answered a request"
    outside = [(t, f) for t, f in failed if not exposure[0] - 0.5 <= t <= exposure[1] + 0.5]
    assert outside == [], f"failed outside {exposure}: {outside}"


#: (name, banner of the task the kill comes at, the canary's state in the intent then)
CANARY_KILL_POINTS = [
    ("while the canary compares", "Run the canary", "pending"),
    ("once its verdict is recorded", "Fail when the new color is worse", "failed"),
]


def old_and_new(h: Host) -> tuple[dict[str, Any], list[int], list[int], str]:
    """The record, the old color's instances, the new color's instances and its name."""
    rec = record(h)
    old = rec["instances"]
    new = GREEN if old == BLUE else BLUE
    return rec, old, new, "green" if new == GREEN else "blue"


def canary_kill_wait(intent_says: str) -> Callable[[], None] | None:
    """What to wait for after the banner before the kill: a few seconds into the canary's
    window, or nothing (right after the verdict was written)."""
    return (lambda: time.sleep(3)) if intent_says == "pending" else None


@pytest.mark.parametrize(("point", "banner", "intent_says"), CANARY_KILL_POINTS)
def test_a_killed_canary_never_promotes_the_bad_release(
    fleet: Path,
    hosts: list[Host],
    deploy_vars: dict[str, Any],
    rel: dict[str, Any],
    point: str,
    banner: str,
    intent_says: str,
) -> None:
    """ansible-playbook killed during the canary, or after its verdict and before the
    rollback: the re-run of the same deploy finds both colors ready on their releases
    (which would otherwise be 'finish': record and promote the new one). A pending canary
    runs again, even when the re-run turned the canary off; a failed one rolls back at
    once, without comparing again."""
    h = hosts[0]
    rec, old, new, new_color = old_and_new(h)
    pids = main_pids(h, old)
    since = host_now(h)
    bad = {**deploy_vars, **rel["v3"]["vars"], "sockact_app_env": BAD_ENV}
    # the operator turns the canary off for the re-run: a canary due is run all the same
    rerun_vars = {**bad, "sockact_canary_seconds": 0} if intent_says == "pending" else bad
    probe = Probe(probe_targets([h]), keepalive_clients=2, new_conn_clients=2, pause=CANARY_PAUSE)
    probe.start()
    try:
        wait = canary_kill_wait(intent_says)
        killed = playbook_killed("deploy.yml", fleet, bad, banner, "--limit", h.name, then=wait)
        intent = json.loads(h.run("cat", HOST_LAYOUT.deploy_intent).stdout)
        rerun = playbook("deploy.yml", fleet, rerun_vars, "--limit", h.name)
    finally:
        report = probe.stop()
    figures(f"killed {point} on {h.name}, then the re-run", report)
    print(f"  killed run rc={killed.rc}, intent at the kill: {intent['canary']}")
    assert intent["canary"]["state"] == intent_says, intent
    assert rerun.rc != 0, rerun.tail(100)
    assert "found the intent of an interrupted run" in rerun.text, rerun.tail(100)
    lines = canary_lines(rerun)
    if intent_says == "pending" and not lines:
        # the re-run's gates came first: one of their requests (an instance's /check, or
        # the one to the main port when it went to the new color) drew one of the bad
        # release's failures (1 in 20 once it served a few requests); caught all the same,
        # and before anything was promoted
        by_check = "DEMO_ERROR_RATE: this request fails on purpose" in rerun.text
        by_main_port = f"on {h.name} answered 500" in rerun.text
        assert by_check or by_main_port, rerun.tail(200)
        assert "at 'Check that every new instance is ready" in rerun.text, rerun.tail(200)
    elif intent_says == "pending":
        assert len(lines) == 1 and "verdict: FAIL" in lines[0], rerun.tail(200)
        assert f"canary over {CANARY_SECONDS} s" in lines[0], lines[0]
    else:
        assert lines == [], lines
        assert f"the canary of an interrupted run found {new_color} (v3) worse" in rerun.text
        # the verdict stands: no gate of the bad release runs again (one could fail first)
        assert "Check that every new instance is ready" not in rerun.text, rerun.tail(200)
    assert f"rolled back: {new_color} stopped" in rerun.text, rerun.tail()
    assert (record(h), main_pids(h, old)) == (rec, pids)
    assert_converged(h, rec["release"]["digest"])
    assert stop_problems(h, new, since) == [], diagnose([h])
    assert {k for k, n in report.failures.items() if n} <= {"http_5xx"}, report.format_table()


@pytest.mark.parametrize(("point", "banner", "intent_says"), CANARY_KILL_POINTS)
def test_a_killed_canary_with_no_old_color_to_compare_keeps_its_state(
    fleet: Path,
    hosts: list[Host],
    deploy_vars: dict[str, Any],
    rel: dict[str, Any],
    point: str,
    banner: str,
    intent_says: str,
) -> None:
    """Killed during the canary or after its verdict, and the old color is gone when the
    re-run comes (here stopped by hand; on a loaded host its /ready may just not answer):
    nothing can be compared, and the new color may be all that serves. The re-run must
    neither promote the new color nor forget what its canary owes: the intent keeps the
    canary's state, so that a later run, even with the canary turned off, never promotes
    the release that did not pass. Once the old color is back, that later run rolls back."""
    h = hosts[0]
    rec, old, new, new_color = old_and_new(h)
    bad = {**deploy_vars, **rel["v3"]["vars"], "sockact_app_env": BAD_ENV}
    probe = Probe(probe_targets([h]), keepalive_clients=2, new_conn_clients=2, pause=CANARY_PAUSE)
    probe.start()
    try:
        wait = canary_kill_wait(intent_says)
        playbook_killed("deploy.yml", fleet, bad, banner, "--limit", h.name, then=wait)
    finally:
        probe.stop()
    h.run("systemctl", "stop", *units(old))
    rerun = playbook("deploy.yml", fleet, bad, "--limit", h.name)
    intent = json.loads(h.run("cat", HOST_LAYOUT.deploy_intent, check=False).stdout or "{}")
    say(f"killed {point}, old color stopped, re-run rc={rerun.rc}; intent: {intent.get('canary')}")
    assert rerun.rc != 0, rerun.tail(100)
    assert record(h) == rec, "the record must still name the old color"
    assert enabled_instances(h) == old, enabled_instances(h)
    assert running_instances(h) == new, running_instances(h)
    assert (intent.get("canary") or {}).get("state") == intent_says, (intent, rerun.tail(60))
    # the old color comes back; a later run with the canary off still never promotes v3
    h.run("systemctl", "start", *units(old))
    since = host_now(h)
    later = {**bad, "sockact_canary_seconds": 0}
    probe = Probe(probe_targets([h]), keepalive_clients=2, new_conn_clients=2, pause=CANARY_PAUSE)
    probe.start()
    try:
        final = playbook("deploy.yml", fleet, later, "--limit", h.name)
    finally:
        report = probe.stop()
    figures(f"killed {point}, old color stopped and started again, a later run", report)
    assert final.rc != 0, final.tail(100)
    assert f"rolled back: {new_color} stopped" in final.text, final.tail(100)
    assert record(h) == rec
    assert_converged(h, rec["release"]["digest"])
    assert stop_problems(h, new, since) == [], diagnose([h])
    assert {k for k, n in report.failures.items() if n} <= {"http_5xx"}, report.format_table()
