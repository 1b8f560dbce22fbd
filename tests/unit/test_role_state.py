"""The role's plan of a switch (ansible/roles/sockact/library/sockact_state.py): decided
from the units' real state, never stopping the only color that serves."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sockact import layout

MODULE = Path(__file__).resolve().parents[2] / "ansible/roles/sockact/library/sockact_state.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sockact_state", MODULE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sockact_state"] = mod
    spec.loader.exec_module(mod)
    return mod


state = _load()
OFFSETS = dict(layout.COLOR_OFFSETS)
OLD, NEW = "a" * 64, "b" * 64
TARGET = {"label": "v2", "digest": NEW, "dir": "/opt/api/releases/v2-bbbbbbbbbbbb"}


def units(**colors: tuple[str, str | None, int]) -> dict[int, dict[str, Any]]:
    """color=(active_state, digest, ready count) for 2 instances per color."""
    out = {}
    for color, (active, digest, nready) in colors.items():
        for n, i in enumerate(layout.instances_of(color, 2)):
            out[i] = {"active_state": active, "ready": n < nready, "digest": digest}
    return out


def plan(
    u: dict[int, dict[str, Any]],
    record: dict[str, Any] | None = None,
    enabled: list[int] | None = None,
    intent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = state.plan(
        u, record or {}, intent or {}, enabled or [], 2, OFFSETS, layout.MAX_PER_COLOR, TARGET
    )
    return result


BLUE_OLD = {
    "color": "blue",
    "instances": [1, 2],
    "release": {"label": "v1", "digest": OLD, "dir": "/opt/api/releases/v1-aaaaaaaaaaaa"},
}
GREEN_NEW = {"color": "green", "instances": [101, 102], "release": TARGET}


def test_first_deploy_starts_blue() -> None:
    p = plan(units(blue=("inactive", None, 0), green=("inactive", None, 0)))
    assert (p["action"], p["old"], p["new"]) == ("switch", None, "blue")
    assert p["start"] == [1, 2] and p["stop_first"] == [] and p["stop_after"] == []


def test_a_plain_switch_starts_the_other_color_and_stops_the_old_after() -> None:
    u = units(blue=("active", OLD, 2), green=("inactive", None, 0))
    p = plan(u, BLUE_OLD, [1, 2])
    assert (p["action"], p["old"], p["new"]) == ("switch", "blue", "green")
    assert (p["start"], p["stop_first"], p["stop_after"]) == ([101, 102], [], [1, 2])
    assert (p["enable"], p["disable"]) == ([101, 102], [1, 2])


def test_the_serving_color_is_old_even_when_the_record_says_otherwise() -> None:
    """The record names blue but green serves (a run died between stop and record):
    green is the color that serves and must not be stopped; blue is started afresh."""
    u = units(blue=("inactive", None, 0), green=("active", OLD, 2))
    p = plan(u, BLUE_OLD, [1, 2])
    assert (p["old"], p["new"]) == ("green", "blue")
    assert p["stop_first"] == [] and p["stop_after"] == [101, 102]


def test_leftovers_of_the_new_color_are_stopped_first_when_the_old_serves() -> None:
    u = units(blue=("active", OLD, 2), green=("active", "c" * 64, 1))
    p = plan(u, BLUE_OLD, [1, 2])
    assert (p["old"], p["new"], p["stop_first"]) == ("blue", "green", [101, 102])


@pytest.mark.parametrize("recorded", [BLUE_OLD, GREEN_NEW])
def test_a_new_color_that_already_runs_the_target_is_finished_not_restarted(
    recorded: dict[str, Any],
) -> None:
    """Killed after the start, after verify, after the record: the re-run keeps green."""
    u = units(blue=("active", OLD, 2), green=("active", NEW, 2))
    p = plan(u, recorded, [1, 2])
    assert (p["action"], p["new"], p["start"], p["stop_first"]) == ("finish", "green", [], [])
    assert p["stop_after"] == [1, 2]
    assert p["record_ok"] is (recorded is GREEN_NEW)


def test_killed_while_draining_finishes_with_the_stop() -> None:
    u = units(blue=("deactivating", OLD, 0), green=("active", NEW, 2))
    p = plan(u, GREEN_NEW, [101, 102], intent={"to": {"color": "green"}})
    assert (p["action"], p["new"], p["stop_after"]) == ("finish", "green", [1, 2])
    assert p["notes"] and "interrupted" in p["notes"][0]


def test_up_to_date_needs_record_enablement_units_and_no_intent() -> None:
    u = units(blue=("inactive", None, 0), green=("active", NEW, 2))
    assert plan(u, GREEN_NEW, [101, 102])["action"] == "none"
    assert plan(u, GREEN_NEW, [1, 101, 102])["action"] == "finish"  # enablement differs
    assert plan(u, BLUE_OLD, [101, 102])["action"] == "finish"  # record differs
    assert plan(u, GREEN_NEW, [101, 102], intent={"to": {}})["action"] == "finish"
    stale = {**u, 102: {**u[102], "config_ok": False}}
    assert plan(stale, GREEN_NEW, [101, 102])["action"] == "switch"  # config changed


def test_a_partly_ready_new_color_is_restarted_not_trusted() -> None:
    u = units(blue=("active", OLD, 2), green=("active", NEW, 1))
    p = plan(u, BLUE_OLD, [1, 2])
    assert (p["action"], p["new"], p["stop_first"]) == ("switch", "green", [101, 102])


def test_prune_keeps_the_newest_and_every_linked_release() -> None:
    rels = [
        {"dir": f"/r/v{n}", "installed_at": f"2026-01-0{n}T00:00:00Z", "complete": True}
        for n in range(1, 6)
    ]
    assert state.prune(rels, 3, set()) == ["/r/v1", "/r/v2"]
    assert state.prune(rels, 3, {"/r/v1"}) == ["/r/v2"]
    assert state.prune(rels, 0, set()) == []


def test_after_a_switch_the_links_the_target_and_the_release_before_it_stay() -> None:
    """Blue runs v1 (record v1, previous v2), green links to v2; a switch of green to v3
    keeps v1 (blue's links, the new previous) and v3, and lets v2 go."""
    u = units(blue=("active", OLD, 2), green=("inactive", None, 0))
    for i in (1, 2):
        u[i]["link"] = "/r/v1"
    for i in (101, 102):
        u[i]["link"] = "/r/v2"
    rec = {
        "color": "blue",
        "release": {"digest": OLD, "dir": "/r/v1"},
        "previous": {"digest": "c" * 64, "dir": "/r/v2"},
    }
    target = {"digest": NEW, "dir": "/r/v3"}
    p = plan(u, rec, [1, 2])
    assert state.after_switch(u, rec, target, p) == {"/r/v1", "/r/v3"}
    # without a switch: every link, the record's release and previous
    assert state.after_switch(u, rec, None, None) == {"/r/v1", "/r/v2"}


@pytest.mark.parametrize("recorded", [BLUE_OLD, GREEN_NEW], ids=["record blue", "record green"])
def test_a_running_color_whose_ready_does_not_answer_is_still_never_stopped_first(
    recorded: dict[str, Any],
) -> None:
    """Only green runs, and its /ready did not answer (a loaded host, a 3 s timeout): it
    may well serve, so it is the old color, stopped only after the new one passed its
    gates, never first."""
    u = units(blue=("inactive", None, 0), green=("active", OLD, 0))
    p = plan(u, recorded, [101, 102])
    assert (p["old"], p["new"]) == ("green", "blue"), p
    assert p["stop_first"] == [] and p["stop_after"] == [101, 102], p


# --------------------------------------------------------------------------- canary, file_sd

CONFIG = {"1": "a a", "2": "a a", "101": "b b", "102": "b b"}


def test_the_plan_names_the_new_instances_their_config_and_the_old_ready_ones() -> None:
    u = units(blue=("active", OLD, 2), green=("inactive", None, 0))
    p = state.plan(u, BLUE_OLD, {}, [1, 2], 2, OFFSETS, layout.MAX_PER_COLOR, TARGET, {}, CONFIG)
    assert (p["instances"], p["canary_old"], p["canary_prior"]) == ([101, 102], [1, 2], None)
    # the id follows the new color's files only
    other = {**CONFIG, "1": "x x"}
    assert state.config_id(other, [101, 102]) == p["config_id"]
    assert state.config_id({**CONFIG, "101": "x x"}, [101, 102]) != p["config_id"]
    first = plan(units(blue=("inactive", None, 0), green=("inactive", None, 0)))
    assert first["canary_old"] == []  # nothing serves: nothing to compare with


@pytest.mark.parametrize("prior", ["pending", "passed", "failed"])
def test_an_interrupted_canary_of_the_same_target_is_carried_over(prior: str) -> None:
    """Killed during the canary, after its verdict or before the abort: the re-run sees
    the new color ready on the target (finish) and must know what the canary said."""
    u = units(blue=("active", OLD, 2), green=("active", NEW, 2))
    config = state.config_id(CONFIG, [101, 102])
    intent = {"to": {"color": "green", "release": TARGET, "config": config}}
    intent["canary"] = {"state": prior}
    p = state.plan(
        u, BLUE_OLD, intent, [1, 2], 2, OFFSETS, layout.MAX_PER_COLOR, TARGET, {}, CONFIG
    )
    assert (p["action"], p["canary_prior"], p["canary_old"]) == ("finish", prior, [1, 2])
    # another release, or the same release with other settings: a new deploy
    other_release = {**intent, "to": {**intent["to"], "release": {"digest": "c" * 64}}}
    other_config = {**intent, "to": {**intent["to"], "config": "0" * 40}}
    for stale in (other_release, other_config):
        got = state.plan(
            u, BLUE_OLD, stale, [1, 2], 2, OFFSETS, layout.MAX_PER_COLOR, TARGET, {}, CONFIG
        )
        assert got["canary_prior"] is None


def test_file_sd_lists_both_colors_during_the_overlap_then_the_one_that_runs() -> None:
    u = units(blue=("active", OLD, 2), green=("inactive", None, 0))
    p = plan(u, BLUE_OLD, [1, 2])
    sd = state.file_sd(
        u, p, TARGET, {OLD: "v1"}, OFFSETS, layout.MAX_PER_COLOR, "127.0.0.1", 9000, "web1"
    )
    assert [e["targets"] for e in sd["overlap"]] == [
        ["127.0.0.1:9001"],
        ["127.0.0.1:9002"],
        ["127.0.0.1:9101"],
        ["127.0.0.1:9102"],
    ]
    assert sd["overlap"][0]["labels"] == {
        "color": "blue",
        "sockact_instance": "1",
        "release": "v1",
        "host": "web1",
    }
    assert [e["labels"]["release"] for e in sd["after"]] == ["v2", "v2"]
    assert [e["labels"]["color"] for e in sd["after"]] == ["green", "green"]
    assert [e["labels"]["sockact_instance"] for e in sd["aborted"]] == ["1", "2"]
    # IPv6 admin address in brackets; a first deploy has nothing besides the new color
    first = units(blue=("inactive", None, 0), green=("inactive", None, 0))
    sd = state.file_sd(
        first,
        plan(first),
        TARGET,
        {},
        OFFSETS,
        layout.MAX_PER_COLOR,
        "::1",
        9000,
        "web1",
    )
    assert [e["targets"] for e in sd["overlap"]] == [["[::1]:9001"], ["[::1]:9002"]]
    assert sd["aborted"] == []


# --------------------------------------------------------------------------- abort

V1_DIR = "/opt/api/releases/v1-aaaaaaaaaaaa"
RELEASES = [
    {"dir": V1_DIR, "label": "v1", "digest": OLD, "wheels": ["a.whl"], "complete": True},
    {**TARGET, "wheels": ["b.whl"], "complete": True},
]
#: what the interrupted run wrote: green named, v1 as the previous release
GREEN_RECORDED = {
    **GREEN_NEW,
    "previous": BLUE_OLD["release"],
    "listen": "reuseport",
    "port": 8080,
}


def linked(u: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Blue's links point at v1, green's at the target."""
    for i, unit in u.items():
        unit["link"] = V1_DIR if i < 100 else TARGET["dir"]
    return u


def full_plan(
    u: dict[int, dict[str, Any]], record: dict[str, Any], enabled: list[int]
) -> dict[str, Any]:
    result: dict[str, Any] = state.plan(
        u, record, {}, enabled, 2, OFFSETS, layout.MAX_PER_COLOR, TARGET, {}, CONFIG, RELEASES
    )
    return result


@pytest.mark.parametrize(
    "enabled", [[101, 102], [1, 2]], ids=["killed after the flip", "killed before the flip"]
)
def test_an_abort_of_a_finish_that_finds_the_new_color_recorded_names_the_old_again(
    enabled: list[int],
) -> None:
    """Killed once the record named green, before blue stopped; the re-run's verify or
    canary fails: green stops, so the record and the enablement must name blue again
    (blue's release from its links), or they would name a stopped color."""
    u = linked(units(blue=("active", OLD, 2), green=("active", NEW, 2)))
    p = full_plan(u, GREEN_RECORDED, enabled)
    assert (p["action"], p["old"], p["new"]) == ("finish", "blue", "green")
    abort = p["abort"]
    assert abort["stops"] is True
    assert abort["record"] == {
        "color": "blue",
        "instances": [1, 2],
        "release": {"label": "v1", "digest": OLD, "dir": V1_DIR, "wheels": ["a.whl"]},
        "previous": TARGET,
        "listen": "reuseport",
        "port": 8080,
    }
    assert (abort["enable"], abort["disable"]) == (
        ([1, 2], [101, 102]) if enabled == [101, 102] else ([], [])
    )


def test_an_abort_of_a_finish_that_finds_the_old_color_recorded_changes_no_record() -> None:
    u = linked(units(blue=("active", OLD, 2), green=("active", NEW, 2)))
    p = full_plan(u, BLUE_OLD, [1, 2])
    assert p["action"] == "finish"
    assert p["abort"] == {
        "stops": True,
        "record": None,
        "enable": [],
        "disable": [],
        "restore_intent": False,
    }


def test_an_abort_of_a_switch_under_a_record_naming_the_new_color_names_the_serving_one() -> None:
    """Issue 10's state (the record names green, blue serves) and the switch to green
    fails: green stops, the record names blue, the color that serves."""
    u = linked(units(blue=("active", OLD, 2), green=("inactive", None, 0)))
    lie = {**GREEN_RECORDED, "release": BLUE_OLD["release"], "previous": None}
    p = full_plan(u, lie, [101, 102])
    assert (p["action"], p["old"], p["new"]) == ("switch", "blue", "green")
    abort = p["abort"]
    assert abort["stops"] is True
    assert abort["record"]["color"] == "blue" and abort["record"]["release"]["dir"] == V1_DIR
    assert (abort["enable"], abort["disable"]) == ([1, 2], [101, 102])


def test_a_new_color_that_alone_serves_is_kept_and_becomes_the_enabled_one() -> None:
    """The old color runs but answers no /ready (it drains): the recorded new color is
    all that serves, so an abort keeps it, and the enablement follows the record."""
    u = linked(units(blue=("deactivating", OLD, 0), green=("active", NEW, 2)))
    p = full_plan(u, GREEN_RECORDED, [1, 2])
    assert p["action"] == "finish"
    assert p["abort"] == {
        "stops": False,
        "record": None,
        "enable": [101, 102],
        "disable": [1, 2],
        "restore_intent": False,
    }


def test_the_release_of_a_color_comes_from_its_links_then_its_digest() -> None:
    u = linked(units(blue=("active", OLD, 2), green=("inactive", None, 0)))
    assert state.release_of(u, [1, 2], RELEASES)["dir"] == V1_DIR
    # the same content under two labels: the link decides
    relabelled = {**RELEASES[0], "dir": "/opt/api/releases/v1b-aaaaaaaaaaaa", "label": "v1b"}
    assert state.release_of(u, [1, 2], [relabelled, *RELEASES])["label"] == "v1"
    unlinked = {i: {**x, "link": None} for i, x in u.items()}
    assert state.release_of(unlinked, [1, 2], RELEASES)["dir"] == V1_DIR
    assert state.release_of(unlinked, [1, 2], RELEASES[1:]) is None


# --------------------------------------------------------------------------- secrets


def test_the_config_id_never_depends_on_the_app_environment() -> None:
    """The id is shown (-v) and written to the intent: the .env checksum (a secret's
    digest) must not go into it; the settings' checksums do."""
    ident = state.config_id(CONFIG, [101, 102])
    assert state.config_id({**CONFIG, "101": "b e2"}, [101, 102]) == ident
    assert state.config_id({**CONFIG, "101": "t2 b"}, [101, 102]) != ident


def test_an_interrupted_canary_is_not_carried_over_to_other_environment_files() -> None:
    """Without the .env in the id, the units say whether the environment files on the
    host are this run's: an interrupted canary of another environment is not this one's."""
    u = units(blue=("active", OLD, 2), green=("active", NEW, 2))
    config = state.config_id(CONFIG, [101, 102])
    intent = {"to": {"release": TARGET, "config": config}, "canary": {"state": "passed"}}
    other_env = {**u, 101: {**u[101], "config_ok": False}}
    args: tuple[Any, ...] = (
        BLUE_OLD,
        intent,
        [1, 2],
        2,
        OFFSETS,
        layout.MAX_PER_COLOR,
        TARGET,
        {},
        CONFIG,
    )
    assert state.plan(u, *args)["canary_prior"] == "passed"
    assert state.plan(other_env, *args)["canary_prior"] is None


def test_step_times_of_the_switch_line() -> None:
    """The role's 'Say how long the switch took' line (filter_plugins/sockact_switch.py)."""
    spec = importlib.util.spec_from_file_location(
        "sockact_switch", MODULE.parents[1] / "filter_plugins" / "sockact_switch.py"
    )
    assert spec and spec.loader
    switch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(switch)
    assert switch.seconds("0:00:03.123456") == 3.12
    assert switch.seconds("1:01:00.5") == 3660.5
    assert switch.seconds("") == 0.0 and switch.seconds(None) == 0.0
    steps = [["start", "0:00:01.5"], ["canary", ""], ["stop of the old color", "0:00:00.25"]]
    assert switch.steps(steps) == " (start 1.5 s, stop of the old color 0.2 s)"
    assert switch.steps([["start", ""]]) == ""


# ------------------------------------------------------------------- a failed canary's color

#: R2: the release of an interrupted run whose canary failed (or never finished), kept
#: running by its abort because nothing else answered /ready; the target (v2 above) is R3
R2 = "c" * 64
R2_RELEASE = {"label": "r2", "digest": R2, "dir": "/opt/api/releases/r2-cccccccccccc"}
R2_RELEASES = [*RELEASES, {**R2_RELEASE, "wheels": ["c.whl"], "complete": True}]
#: the record of a run killed once it named green R2, before blue stopped
GREEN_R2 = {
    "color": "green",
    "instances": [101, 102],
    "release": R2_RELEASE,
    "previous": BLUE_OLD["release"],
}


#: the abort of a switch from a failed canary's color that alone serves: the new color
#: stopped, the failed one neither recorded nor enabled, the intent found written back
LEAVE_THE_FAILED_COLOR_ALONE: dict[str, Any] = {
    "stops": True,
    "record": None,
    "enable": [],
    "disable": [],
    "restore_intent": True,
}


def r2_intent(canary: str, release: dict[str, Any] = R2_RELEASE) -> dict[str, Any]:
    return {
        "action": "finish",
        "from": {"color": "blue", "release": BLUE_OLD["release"]},
        "to": {"color": "green", "release": release, "config": "0" * 40},
        "canary": {"state": canary},
    }


def r2_units(blue: tuple[str, str | None, int], green_ready: int = 2) -> dict[int, dict[str, Any]]:
    """Green runs R2, blue as given; links: blue v1, green R2."""
    u = units(blue=blue, green=("active", R2, green_ready))
    for i, unit in u.items():
        unit["link"] = V1_DIR if i < 100 else R2_RELEASE["dir"]
    return u


def r2_plan(
    u: dict[int, dict[str, Any]],
    record: dict[str, Any],
    intent: dict[str, Any],
    target: dict[str, Any] = TARGET,
) -> dict[str, Any]:
    enabled = [int(i) for i in record.get("instances", [])]
    result: dict[str, Any] = state.plan(
        u,
        record,
        intent,
        enabled,
        2,
        OFFSETS,
        layout.MAX_PER_COLOR,
        target,
        {OLD: "v1", R2: "r2"},
        CONFIG,
        R2_RELEASES,
        host="web1",
        name="api",
    )
    return result


@pytest.mark.parametrize("canary", ["failed", "pending"])
@pytest.mark.parametrize("blue_ready", [1, 2])
@pytest.mark.parametrize("record", [BLUE_OLD, GREEN_R2], ids=["record blue", "record green"])
def test_a_color_whose_canary_failed_is_never_the_old_color_while_the_other_serves(
    canary: str, blue_ready: int, record: dict[str, Any]
) -> None:
    """Green runs R2 (its canary failed, or was killed before its verdict), blue R1 with
    fewer (or as many) instances ready: blue is the old color, green's units are stopped
    first (capacity, never the only serving color), and an abort of the R3 switch names
    blue R1 again, never the failed release."""
    p = r2_plan(r2_units(("active", OLD, blue_ready)), record, r2_intent(canary))
    assert (p["action"], p["old"], p["new"]) == ("switch", "blue", "green"), p
    assert (p["stop_first"], p["stop_after"]) == ([101, 102], [1, 2])
    assert p["canary_old"] == [1, 2][:blue_ready]
    assert p["tainted"] == {"green": canary}
    verdict = "failed" if canary == "failed" else "was not finished"
    # the plan says why, unless blue was the old color anyway (a tie, the record names it)
    if blue_ready == 1 or record is GREEN_R2:
        assert any(f"canary {verdict}" in n and "blue (" in n for n in p["notes"]), p["notes"]
    abort = p["abort"]
    assert abort["stops"] is True and abort["restore_intent"] is False
    if record is GREEN_R2:
        assert abort["record"]["color"] == "blue"
        assert abort["record"]["release"]["digest"] == OLD
        assert (abort["enable"], abort["disable"]) == ([1, 2], [101, 102])
    else:
        assert abort["record"] is None


@pytest.mark.parametrize("canary", ["failed", "pending"])
def test_a_failed_canary_color_beside_a_color_that_answers_no_ready_is_refused(
    canary: str,
) -> None:
    """Green runs R2 (canary failed or never finished), blue runs R1 but answers no /ready
    (a loaded host): which color serves is unknown, so no plan is made at all."""
    u = r2_units(("active", OLD, 0))
    with pytest.raises(state.Refused) as caught:
        r2_plan(u, BLUE_OLD, r2_intent(canary))
    msg = str(caught.value)
    assert "\n" not in msg
    verdict = "failed" if canary == "failed" else "was not finished"
    assert msg.startswith("refusing to switch web1 to v2 bbbbbbbbbbbb: green runs r2 cccccccccccc")
    assert f"whose canary {verdict}" in msg
    assert "blue (v1 aaaaaaaaaaaa) runs 2 instances but none answers /ready" in msg
    assert "re-run once blue answers /ready, or stop one color first" in msg
    assert "(api@1 api@2, or api@101 api@102)" in msg


def test_the_target_itself_or_a_passed_canary_is_no_failed_color() -> None:
    """The same host state as the refusal, but the interrupted run's release is this
    run's target (its canary state is carried over instead: canary_prior) or its canary
    passed: the ready color is the old one, as before."""
    u = r2_units(("active", OLD, 0))
    for intent in (r2_intent("failed", TARGET), r2_intent("passed")):
        p = r2_plan(u, BLUE_OLD, intent)
        assert (p["action"], p["old"], p["new"], p["tainted"]) == ("switch", "green", "blue", {})
    # the target on green, partly ready, running this run's settings (config_ok), which
    # are not the ones its canary judged: restarted in blue, blue not stopped first...
    u = units(blue=("active", OLD, 0), green=("active", NEW, 1))
    for i in (101, 102):
        u[i]["config_ok"] = True
    p = r2_plan(u, BLUE_OLD, r2_intent("failed", TARGET))
    assert (p["old"], p["new"], p["tainted"]) == ("green", "blue", {})
    # ...but with the judged settings the verdict stands: refused like any failed color
    judged = r2_intent("failed", TARGET)
    judged["to"]["config"] = state.config_id(CONFIG, [101, 102])
    with pytest.raises(state.Refused):
        r2_plan(u, BLUE_OLD, judged)


@pytest.mark.parametrize("canary", ["failed", "pending"])
def test_a_failed_release_deployed_again_with_other_settings_is_not_the_old_color(
    canary: str,
) -> None:
    """Green runs R2 with the settings its canary judged (failed or unfinished); the
    operator deploys R2 again with other settings while blue v1 has 1 of 2 ready. R2 is
    the target, yet green is no finish (other settings) and must not be the old color:
    blue is, green is stopped first and restarted, and an abort never names green. Before,
    a target's own taint was dropped: green was old, blue's only ready instance was
    stopped first, and an abort recorded and enabled green R2."""
    u = r2_units(("active", OLD, 1))
    for i in (101, 102):
        u[i]["config_ok"] = False  # the judged settings, not this run's
    p = r2_plan(u, BLUE_OLD, r2_intent(canary), R2_RELEASE)
    assert (p["action"], p["old"], p["new"]) == ("switch", "blue", "green"), p
    assert p["tainted"] == {"green": canary}
    assert p["stop_first"] == [101, 102]
    assert p["abort"]["record"] is None and p["abort"]["enable"] == []


@pytest.mark.parametrize("canary", ["failed", "pending"])
def test_a_failed_color_is_known_by_its_links_when_nothing_answers_ready(canary: str) -> None:
    """No instance answers /ready or /release (a loaded host): the old color is the one
    with most running units. Green runs R2 (known from its instance links), blue v1 runs
    one: which serves is unknown, so the plan is refused. Before, a failed color was
    known only by ready instances: green was old, and an abort recorded and enabled it."""
    u = r2_units(("inactive", None, 0), green_ready=0)
    for i in (101, 102):
        u[i]["digest"] = None
    u[1].update(active_state="active", digest=None)
    with pytest.raises(state.Refused) as caught:
        r2_plan(u, BLUE_OLD, r2_intent(canary))
    assert "green runs r2 cccccccccccc" in str(caught.value)


def test_a_carried_canary_keeps_its_window_and_reasons() -> None:
    """R2's unfinished canary (20 s) carried over by a killed switch to R3: deploying R2
    again with the same settings runs it for its own window, even with this run's canary
    turned off; a failed one keeps its reasons."""
    config = state.config_id(CONFIG, [101, 102])
    for canary, extra in (("pending", {"seconds": 20}), ("failed", {"reasons": ["5xx 5%"]})):
        intent = {**r2_intent(canary), "canary": {"state": canary, **extra}}
        intent["to"]["config"] = config
        carried = {**r3_intent("failed"), "tainted": state.taints(intent)}
        kept = state.canary_kept(carried, R2_RELEASE, config)
        assert kept is not None and kept["state"] == canary
        assert {k: kept[k] for k in extra} == extra


@pytest.mark.parametrize("canary", ["failed", "pending"])
@pytest.mark.parametrize("record", [BLUE_OLD, GREEN_R2], ids=["record blue", "record green"])
def test_a_failed_canary_color_that_alone_runs_stays_old_but_is_never_recorded_by_an_abort(
    canary: str, record: dict[str, Any]
) -> None:
    """Nothing runs besides green R2: it stays the old color (it is all that serves), the
    plan says the canary's baseline is that release, and an abort of R3 neither records nor
    enables it: the intent the run found (with R2's verdict) is written back."""
    p = r2_plan(r2_units(("inactive", None, 0)), record, r2_intent(canary))
    assert (p["action"], p["old"], p["new"]) == ("switch", "green", "blue")
    assert (p["stop_first"], p["stop_after"]) == ([], [101, 102])
    assert any("nothing else serves" in n and "baseline" in n for n in p["notes"]), p["notes"]
    assert p["abort"] == LEAVE_THE_FAILED_COLOR_ALONE


# ------------------------------------------------------------------- a taint carried over

#: the R2 entry a switch to R3 (the target) writes into its intent while R2 runs
R2_TAINT = {"label": "r2", "digest": R2, "config": "0" * 40}


def r3_intent(canary: str, r3_canary: str | None = None) -> dict[str, Any]:
    """The intent of a switch to R3 (the target) that found R2's ``canary`` state and was
    killed in turn: its own canary ``r3_canary``, R2's carried over."""
    return {
        "action": "switch",
        "from": {"color": "green", "release": BLUE_OLD["release"]},
        # the settings this run writes for blue (the test's CONFIG)
        "to": {"color": "blue", "release": TARGET, "config": state.config_id(CONFIG, [1, 2])},
        "canary": {"state": r3_canary} if r3_canary else None,
        "tainted": [{**R2_TAINT, "state": canary}],
    }


@pytest.mark.parametrize("canary", ["failed", "pending"])
def test_a_switch_carries_the_taints_it_found_into_its_own_intent(canary: str) -> None:
    """The plan of R3 names R2 (the interrupted run's release whose canary failed or never
    finished) as a release to carry over into R3's intent (tasks/switch.yml), whether R2
    came from the intent's own target or was carried over by an earlier run; the target
    and a passed canary are never carried."""
    expect = [{**R2_TAINT, "state": canary}]
    for intent in (r2_intent(canary), r3_intent(canary), r3_intent(canary, "pending")):
        p = r2_plan(r2_units(("inactive", None, 0)), BLUE_OLD, intent)
        assert p["tainted_releases"] == expect, intent
        assert p["tainted"] == {"green": canary}
    assert state.taints(r2_intent("passed")) == []
    # this run's own target with this run's settings: its own intent speaks for it
    same = r2_intent(canary, TARGET)
    same["to"]["config"] = state.config_id(CONFIG, [1, 2])
    assert r2_plan(r2_units(("inactive", None, 0)), BLUE_OLD, same)["tainted_releases"] == []
    # the interrupted run's own target first, one entry per release, junk ignored
    v4 = {"label": "v4", "digest": "d" * 64}
    both = {
        **r2_intent("pending"),
        "tainted": [
            {**R2_TAINT, "state": "failed"},
            {**v4, "state": "failed"},
            {**v4, "state": "passed"},
            "junk",
            {"state": "failed"},
        ],
    }
    assert state.taints(both) == [
        {**R2_TAINT, "state": "pending"},
        {**v4, "state": "failed"},
    ]


@pytest.mark.parametrize("canary", ["failed", "pending"])
@pytest.mark.parametrize("r3", ["not started", "ready"])
def test_a_killed_switch_away_from_a_tainted_release_that_alone_serves_keeps_its_taint(
    canary: str, r3: str
) -> None:
    """Green R2 (canary failed or never finished) was all that served; the switch to R3
    wrote its intent (R2 carried over) and was killed, before blue started or once it
    was ready. The re-run of R3 still knows R2: it is not recorded or enabled by an abort,
    and the intent (with R2's verdict) is written back. Before, the re-run read only the
    intent's own target (R3), and its abort named green R2 in the record."""
    blue = ("inactive", None, 0) if r3 == "not started" else ("active", NEW, 2)
    u = r2_units(blue)
    for i in (1, 2):
        u[i]["link"] = TARGET["dir"] if r3 == "ready" else V1_DIR
        u[i]["config_ok"] = True
    p = r2_plan(u, BLUE_OLD, r3_intent(canary, None if r3 == "not started" else "pending"))
    expect = ("switch", "green", "blue") if r3 == "not started" else ("finish", "green", "blue")
    assert (p["action"], p["old"], p["new"]) == expect, p
    # blue, ready on R3 with the settings of R3's own unfinished canary, is judged too
    r3_judged = {} if r3 == "not started" else {"blue": "pending"}
    assert p["tainted"] == {"green": canary, **r3_judged}
    assert p["abort"] == LEAVE_THE_FAILED_COLOR_ALONE


@pytest.mark.parametrize("canary", ["failed", "pending"])
def test_a_carried_taint_beside_a_color_that_answers_no_ready_is_refused(canary: str) -> None:
    """The same refusal as for the interrupted run's own release: green runs R2, known
    from the carried list only, blue runs but answers no /ready."""
    with pytest.raises(state.Refused) as caught:
        r2_plan(r2_units(("active", OLD, 0)), BLUE_OLD, r3_intent(canary))
    verdict = "failed" if canary == "failed" else "was not finished"
    assert f"green runs r2 cccccccccccc, whose canary {verdict}" in str(caught.value)


@pytest.mark.parametrize("canary", ["failed", "pending"])
def test_a_release_known_only_as_carried_over_is_never_promoted_past_its_canary(
    canary: str,
) -> None:
    """Green still runs R2 (its canary failed or never finished), carried over in the
    intent of a later, interrupted switch to R3. The operator deploys R2 again with the
    same settings: green is ready on that target (finish), and the carried state holds
    as it would from R2's own intent (failed: rolled back at once; pending: compared
    before anything is promoted). Other settings are a new deploy. Before, only the
    intent's own target counted, and the finish promoted R2 without a canary."""
    u = r2_units(("active", OLD, 2))
    for i in (101, 102):
        u[i]["config_ok"] = True
    config = state.config_id(CONFIG, [101, 102])
    carried = {**r3_intent(canary), "tainted": [{**R2_TAINT, "config": config, "state": canary}]}
    args: tuple[Any, ...] = (
        BLUE_OLD,
        carried,
        [1, 2],
        2,
        OFFSETS,
        layout.MAX_PER_COLOR,
        R2_RELEASE,
        {},
        CONFIG,
    )
    p = state.plan(u, *args)
    assert (p["action"], p["new"], p["canary_prior"]) == ("finish", "green", canary), p
    assert p["canary_kept"]["state"] == canary
    assert "carried over by a later switch" in p["canary_kept"]["reasons"][0]
    other = {**carried, "tainted": [{**R2_TAINT, "config": "1" * 40, "state": canary}]}
    assert state.plan(u, BLUE_OLD, other, *args[2:])["canary_prior"] is None


def test_the_switch_writes_the_taints_into_its_intent() -> None:
    """tasks/switch.yml composes the intent with the plan's tainted_releases: a check of
    the wiring only (that the expression renders and carries them is shown on a lab host
    by tests/ansible/test_interrupt.py, whose killed runs read the intent back)."""
    text = (MODULE.parents[1] / "tasks/switch.yml").read_text()
    task = text.split("- name: Compose the intent of this switch\n", 1)[1].split("\n- name:")[0]
    assert '\n      tainted: "{{ _sockact_plan.tainted_releases }}"\n' in task, task
