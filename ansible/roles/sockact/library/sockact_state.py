#!/usr/bin/python3
"""Read what a sockact host really runs, and plan the next step of a switch from it.

Ansible module of the sockact role. It changes nothing (check mode is the same run). It
reads the deploy record and the intent of an interrupted run, the installed releases,
and for every instance of both colors (and any other active one): its unit state, whether
it is enabled, whether its admin ``/ready`` answers 200, the release digest its admin
``/release`` reports, its instance link, and whether its config files are what this run
would write. The plan comes from that real state, never from the record alone:

* a color whose every instance is ready, runs the target release and has the target
  config is the new color: nothing is started; what is left is to verify it, write the
  record, flip the enablement and stop whatever else runs (``finish``), or nothing at
  all when record, enablement and units already agree (``none``);
* otherwise the color that serves (the most ready instances; on a tie the recorded one)
  is the old color and the other one is started afresh (``switch``): its leftovers are
  stopped first, which is safe because they serve less than the old color does;
* except a color running a release whose canary failed or never finished in the
  interrupted run the intent tells of, or in one before it whose intent that run carried
  over (``tainted``: known by the digest its instances report, else by their links; this
  run's target too, where its instances do not run this run's settings or this run's
  settings are the judged ones; a switch writes them into its own intent,
  ``tainted_releases``, so that they outlive an interrupted switch away from them): the other
  color is the old one when it has a ready instance (the tainted one is stopped first:
  capacity lost, never the only serving color); when the other color runs but answers no
  ``/ready`` the module fails (:class:`Refused`), changing nothing; when nothing else
  runs the tainted color stays old, and an abort neither records nor enables it and
  writes the intent back (``restore_intent``).

A color is only ever stopped by the role after the other one is ready and verified, so
the only color that serves is never stopped. The plan also says what a failure of the new
color (start, verify, canary) does (``abort``): it stops the new color only while the old
one serves, and then makes the record and the enablement name the old color again when
they name the new one (a re-run of a run killed after its record), so that after an abort
exactly one color serves and record, enablement and units agree.

The app's environment (``.env``) may hold secrets: its checksum comes in O(expected_config)
(a ``no_log`` option) and leaves this module only as the yes/no of ``config_ok``; the
``config_id`` of the plan (written to the intent, shown with ``-v``) is made of the
settings files' checksums alone.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

DOCUMENTATION = r"""
module: sockact_state
short_description: Read a sockact host's real state and plan a blue/green switch
description:
  - Reads the deploy record, the intent of an interrupted run, the installed releases and,
    per instance, its unit state, enablement, admin /ready and /release, instance link and
    config checksums; plans the switch to O(target) from that state. Changes nothing.
options:
  layout:
    description: The host layout, as C(sockact layout) prints it.
    type: dict
    required: true
  count:
    description: Instances per color.
    type: int
    required: true
  admin_host:
    description: Address the admin servers listen on.
    type: str
    default: 127.0.0.1
  target:
    description: The release to run, C({label, digest, dir}); no plan without it.
    type: dict
  expected_config:
    description: Per instance, C("<sha1 of .toml> <sha1 of .env>") this run would write.
      Never logged (the .env may hold secrets).
    type: dict
  check:
    description: Instances whose admin /check (one request to the app) is also read.
    type: list
    elements: int
    default: []
  expect_digest:
    description: With O(check), the release digest each checked instance must report.
    type: str
  main_url:
    description: With O(check), a URL of the main port that must answer 200 (a real request
      through the shared port, after every instance is checked).
    type: str
  host_label:
    description: How messages name this host (the inventory name); default its node name.
    type: str
    default: ""
  keep:
    description: Releases to keep; the result lists the ones beyond that which may go.
    type: int
    default: 0
  timeout:
    description: Seconds per admin request.
    type: float
    default: 3.0
"""

RETURN = r"""
state:
  description: >-
    record, intent, releases, units (per instance: unit state, enablement,
    ready, digest, link, config_ok and env_ok, whether its settings and environment files,
    or its environment file alone, are what this run writes), enabled instances.
  type: dict
  returned: always
plan:
  description: >-
    action (none, finish, switch), old and new color, what to start and stop,
    the new color's instances, the id of the new color's settings (config_id: their
    .toml files, never the .env), the canary state an interrupted run of the same target
    left in its intent, its own or carried over (canary_prior: pending, passed, failed or
    null; canary_kept: that canary, state and figures, as the new intent keeps it), the old color's
    ready instances (canary_old), the colors that serve a release whose canary failed or
    never finished in an interrupted run (tainted, color -> pending or failed), those
    releases other than the target (tainted_releases, each label, digest, state and config: the
    switch writes them into its intent as C(tainted)) and what a
    failure of the new color does (abort: stops, whether the new color is stopped; enable
    and disable, the enablement flip back; record, the record to write first, naming the
    old color, or null; restore_intent, whether the intent this run found is written
    back instead of removed).
  type: dict
  returned: when target is given
targets:
  description: >-
    Prometheus file_sd entries of the host's admin endpoints while both colors
    run (overlap), once the old color stopped (after) and once the new one stopped
    (aborted), each C({targets, labels}) with labels color, sockact_instance, release,
    host.
  type: dict
  returned: when target is given
now:
  description: >-
    the host's clock (seconds since the epoch).
  type: int
  returned: always
prune:
  description: >-
    release directories that may be removed once the planned switch is done
    (beyond keep, linked by no instance, neither the release recorded then nor the one
    before it).
  type: list
  returned: always
unverified:
  description: >-
    one line per checked instance that is not active, ready, answering /check
    below 400 and running O(expect_digest).
  type: list
  returned: always
"""

COLORS = ("blue", "green")
RUNNING = ("active", "activating", "deactivating", "reloading", "refreshing")


# --------------------------------------------------------------------------- pure helpers


def instances_of(color: str, count: int, offsets: dict[str, int]) -> list[int]:
    return list(range(offsets[color] + 1, offsets[color] + 1 + count))


def color_of(instance: int, offsets: dict[str, int], max_per_color: int) -> str | None:
    for color, offset in offsets.items():
        if offset < instance <= offset + max_per_color:
            return color
    return None


def color_offsets(layout: dict[str, Any]) -> dict[str, int]:
    """The layout's color offsets (``sockact layout`` JSON) as ``{color: offset}``."""
    return {str(k): int(v) for k, v in layout["color_offsets"].items()}


def other(color: str) -> str:
    return "green" if color == "blue" else "blue"


def _short(release: dict[str, Any] | None) -> str:
    if not release or not release.get("digest"):
        return "nothing"
    return f"{release.get('label') or '?'} {str(release['digest'])[:12]}"


def config_id(expected_config: dict[str, str], instances: list[int]) -> str:
    """One id for the settings files this run writes for ``instances`` (the new color):
    their ``.toml`` checksums only. The ``.env`` checksum (the second word of each
    ``expected_config`` value) stays out: the id is shown and written to the intent, and
    the environment may hold secrets; whether the ``.env`` files are this run's is the
    units' ``config_ok`` (see :func:`canary_prior`)."""
    mine = {str(i): (expected_config.get(str(i), "").split() or [""])[0] for i in instances}
    return hashlib.sha1(
        json.dumps(mine, sort_keys=True).encode(), usedforsecurity=False
    ).hexdigest()


#: the states of a canary in an intent
CANARY_STATES = ("pending", "passed", "failed")
#: the states that taint a release: its canary failed, or never finished
TAINTED_STATES = ("failed", "pending")


def canary_kept(
    intent: dict[str, Any],
    target: dict[str, Any],
    config: str,
    new_units: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The canary (``state``: pending, passed, failed; with its figures where known) that
    the intent of an interrupted run left for this same target (release, settings in
    ``config``, and the environment files on the host being this run's: no unit of
    ``new_units`` with ``config_ok`` False), or None. Either that run's own canary (its
    ``to`` release), or one carried over in its ``tainted`` list (that run found this
    release's canary failed or unfinished, and switched away from it): a release is never
    promoted past a verdict because another switch came in between."""
    if any(u.get("config_ok") is False for u in new_units or []):
        return None
    to = intent.get("to") or {}
    if (to.get("release") or {}).get("digest") == target.get("digest"):
        if to.get("config") != config:
            return None
        canary = intent.get("canary") or {}
        return dict(canary) if canary.get("state") in CANARY_STATES else None
    for t in intent.get("tainted") or []:
        if not isinstance(t, dict) or t.get("digest") != target.get("digest"):
            continue
        if t.get("config") == config and t.get("state") in TAINTED_STATES:
            why = f"its canary {t['state']} in an interrupted run (carried over by a later switch)"
            kept: dict[str, Any] = {"state": t["state"], "reasons": t.get("reasons") or [why]}
            if isinstance(t.get("seconds"), (int, float)):
                kept["seconds"] = t["seconds"]
            return kept
    return None


def canary_prior(
    intent: dict[str, Any],
    target: dict[str, Any],
    config: str,
    new_units: list[dict[str, Any]] | None = None,
) -> str | None:
    """The state of :func:`canary_kept` (pending, passed, failed), or None."""
    kept = canary_kept(intent, target, config, new_units)
    return None if kept is None else str(kept["state"])


class Refused(ValueError):
    """A state in which no plan is safe: the module fails with this one line, changing
    nothing."""


def taints(intent: dict[str, Any]) -> list[dict[str, Any]]:
    """The releases whose canary failed or never finished (``pending``) in an interrupted
    run, as far as the intent knows them: that run's own target (its ``to`` release and
    ``canary``), then those it carried over from the intent it found (its ``tainted``
    list, which a switch writes from this); each ``{label, digest, state, config}`` (config:
    the id of the settings it ran with; ``seconds`` and ``reasons`` of its canary where
    known), one per release and settings. A switch writes them into its own intent, so
    that a run interrupted while a tainted release is all that serves still knows it, and
    a deploy of it again with the same settings finds its verdict (:func:`canary_kept`);
    the intent goes once a switch completed, when only its target runs."""
    to = intent.get("to") or {}
    canary = intent.get("canary") or {}
    found = [{**(to.get("release") or {}), **canary, "config": to.get("config")}]
    found += [t for t in intent.get("tainted") or [] if isinstance(t, dict)]
    out: list[dict[str, Any]] = []
    # the first word on a release and settings stands: the intent's own canary (passed
    # too) over what it carried over
    seen: set[tuple[Any, Any]] = set()
    for t in found:
        digest = t.get("digest")
        key = (digest, t.get("config"))
        if key in seen:
            continue
        seen.add(key)
        if not (isinstance(digest, str) and digest and t.get("state") in TAINTED_STATES):
            continue
        entry: dict[str, Any] = {
            "label": str(t.get("label") or "?"),
            "digest": digest,
            "state": t["state"],
        }
        if isinstance(t.get("config"), str):
            entry["config"] = t["config"]
        if isinstance(t.get("seconds"), (int, float)):
            entry["seconds"] = t["seconds"]
        if isinstance(t.get("reasons"), list):
            entry["reasons"] = [str(r) for r in t["reasons"]]
        out.append(entry)
    return out


def _release_of_unit(unit: dict[str, Any], releases: list[dict[str, Any]]) -> str | None:
    """The digest ``unit`` runs: as it reports it, else its instance link's release (an
    instance too busy to answer /release still runs what its link pointed at)."""
    if unit.get("digest"):
        return str(unit["digest"])
    for r in releases:
        if r.get("dir") and r["dir"] == unit.get("link") and r.get("digest"):
            return str(r["digest"])
    return None


def _tainted_colors(
    units: dict[int, dict[str, Any]],
    running: dict[str, list[int]],
    known: list[dict[str, Any]],
    target: dict[str, Any],
    configs: dict[str, str],
    releases: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """``{color: taint}`` of each color with a running instance on a release of ``known``
    (its digest as reported, else from its link). This run's own target is a taint only
    where the verdict applies: an instance that does not run this run's settings
    (``config_ok`` not True), or this run's settings for that color (``configs``) being
    the ones the canary judged."""
    out = {}
    for c in COLORS:
        for i in running[c]:
            unit = units.get(i, {})
            runs = _release_of_unit(unit, releases)
            for t in known:
                if t["digest"] != runs:
                    continue
                if t["digest"] == target.get("digest"):
                    fresh = unit.get("config_ok") is True and t.get("config") != configs.get(c)
                    if fresh:
                        continue
                out.setdefault(c, t)
    return out


def plan(
    units: dict[int, dict[str, Any]],
    record: dict[str, Any],
    intent: dict[str, Any],
    enabled: list[int],
    count: int,
    offsets: dict[str, int],
    max_per_color: int,
    target: dict[str, Any],
    labels: dict[str, str] | None = None,
    expected_config: dict[str, str] | None = None,
    releases: list[dict[str, Any]] | None = None,
    host: str = "the host",
    name: str = "api",
) -> dict[str, Any]:
    """What to do next, from the real state of the units (see the module docstring).

    ``units[i]`` has ``active_state``, ``ready`` (bool), ``digest`` (str or None),
    ``config_ok`` (bool or None: None when not checked) and ``link`` (the release dir its
    instance link points at, or None); ``releases`` the installed ones (:func:`_releases`).
    Raises :class:`Refused` (naming ``host`` and the ``name@`` units) when no plan is safe.
    """
    configs = {c: config_id(expected_config or {}, instances_of(c, count, offsets)) for c in COLORS}
    decided = _plan(
        units,
        record,
        intent,
        enabled,
        count,
        offsets,
        max_per_color,
        target,
        labels or {},
        host,
        name,
        configs,
        releases or [],
    )
    new, old = decided["new"], decided["old"]
    decided["instances"] = instances_of(new, count, offsets)
    decided["config_id"] = configs[new]  # the new color's instances: decided["instances"]
    kept = canary_kept(
        intent, target, decided["config_id"], [units.get(i, {}) for i in decided["instances"]]
    )
    decided["canary_kept"] = kept
    # this run's own canary (the intent's `to`) speaks for its target with its settings
    decided["tainted_releases"] = [
        t
        for t in decided["tainted_releases"]
        if (t["digest"], t.get("config")) != (target.get("digest"), decided["config_id"])
    ]
    decided["canary_prior"] = None if kept is None else kept["state"]
    decided["canary_old"] = (
        [i for i in instances_of(old, count, offsets) if units.get(i, {}).get("ready")]
        if old
        else []
    )
    decided["abort"] = abort_plan(units, record, decided, enabled, count, offsets, releases or [])
    return decided


def release_of(
    units: dict[int, dict[str, Any]], instances: list[int], releases: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The installed release that ``instances`` run, as a record names one (label, digest,
    dir, wheels): from their instance links (ready instances first), checked against the
    digest they report; else the first complete release of a reported digest."""
    complete = [r for r in releases if r.get("complete")]
    mine = [
        units.get(i, {}) for i in sorted(instances, key=lambda i: not units.get(i, {}).get("ready"))
    ]
    by_link = [
        r
        for u in mine
        for r in complete
        if r["dir"] == u.get("link") and u.get("digest") in (None, r.get("digest"))
    ]
    by_digest = [
        r for u in mine for r in complete if u.get("digest") and r.get("digest") == u["digest"]
    ]
    for r in by_link + by_digest:
        return {k: r.get(k) for k in ("label", "digest", "dir", "wheels")}
    return None


def abort_plan(
    units: dict[int, dict[str, Any]],
    record: dict[str, Any],
    decided: dict[str, Any],
    enabled: list[int],
    count: int,
    offsets: dict[str, int],
    releases: list[dict[str, Any]],
) -> dict[str, Any]:
    """What a failure of the new color (start, verify, canary) does, so that afterwards
    exactly one color serves and the record, the enablement and the units agree.

    The new color is stopped unless it is all that serves: in a ``switch`` (it was started
    by this run and never served alone), or when an instance of what runs besides it is
    ready. Then the old color is the one that stays, and when the record names another
    color (a ``finish`` after a run killed once its record was written) it is rewritten
    naming the old color and the release its instances run (``previous``: the release the
    record named, as after a rollback), and the old color is enabled again, the others
    disabled: ``record`` (without listen, port, deployed_at: the role adds them),
    ``enable``, ``disable``. A new color left running (nothing else serves) keeps a record
    that names it, and is then the enabled color.

    An old color that stays while it runs a release whose canary failed or never finished
    (``tainted``: the plan kept it only because nothing else serves) is never recorded or
    enabled by an abort, and the intent this run found (which holds that canary's state) is
    written back instead of removed (``restore_intent``): the host is left as the run found
    it, and every later run still knows that release's verdict.
    """
    new, old = decided["new"], decided["old"]
    stops = decided["action"] == "switch" or any(
        units.get(i, {}).get("ready") for i in decided["stop_after"]
    )
    rec_color = record.get("color")
    out: dict[str, Any] = {
        "stops": stops,
        "record": None,
        "enable": [],
        "disable": [],
        "restore_intent": False,
    }
    keep = old if stops else new if rec_color == new else None
    if keep is None:
        return out
    if stops and keep in decided.get("tainted", {}):
        out["restore_intent"] = True
        return out
    want = instances_of(keep, count, offsets)
    out["enable"] = [i for i in want if i not in enabled]
    out["disable"] = sorted(i for i in enabled if i not in want)
    if stops and rec_color != keep:
        release = release_of(units, want, releases)
        if release is not None:
            before = record.get("release") or {}
            previous = (
                record.get("previous") if before.get("digest") == release["digest"] else before
            )
            out["record"] = {
                "color": keep,
                "instances": want,
                "release": release,
                "previous": previous or None,
                **{k: record[k] for k in ("listen", "port") if k in record},
            }
    return out


def _plan(
    units: dict[int, dict[str, Any]],
    record: dict[str, Any],
    intent: dict[str, Any],
    enabled: list[int],
    count: int,
    offsets: dict[str, int],
    max_per_color: int,
    target: dict[str, Any],
    labels: dict[str, str],
    host: str,
    name: str,
    configs: dict[str, str],
    releases: list[dict[str, Any]],
) -> dict[str, Any]:
    want = {c: instances_of(c, count, offsets) for c in COLORS}
    running: dict[str, list[int]] = {c: [] for c in COLORS}
    for i, u in units.items():
        c = color_of(i, offsets, max_per_color)
        if c and u.get("active_state") in RUNNING:
            running[c].append(i)
    ready = {c: [i for i in want[c] if units.get(i, {}).get("ready")] for c in COLORS}
    digest = target["digest"]
    known = taints(intent)
    taint_of = _tainted_colors(units, running, known, target, configs, releases)
    bad = {c: t["state"] for c, t in taint_of.items()}
    on_target = {
        c: all(
            units.get(i, {}).get("ready")
            and units.get(i, {}).get("digest") == digest
            and units.get(i, {}).get("config_ok") is not False
            for i in want[c]
        )
        for c in COLORS
    }
    rec_color = record.get("color") if record.get("color") in COLORS else None

    def describe(c: str | None) -> str:
        if c is None:
            return "nothing"
        digests = {units.get(i, {}).get("digest") for i in ready[c]} - {None}
        runs = ", ".join(f"{labels.get(d, '?')} {d[:12]}" for d in sorted(str(d) for d in digests))
        return f"{c} ({runs or 'no release'}, {len(ready[c])}/{count} ready)"

    notes = []
    if intent:
        notes.append(
            "found the intent of an interrupted run: "
            f"{(intent.get('from') or {}).get('color') or 'nothing'} -> "
            f"{(intent.get('to') or {}).get('color')} "
            f"({_short((intent.get('to') or {}).get('release'))}), "
            f"started {intent.get('started_at', '?')}"
        )
    candidates = [c for c in COLORS if on_target[c]]
    if candidates:
        new = rec_color if rec_color in candidates else candidates[0]
        old = other(new)
        stop_after = sorted(running[old] + [i for i in running[new] if i not in want[new]])
        disable = sorted(i for i in enabled if i not in want[new])
        enable = sorted(i for i in want[new] if i not in enabled)
        rec_release = record.get("release") or {}
        record_ok = (
            rec_color == new
            and rec_release.get("digest") == digest
            and rec_release.get("dir") == target.get("dir")
            and [int(i) for i in record.get("instances", [])] == want[new]
        )
        done = record_ok and not stop_after and not disable and not enable and not intent
        action = "none" if done else "finish"
        return {
            "action": action,
            "old": old if running[old] else None,
            "new": new,
            "start": [],
            "stop_first": [],
            "stop_after": stop_after,
            "enable": enable,
            "disable": disable,
            "record_ok": record_ok,
            "tainted": bad,
            "tainted_releases": known,
            "notes": notes,
            "summary": (
                f"{describe(new)} already runs {_short(target)}: nothing to do"
                if done
                else f"{describe(new)} already runs {_short(target)}; to do: verify it, "
                + ("write the record, " if not record_ok else "")
                + ("flip the enablement, " if enable or disable else "")
                + (f"stop {', '.join(map(str, stop_after))}" if stop_after else "nothing to stop")
            ),
        }
    # the old color: the one that serves most; on a tie the recorded one. When no /ready
    # answered (a loaded host, a slow admin server) a running unit may still serve: then
    # the color with most running units is the old one, so that stop_first never holds
    # the only units that run
    served = {c: len(ready[c]) for c in COLORS}
    if max(served.values()) == 0:
        served = {c: len(running[c]) for c in COLORS}
    if max(served.values()) > 0:
        best = max(served.values())
        tied = [c for c in COLORS if served[c] == best]
        old: str | None = rec_color if rec_color in tied else tied[0]
    else:
        old = None
    if old is not None and old in bad:
        # the color that serves most runs a release whose canary failed (or never
        # finished): it is no baseline for a canary and no color to fall back to
        alt = other(old)
        verdict = "failed" if bad[old] == "failed" else "was not finished"
        why = f"{old} runs {_short(taint_of[old])}, whose canary {verdict} in an interrupted run"
        if alt in bad:
            notes.append(
                f"{why}, as does {alt}: {old} stays the old color, so the canary's baseline "
                "is that release"
            )
        elif ready[alt]:
            notes.append(
                f"{why}: {alt} ({len(ready[alt])}/{count} ready) is kept as the old color "
                f"and {old} is stopped first"
            )
            old = alt
        elif running[alt]:
            runs = sorted({str(d) for i in running[alt] if (d := units.get(i, {}).get("digest"))})
            what = ", ".join(f"{labels.get(d, '?')} {d[:12]}" for d in runs)
            raise Refused(
                f"refusing to switch {host} to {_short(target)}: {why}, and {alt} "
                f"({what or 'release unknown'}) runs {len(running[alt])} instance"
                f"{'s' if len(running[alt]) > 1 else ''} but none answers /ready, so "
                f"which color serves is not known; nothing changed: re-run once {alt} "
                "answers /ready, or stop one color first "
                f"({' '.join(f'{name}@{i}' for i in sorted(running[alt]))}, or "
                f"{' '.join(f'{name}@{i}' for i in sorted(running[old]))})"
            )
        else:
            notes.append(
                f"{why}, and nothing else serves: it stays the old color, so the canary's "
                "baseline is that release"
            )
    new = other(old) if old is not None else other(rec_color) if rec_color else "blue"
    stop_first = sorted(running[new])
    stop_after = sorted(i for c in COLORS for i in running[c] if c != new)
    # the new color's leftovers never serve (or run, when nothing is ready) more than the
    # old color, so stopping them first loses nothing; or they run a release whose canary
    # failed or never finished while the old color has a ready instance: stopping them
    # first loses capacity, but never the only color that serves
    assert old is None or served[new] <= served[old] or (new in bad and bool(ready[old]))
    return {
        "action": "switch",
        "old": old,
        "new": new,
        "start": want[new],
        "stop_first": stop_first,
        "stop_after": stop_after,
        "enable": want[new],
        "disable": sorted(i for i in enabled if i not in want[new]),
        "record_ok": False,
        "tainted": bad,
        "tainted_releases": known,
        "notes": notes,
        "summary": f"{describe(old)} -> {new} ({_short(target)}, {count} instances): switch",
    }


def unverified(
    units: dict[int, dict[str, Any]], check: list[int], digest: str | None, name: str, host: str
) -> list[str]:
    """What keeps each checked instance from passing the gates, one line each."""
    out = []
    for i in check:
        u = units.get(i, {})
        wrong = []
        if u.get("active_state") != "active":
            wrong.append(f"{u.get('active_state') or 'unknown'} ({u.get('sub_state', '')})")
        elif not u.get("ready"):
            wrong.append("/ready is not 200")
        status = u.get("check_status")
        if u.get("active_state") == "active" and not (status and 200 <= status < 400):
            wrong.append(f"/check answered {status}: {u.get('check_body', '')}")
        if digest is not None and u.get("digest") != digest:
            wrong.append(f"runs release {u.get('digest')} ({u.get('prefix') or '?'})")
        if wrong:
            out.append(f"{name}@{i} on {host}: " + ", ".join(wrong))
    return out


def file_sd(
    units: dict[int, dict[str, Any]],
    planned: dict[str, Any],
    target: dict[str, Any],
    labels: dict[str, str],
    offsets: dict[str, int],
    max_per_color: int,
    admin_host: str,
    admin_port_base: int,
    host: str,
) -> dict[str, list[dict[str, Any]]]:
    """Prometheus file_sd entries (docs/metrics.md): one per instance, its admin address
    and the labels color, sockact_instance, release (the label of what it runs) and host.

    ``overlap``: the instances that run besides the new color, and the new color;
    ``after``: the new color alone; ``aborted``: the others alone (the new one stopped).
    """
    address = f"[{admin_host}]" if ":" in admin_host else admin_host

    def entry(i: int, release: str) -> dict[str, Any]:
        return {
            "targets": [f"{address}:{admin_port_base + i}"],
            "labels": {
                "color": color_of(i, offsets, max_per_color) or "",
                "sockact_instance": str(i),
                "release": release,
                "host": host,
            },
        }

    new = [entry(i, str(target.get("label") or "")) for i in planned["instances"]]
    others = sorted(
        i
        for i in planned["stop_after"]
        if i not in planned["instances"] and units.get(i, {}).get("active_state") in RUNNING
    )
    old = [entry(i, labels.get(str(units.get(i, {}).get("digest")), "")) for i in others]
    return {
        "overlap": sorted(old + new, key=lambda e: int(e["labels"]["sockact_instance"])),
        "after": new,
        "aborted": old,
    }


def after_switch(
    units: dict[int, dict[str, Any]],
    record: dict[str, Any],
    target: dict[str, Any] | None,
    planned: dict[str, Any] | None,
) -> set[str]:
    """The release dirs that must stay once the planned switch is done (or now, without
    one): every instance link, the recorded release and the one before it."""
    started = set(planned["start"]) if planned else set()
    links = {u["link"] for i, u in units.items() if u.get("link") and i not in started}
    current, previous = record.get("release"), record.get("previous")
    if target:
        links.add(target.get("dir", ""))
        if not isinstance(current, dict) or current.get("digest") != target.get("digest"):
            previous = current
        current = target
    for rel in (current, previous):
        if isinstance(rel, dict) and rel.get("dir"):
            links.add(rel["dir"])
    return links


def prune(releases: list[dict[str, Any]], keep: int, protected: set[str]) -> list[str]:
    """Release dirs beyond the ``keep`` newest complete ones, except ``protected`` ones."""
    if keep <= 0:
        return []
    complete = sorted(
        (r for r in releases if r.get("complete")),
        key=lambda r: (str(r.get("installed_at") or ""), r["dir"]),
        reverse=True,
    )
    kept = {r["dir"] for r in complete[:keep]}
    return sorted(
        r["dir"]
        for r in releases
        if r["dir"] not in kept and r["dir"] not in protected and r.get("complete")
    )


# --------------------------------------------------------------------------- host side


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _sha1(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha1(fh.read(), usedforsecurity=False).hexdigest()
    except OSError:
        return "missing"


#: direct connections only: the host's http_proxy must not carry a check of its own ports
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float) -> tuple[int, dict[str, Any]]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, ValueError):
        return 0, {}
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = {}
    return status, doc if isinstance(doc, dict) else {}


def _systemctl_show(units: list[str]) -> list[dict[str, str]]:
    props = "ActiveState,SubState,MainPID,Result,ExecMainStatus,UnitFileState"
    out = subprocess.run(
        ["systemctl", "show", f"--property={props}", "--", *units],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*out.splitlines(), ""]:
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    return blocks


def _active_instances(name: str) -> list[int]:
    out = subprocess.run(
        [
            "systemctl",
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "--full",
            f"{name}@*.service",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = []
    for line in out.splitlines():
        unit = line.split()[0] if line.split() else ""
        inst = unit[len(name) + 1 : -len(".service")]
        if unit.startswith(f"{name}@") and inst.isdigit():
            found.append(int(inst))
    return found


def _enabled_instances(name: str, unit_dir: str) -> list[int]:
    found = set()
    for path in glob.glob(os.path.join(unit_dir, "*.wants", f"{name}@*.service")):
        inst = os.path.basename(path)[len(name) + 1 : -len(".service")]
        if inst.isdigit():
            found.add(int(inst))
    return sorted(found)


def _releases(layout: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    root = layout["releases_dir"]
    try:
        names = sorted(os.listdir(root))
    except OSError:
        names = []
    for entry in names:
        path = os.path.join(root, entry)
        if not os.path.isdir(path):
            continue
        meta = _read_json(os.path.join(path, layout["release_meta_file"]))
        out.append(
            {
                "dir": path,
                "name": entry,
                "label": meta.get("label"),
                "digest": meta.get("digest"),
                "installed_at": meta.get("installed_at"),
                "wheels": meta.get("wheels") or [],
                "complete": bool(meta.get("digest")),
            }
        )
    return out


def read_state(
    layout: dict[str, Any],
    count: int,
    admin_host: str,
    expected_config: dict[str, str],
    timeout: float,
    check: list[int] | None = None,
) -> dict[str, Any]:
    name = layout["name"]
    offsets = color_offsets(layout)
    instances = set(_active_instances(name))
    enabled = _enabled_instances(name, layout["unit_dir"])
    for c in COLORS:
        instances.update(instances_of(c, count, offsets))
    instances.update(enabled)
    ordered = sorted(instances)
    shown = _systemctl_show([f"{name}@{i}.service" for i in ordered])
    units: dict[int, dict[str, Any]] = {}
    host = f"[{admin_host}]" if ":" in admin_host else admin_host
    for i, props in zip(ordered, shown, strict=False):
        link = os.path.join(layout["instances_dir"], str(i))
        u: dict[str, Any] = {
            "instance": i,
            "color": color_of(i, offsets, int(layout["max_per_color"])),
            "active_state": props.get("ActiveState", ""),
            "sub_state": props.get("SubState", ""),
            "main_pid": int(props.get("MainPID", "0") or 0),
            "result": props.get("Result", ""),
            "exec_main_status": props.get("ExecMainStatus", ""),
            "enabled": i in enabled,
            "link": os.path.realpath(link) if os.path.islink(link) else None,
            "ready": False,
            "digest": None,
            "config_ok": None,
            "check_status": None,
        }
        if u["active_state"] in RUNNING:
            base = f"http://{host}:{int(layout['admin_port_base']) + i}"
            status, _ = _get(f"{base}/ready", timeout)
            u["ready"] = status == 200
            status, doc = _get(f"{base}/release", timeout)
            if status == 200 and isinstance(doc.get("digest"), str):
                u["digest"] = doc["digest"]
                u["prefix"] = doc.get("prefix")
            if i in (check or []):
                status, doc = _get(f"{base}/check", max(timeout, 30.0))
                u["check_status"] = status
                u["check_body"] = str(doc.get("body", doc))[:300]
        want = expected_config.get(str(i))
        if want is not None:
            toml = _sha1(os.path.join(layout["instance_config_dir"], f"{i}.toml"))
            env = _sha1(os.path.join(layout["instance_config_dir"], f"{i}.env"))
            u["config_ok"] = f"{toml} {env}" == want
            # yes/no only: the checksum of the environment never leaves this module
            u["env_ok"] = env == [*want.split(), "", ""][1]
        units[i] = u
    return {
        "record": _read_json(layout["deploy_record"]),
        "intent": _read_json(layout["deploy_intent"]),
        "releases": _releases(layout),
        "units": units,
        "enabled": enabled,
    }


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "layout": {"type": "dict", "required": True},
            "count": {"type": "int", "required": True},
            "admin_host": {"type": "str", "default": "127.0.0.1"},
            "target": {"type": "dict"},
            # per instance "<sha1 .toml> <sha1 .env>": the .env may hold secrets
            "expected_config": {"type": "dict", "default": {}, "no_log": True},
            "keep": {"type": "int", "default": 0},
            "check": {"type": "list", "elements": "int", "default": []},
            "expect_digest": {"type": "str"},
            "host_label": {"type": "str", "default": ""},
            "main_url": {"type": "str"},
            "timeout": {"type": "float", "default": 3.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    layout = p["layout"]
    state = read_state(
        layout, p["count"], p["admin_host"], p["expected_config"] or {}, p["timeout"], p["check"]
    )
    labels = {r["digest"]: r["label"] for r in state["releases"] if r["digest"]}
    result: dict[str, Any] = {"changed": False, "state": state, "now": int(time.time())}
    units = state["units"]
    record = state["record"]
    host = p["host_label"] or os.uname().nodename
    if p["target"]:
        try:
            result["plan"] = plan(
                units,
                record,
                state["intent"],
                state["enabled"],
                p["count"],
                color_offsets(layout),
                int(layout["max_per_color"]),
                p["target"],
                labels,
                p["expected_config"] or {},
                state["releases"],
                host=host,
                name=layout["name"],
            )
        except Refused as exc:
            module.fail_json(msg=str(exc))
        # where the role reaches each instance's admin server (the canary's addresses)
        address = f"[{p['admin_host']}]" if ":" in p["admin_host"] else p["admin_host"]
        result["plan"]["admin"] = {
            str(i): f"{address}:{int(layout['admin_port_base']) + i}"
            for c in COLORS
            for i in instances_of(c, p["count"], color_offsets(layout))
        }
        result["targets"] = file_sd(
            units,
            result["plan"],
            p["target"],
            labels,
            color_offsets(layout),
            int(layout["max_per_color"]),
            p["admin_host"],
            int(layout["admin_port_base"]),
            host,
        )
    protected = after_switch(units, record, p["target"], result.get("plan"))
    result["prune"] = prune(state["releases"], p["keep"], protected)
    result["unverified"] = unverified(units, p["check"], p["expect_digest"], layout["name"], host)
    if p["main_url"]:
        status, _ = _get(p["main_url"], max(p["timeout"], 10.0))
        result["main_status"] = status
        if status != 200:
            result["unverified"].append(f"{p['main_url']} on {host} answered {status or 'nothing'}")
    # JSON keys are strings: say so, rather than let Ansible convert them silently
    state["units"] = {str(i): u for i, u in units.items()}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
