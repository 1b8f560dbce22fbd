"""A switch survives interruption: ansible-playbook killed at each step, a record that lies,
a host rebooted mid-switch.

A lab of 2 hosts of its own. Both run v1 (blue) and have v2 installed (``--tags
install``); each scenario switches ONE host (``--limit``) between v1 and v2 under load on
that host, so no install happens while the clock runs:

* kill: ``ansible-playbook`` (its whole process group: the workers and their ssh clients)
  gets SIGKILL at a step of the switch -- while the new color starts, once it started,
  once it verified (before the record is written), once the record is written (before the
  old color stops), while the old color drains -- then the same deploy runs again. Across
  kill and re-run: 0 failed requests of any kind, an answered request every second, no
  request over 2 s; at the end exactly one color runs, on the target release, the record
  names it, the enabled units are its instances, no intent is left, and every stopped
  instance exited cleanly.
* a record naming the color that does not serve (the state of issue 10's outage): the
  deploy must not stop the serving color first.
* killed before or once the record named the new color, then a re-run whose canary fails:
  the abort leaves the old color serving, recorded and enabled (never the stopped one).
* killed during the canary, re-run while the old color answers no /ready: a deploy of a
  third release is refused until it answers, then keeps it as the old color (not the
  release whose canary never finished).
* reboot (a real one: systemctl reboot in the host, which the lab boots again): killed once
  the new color started (not enabled, not recorded) and killed once the record is written
  (enablement flipped, old color still running); after the boot exactly the recorded color
  runs and is enabled. Then the re-run converges; and after a completed deploy a reboot
  brings back the recorded color.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sockact_lab.lab import Host, Lab
from tests.ansible.playbooks import (
    APP_VARS,
    BLUE,
    GREEN,
    HOST_LAYOUT,
    active,
    admin_json,
    assert_converged,
    assert_load_ok,
    diagnose,
    enabled_instances,
    figures,
    playbook,
    playbook_killed,
    record,
    running_instances,
    say,
    snapshot,
    start_probe,
    units,
)
from tests.system.hostsetup import admin_get, host_now, stop_problems

pytestmark = [pytest.mark.system, pytest.mark.ansible, pytest.mark.root, pytest.mark.slow]

#: a lighter load than the deploy tests' (each client pauses 50 ms between requests, about
#: two hundred requests per second): the scenarios are many, the playbook needs the CPU, and
#: every request still counts
LIGHT = 0.05


@pytest.fixture(scope="module")
def base_vars() -> dict[str, Any]:
    return {**APP_VARS, "sockact_drain_timeout": 5.0}


@pytest.fixture(scope="module")
def ready(alab: Lab, hosts: list[Host], base_vars: dict[str, Any], rel: dict[str, Any]) -> Path:
    """Provisioned, v1 on blue everywhere, v2 installed everywhere (not switched to)."""
    inv = alab.inventory_path
    for name, extra, args in (
        ("provision.yml", base_vars, ()),
        ("deploy.yml", {**base_vars, **rel["v1"]["vars"]}, ()),
        ("deploy.yml", {**base_vars, **rel["v2"]["vars"]}, ("--tags", "install")),
    ):
        run = playbook(name, inv, extra, *args)
        assert run.rc == 0, run.tail()
    for h in hosts:
        rec = assert_converged(h, rel["v1"]["digest"])
        assert rec["color"] == "blue"
        installed = h.run("ls", HOST_LAYOUT.releases_dir).stdout.split()
        assert len(installed) == 2, installed
    return inv


def _wait_for(h: Host, instances: list[int], state: str, timeout: float = 60) -> Callable[[], None]:
    """A ``then`` for playbook_killed: return once one of ``instances`` is in ``state``."""

    def wait() -> None:
        units = [HOST_LAYOUT.instance_unit(i) for i in instances]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = h.run("systemctl", "is-active", *units, check=False).stdout.split()
            if state in states:
                return
            time.sleep(0.02)
        raise AssertionError(f"{h.name}: none of {units} became {state} in {timeout} s")

    return wait


def _at_kill(h: Host) -> str:
    rec = h.run("cat", HOST_LAYOUT.deploy_record, check=False).stdout
    color = "?"
    if rec.strip():
        color = record(h)["color"]
    states = h.run(
        "systemctl", "is-active", *(HOST_LAYOUT.instance_unit(i) for i in BLUE + GREEN), check=False
    ).stdout.split()
    intent = h.run("test", "-e", HOST_LAYOUT.deploy_intent, check=False).returncode == 0
    return (
        f"record {color}, blue {states[:2]}, green {states[2:]}, "
        f"enabled {enabled_instances(h)}, intent {'present' if intent else 'absent'}"
    )


def _other(label: str) -> str:
    return "v2" if label == "v1" else "v1"


# (name, banner of the task the kill comes at, wait on the host before the kill)
KILL_POINTS: list[tuple[str, str, str | None]] = [
    ("while the new color starts", "Start the instances of", "activating"),
    ("once the new color started", "Read each new instance's readiness", None),
    ("once it verified, before the record", "Write the deploy record naming", None),
    ("once the record is written, before the old color stops", "Stop the old color", None),
    ("while the old color drains", "Stop the old color", "deactivating"),
]


@pytest.mark.parametrize(("point", "banner", "wait"), KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_killed_switch_recovers_on_rerun_without_a_failed_request(
    ready: Path,
    hosts: list[Host],
    base_vars: dict[str, Any],
    rel: dict[str, Any],
    point: str,
    banner: str,
    wait: str | None,
) -> None:
    n = [k[0] for k in KILL_POINTS].index(point)
    h = hosts[n % 2]
    before = record(h)
    old_color = before["color"]
    old_instances = before["instances"]
    new_instances = GREEN if old_color == "blue" else BLUE
    target = _other(before["release"]["label"])
    extra = {**base_vars, **rel[target]["vars"]}
    since = host_now(h)
    then = None
    if wait == "activating":
        then = _wait_for(h, new_instances, "activating")
    elif wait == "deactivating":
        then = _wait_for(h, old_instances, "deactivating")

    probe = start_probe([h], LIGHT)
    try:
        killed = playbook_killed("deploy.yml", ready, extra, banner, "--limit", h.name, then=then)
        state = _at_kill(h)
        rerun = playbook("deploy.yml", ready, extra, "--limit", h.name)
    finally:
        report = probe.stop()
    line = figures(f"killed {point} on {h.name} ({before['release']['label']} -> {target})", report)
    print(f"  at the kill: {state}; killed run rc={killed.rc}, re-run rc={rerun.rc}")
    assert rerun.rc == 0, rerun.tail(100)
    assert_load_ok(report, line)
    rec = assert_converged(h, rel[target]["digest"])
    assert rec["instances"] == new_instances, rec
    assert stop_problems(h, old_instances, since) == [], diagnose([h])


def test_a_record_naming_the_stopped_color_does_not_stop_the_serving_one(
    ready: Path, hosts: list[Host], base_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    """Issue 10: the record names the color that no longer runs (a run died between the
    old order's stop and record). The color that serves is the old one, whatever the
    record says, and is stopped only after the other one verified."""
    h = hosts[0]
    rec = record(h)
    serving = rec["instances"]
    lie = {**rec, "color": "green" if rec["color"] == "blue" else "blue"}
    lie["instances"] = GREEN if lie["color"] == "green" else BLUE
    h.run(
        "sh",
        "-c",
        f"cat > {HOST_LAYOUT.deploy_record} <<'EOF'\n{__import__('json').dumps(lie)}\nEOF",
    )
    target = _other(rec["release"]["label"])
    since = host_now(h)
    probe = start_probe([h], LIGHT)
    try:
        run = playbook("deploy.yml", ready, {**base_vars, **rel[target]["vars"]}, "--limit", h.name)
    finally:
        report = probe.stop()
    line = figures(f"record naming {lie['color']} while {rec['color']} serves, on {h.name}", report)
    assert run.rc == 0, run.tail(100)
    assert_load_ok(report, line)
    after = assert_converged(h, rel[target]["digest"])
    assert after["instances"] == lie["instances"], after
    assert stop_problems(h, serving, since) == [], diagnose([h])


#: a canary that cannot pass (no host answers that many requests in 2 s): it fails closed
LOSING_CANARY = {"sockact_canary_seconds": 2, "sockact_canary_min_requests": 10**9}


@pytest.mark.parametrize(
    ("point", "banner"),
    [
        ("before the record", "Write the deploy record naming"),
        ("once the record is written", "Stop the old color"),
    ],
)
def test_a_rerun_that_loses_its_canary_leaves_the_old_color_serving_and_recorded(
    ready: Path,
    hosts: list[Host],
    base_vars: dict[str, Any],
    rel: dict[str, Any],
    point: str,
    banner: str,
) -> None:
    """Killed before or after the record named the new color; the re-run (a finish: both
    colors ready) runs a canary that fails and aborts. After the abort exactly one color
    serves -- the old one, never stopped -- and the record and the enablement name it,
    whatever the killed run had recorded (the record naming the new color is set back)."""
    h = hosts[0]
    before = record(h)
    old_color, old_instances = before["color"], before["instances"]
    new_instances = GREEN if old_color == "blue" else BLUE
    target = _other(before["release"]["label"])
    extra = {**base_vars, **rel[target]["vars"]}
    since = host_now(h)
    probe = start_probe([h], LIGHT)
    try:
        killed = playbook_killed("deploy.yml", ready, extra, banner, "--limit", h.name)
        state = _at_kill(h)
        rerun = playbook("deploy.yml", ready, {**extra, **LOSING_CANARY}, "--limit", h.name)
    finally:
        report = probe.stop()
    line = figures(f"canary lost after a kill {point} on {h.name}", report)
    print(f"  at the kill: {state}; killed run rc={killed.rc}, re-run rc={rerun.rc}")
    assert rerun.rc != 0, rerun.tail(100)
    assert "lost the canary" in rerun.text, rerun.tail(100)
    recorded = "names" if "once" in point else "unchanged"
    assert f"{HOST_LAYOUT.deploy_record} {recorded}" in rerun.text, rerun.tail(100)
    assert_load_ok(report, line)
    rec = assert_converged(h, before["release"]["digest"])
    assert (rec["color"], rec["instances"]) == (old_color, old_instances), rec
    assert rec["release"]["dir"] == before["release"]["dir"], rec
    assert stop_problems(h, new_instances, since) == [], diagnose([h])


def _assert_boot_matches_record(h: Host) -> dict[str, Any]:
    rec = record(h)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = running_instances(h)
        states = h.run(
            "systemctl",
            "is-active",
            *(HOST_LAYOUT.instance_unit(i) for i in rec["instances"]),
            check=False,
        ).stdout.split()
        if states == ["active"] * len(rec["instances"]):
            break
        time.sleep(0.5)
    running = running_instances(h)
    enabled = enabled_instances(h)
    print(
        f"{h.name} after the reboot: record {rec['color']} {rec['instances']}, "
        f"running {running}, enabled {enabled}"
    )
    assert running == rec["instances"], diagnose([h])
    assert enabled == rec["instances"], diagnose([h])
    return rec


@pytest.mark.parametrize(
    ("point", "banner"),
    [
        ("once the new color started", "Read each new instance's readiness"),
        ("once the record is written", "Stop the old color"),
    ],
)
def test_a_reboot_mid_switch_brings_back_the_recorded_color(
    alab: Lab,
    ready: Path,
    hosts: list[Host],
    base_vars: dict[str, Any],
    rel: dict[str, Any],
    point: str,
    banner: str,
) -> None:
    h = alab.hosts()[1]  # fresh: an earlier reboot gave it new PIDs
    before = record(h)
    target = _other(before["release"]["label"])
    extra = {**base_vars, **rel[target]["vars"]}
    killed = playbook_killed("deploy.yml", ready, extra, banner, "--limit", h.name)
    print(f"{h.name} killed {point} (rc={killed.rc}): {_at_kill(h)}")
    h = alab.reboot(h.name)
    rec = _assert_boot_matches_record(h)
    # the record, hence what came back, is the old color before the record step, the new
    # one from it on
    expect = before["release"]["digest"] if "started" in point else rel[target]["digest"]
    assert rec["release"]["digest"] == expect, rec
    rerun = playbook("deploy.yml", ready, extra, "--limit", h.name)
    assert rerun.rc == 0, rerun.tail(100)
    assert_converged(h, rel[target]["digest"])


def test_a_reboot_after_a_deploy_brings_back_the_recorded_color(
    alab: Lab, ready: Path, hosts: list[Host], rel: dict[str, Any]
) -> None:
    h = alab.reboot(alab.hosts()[1].name)
    rec = _assert_boot_matches_record(h)
    assert_converged(h, rec["release"]["digest"])


# --------------------------------------------------------------------------- an unfinished canary


def _hold(h: Host, instances: list[int]) -> None:
    """Make ``instances`` run without answering: SIGSTOP to every process of their units
    (they stay active, their ports accept connections that nobody answers, so /ready
    never answers), with the host's service watchdogs ignored meanwhile: the units'
    ``WatchdogSec`` would otherwise have systemd abort and restart them within seconds."""
    h.run("systemctl", "service-watchdogs", "no")
    h.run("systemctl", "kill", "--signal=SIGSTOP", *units(instances))


def _release(h: Host, instances: list[int], timeout: float = 60) -> None:
    """Undo :func:`_hold`: SIGCONT, wait until each instance answers /ready again, then
    the service watchdogs count again (the instances ping again by then)."""
    h.run("systemctl", "kill", "--signal=SIGCONT", *units(instances), check=False)
    deadline = time.monotonic() + timeout
    try:
        for i in instances:
            if active(h, [i]) != ["active"]:
                continue  # stopped meanwhile (by a deploy that should not have)
            while admin_get(h, i, "/ready")[0] != 200:
                assert time.monotonic() < deadline, f"{h.name}: instance {i} not ready again"
                time.sleep(0.2)
    finally:
        h.run("systemctl", "service-watchdogs", "yes")


def _intent(h: Host) -> dict[str, Any]:
    out = h.run("cat", HOST_LAYOUT.deploy_intent, check=False).stdout
    doc: dict[str, Any] = json.loads(out) if out.strip() else {}
    return doc


#: the canary of the run that is killed in its window (no load: the verdict never comes)
UNFINISHED_CANARY = {"sockact_canary_seconds": 30}
#: the canary of the deploy that gets through: some seconds of the light load; generous
#: bounds (it must pass on a loaded 2-core machine: what it is compared with is the point)
EASY_CANARY = {
    "sockact_canary_seconds": 8,
    "sockact_canary_min_requests": 20,
    "sockact_canary_max_p99_ratio": 100,
    "sockact_canary_p99_slack": 2.0,
}


def test_a_release_whose_canary_never_finished_is_never_kept_as_the_old_color(
    ready: Path, hosts: list[Host], base_vars: dict[str, Any], rel: dict[str, Any]
) -> None:
    """A deploy of R2 killed during its canary (the intent says "pending") and re-run
    while the old color (R1) runs but answers no /ready (its processes stopped by
    SIGSTOP): the re-run can neither compare nor stop R2, which may be all that serves,
    so R2 runs on with the intent kept. Then a deploy of R3:

    * while R1 still answers nothing, nobody can tell which color serves: the run is
      refused on that host with one line, and nothing on the host changes (files, units,
      PIDs, enablement, record, intent);
    * once R1 answers again (one of its instances stopped meanwhile, so that R2's color
      serves more: with as many ready instances on each side the recorded color, R1's,
      would be the old one anyway), R1's color is the old one (the canary's baseline, and
      the color kept until R3 verified), R2's color is stopped first and R3 starts there;
      0 failed requests, R3 recorded, enabled and alone running."""
    h = hosts[0]
    before = record(h)
    cur = before["release"]["label"]
    assert cur in ("v1", "v2"), before
    bad = _other(cur)
    old_color, old = before["color"], before["instances"]
    new = GREEN if old == BLUE else BLUE
    new_color = "green" if new == GREEN else "blue"
    bad_short = f"{bad} {rel[bad]['digest'][:12]}"
    v3 = {**base_vars, **rel["v3"]["vars"], **EASY_CANARY}
    run = playbook("deploy.yml", ready, v3, "--tags", "install", "--limit", h.name)
    assert run.rc == 0, run.tail()

    # 1. R2's canary killed in its window, then re-run while R1 answers nothing
    r2 = {**base_vars, **rel[bad]["vars"], **UNFINISHED_CANARY}
    playbook_killed(
        "deploy.yml", ready, r2, "Run the canary", "--limit", h.name, then=lambda: time.sleep(3)
    )
    assert _intent(h)["canary"]["state"] == "pending", _intent(h)
    try:
        _hold(h, old)
        rerun = playbook("deploy.yml", ready, r2, "--limit", h.name)
        intent = _intent(h)
        say(f"re-run of {bad} with {old_color} stopped: rc={rerun.rc}, intent {intent}")
        assert rerun.rc != 0, rerun.tail(100)
        failed_at = re.search(r"failed on \S+ at '([^']*)'", rerun.text)
        say(f"the re-run failed at {failed_at[1] if failed_at else '?'}")
        assert f"rolled back: {new_color} left running" in rerun.text, rerun.tail(100)
        assert intent["canary"]["state"] == "pending", intent
        assert intent["to"]["release"]["digest"] == rel[bad]["digest"], intent
        assert record(h) == before
        assert enabled_instances(h) == old
        assert running_instances(h) == sorted(old + new), diagnose([h])
        for i in new:
            assert admin_json(h, i, "/release")["digest"] == rel[bad]["digest"], i

        # 2. R3 while R1 still answers nothing: refused, nothing changes
        state = snapshot(h)
        refused = playbook("deploy.yml", ready, v3, "--limit", h.name)
        assert (
            f"refusing to switch {h.name} to v3 {rel['v3']['digest'][:12]}: {new_color} runs "
            f"{bad_short}, whose canary was not finished in an interrupted run, and "
            f"{old_color} (release unknown) runs 2 instances but none answers /ready"
        ) in refused.text, refused.tail(100)
        assert refused.rc != 0, refused.tail(100)
        assert "PLAY [Switch blue/green" in refused.output, refused.tail(100)
        assert "TASK [sockact : Write the intent of this switch]" not in refused.output
        assert snapshot(h) == state, diagnose([h])
        assert _intent(h) == intent
    finally:
        # 3. R1 answers again, with one instance fewer
        _release(h, old)

    since = host_now(h)
    h.run("systemctl", "stop", *units(old[1:]))
    probe = start_probe([h], LIGHT)
    try:
        final = playbook("deploy.yml", ready, v3, "--limit", h.name)
    finally:
        report = probe.stop()
    line = figures(f"{bad}'s canary never finished, then v3 on {h.name}", report)
    assert final.rc == 0, final.tail(100)
    assert (
        f"{new_color} runs {bad_short}, whose canary was not finished in an interrupted run: "
        f"{old_color} (1/2 ready) is kept as the old color and {new_color} is stopped first"
    ) in final.text, final.tail(150)
    assert f"{h.name}: {old_color} ({cur} {before['release']['digest'][:12]}, 1/2 ready) -> " in (
        final.text
    ), final.tail(150)
    # R2's color stopped before R3 started in it; the canary compared R3 with R1
    stop_first = final.output.find(f"TASK [sockact : Stop leftovers of the new color, {new_color}]")
    start = final.output.find(f"TASK [sockact : Start the instances of {new_color}]")
    assert 0 <= stop_first < start, final.tail(150)
    assert f"{h.name}: canary of {new_color} (v3) against {old_color} ({cur})" in final.text, (
        final.tail(150)
    )
    assert_load_ok(report, line)
    rec = assert_converged(h, rel["v3"]["digest"])
    assert (rec["color"], rec["instances"]) == (new_color, new), rec
    assert rec["previous"]["digest"] == before["release"]["digest"], rec
    assert stop_problems(h, old, since) == [], diagnose([h])
