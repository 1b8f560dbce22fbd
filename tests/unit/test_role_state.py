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
