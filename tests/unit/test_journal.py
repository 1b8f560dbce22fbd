"""sockact.controller.journal and the summary of sockact.controller.rollout, on real data.

tests/unit/data/deploy/ holds what ./deploy fetched from two lab hosts (minimal Debian 12
image, systemd 252) after a v1 -> v2 deploy under load on 2026-11-27: each host's
``journalctl -o json -u api@*.service`` and its deploy record, verbatim; a failed start on
one of them (an instance whose warm-up raises: DEMO_FAIL=1); and ansible-playbook's
output of that deploy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sockact.controller import rollout
from sockact.controller.journal import (
    Entry,
    format_table,
    host_switch,
    lives,
    parse_entries,
)
from sockact.controller.rollout import AnsiblePhase, progress_line, summarize
from sockact.errors import BadInput

DATA = Path(__file__).parent / "data" / "deploy"
T0 = 1795779505.631896  # when the v2 deploy began on the controller


def journal(name: str) -> list[Entry]:
    return parse_entries((DATA / name).read_text().splitlines())


def record(host: str) -> dict[str, object]:
    doc = json.loads((DATA / f"{host}.deploy.json").read_text())
    assert isinstance(doc, dict)
    return doc


def test_entries_are_about_the_instance_units_in_time_order() -> None:
    entries = journal("sockact-1.journal.jsonl")
    assert len(entries) == 28
    assert {e.instance for e in entries} == {1, 2, 101, 102}
    assert [e.time for e in entries] == sorted(e.time for e in entries)
    first = entries[0]
    assert (first.unit, first.message_id, first.phase) == (
        "api@101.service",
        "7d4958e842da4a758f6c1cdc7b36dcc5",
        "",
    )
    assert first.time == pytest.approx(1795779605.504615)
    ours = [e for e in entries if e.from_sockact]
    assert {e.phase for e in ours} == {"starting", "warming", "ready", "draining", "stopped"}
    # sockact's entries are the unit's own; PID 1's are about it
    assert all(e.pid != 1 for e in ours)
    assert all(e.pid == 1 for e in entries if e.message_id)


def test_each_instance_life_from_a_real_journal() -> None:
    by = {x.instance: x for x in lives(journal("sockact-1.journal.jsonl"))}
    assert sorted(by) == [1, 2, 101, 102]
    new = by[101]
    assert new.start == pytest.approx(1795779605.504615)
    assert new.warmup_s == 1.41
    assert new.ready == pytest.approx(1795779608.305751)  # sockact's "serving on"
    assert new.start_to_ready_s == pytest.approx(2.801136)
    assert (new.stopping, new.stopped, new.failure) == (None, None, "")
    assert by[102].warmup_s == 1.52
    old = by[1]
    assert old.start is None and old.ready is None  # started by the v1 deploy, before
    assert old.stopping == pytest.approx(1795779615.479736)
    assert old.drain_start == pytest.approx(1795779615.480157)
    assert (old.drain_s, old.cut, old.drain_timed_out) == (1.40, 0, False)
    assert old.stopped == pytest.approx(1795779617.033076)  # systemd: Stopped
    assert by[2].drain_s == 1.39


def test_a_host_switch_from_its_journal_and_record() -> None:
    h = host_switch("sockact-1", journal("sockact-1.journal.jsonl"), record("sockact-1"), 0)
    assert (h.old_release, h.new_release, h.state) == ("v1", "v2", "ok")
    assert [x.instance for x in h.new] == [101, 102]
    assert sorted(x.instance for x in h.old) == [1, 2]
    assert h.warmup_s == 1.52  # the longer of the two warm-ups
    # the first new start (systemd) -> the last new READY (sockact)
    assert h.start_to_ready_s == pytest.approx(1795779608.954060 - 1795779605.504615)
    # -> the last old instance stopped (systemd)
    assert h.switch_s == pytest.approx(1795779617.036855 - 1795779605.504615)
    assert (h.drain_s, h.cut, h.failed_requests) == (1.40, 0, 0)
    doc = h.to_dict()
    assert doc["switch_s"] == 11.532 and doc["new"][0]["unit"] == "api@101.service"


def test_timeline_events_of_a_host() -> None:
    h = host_switch("sockact-2", journal("sockact-2.journal.jsonl"), record("sockact-2"))
    events = h.events(T0)
    labels = [e["label"] for e in events]
    assert labels.count("new: start -> READY") == 2 and labels.count("old: stopped") == 2
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    assert all(e["host"] == "sockact-2" for e in events)
    warm = next(e for e in events if e["label"] == "new: start -> READY")
    assert warm["duration"] > 1.0 and warm["t"] > 0  # a span, on the controller's t0
    drain = next(e for e in events if e["label"] == "old: drain -> stopped")
    assert drain["duration"] == pytest.approx(
        next(x for x in h.old if x.unit == drain["unit"]).stopped - (drain["t"] + T0), abs=1e-3
    )


def test_a_failed_start_from_a_real_journal() -> None:
    entries = journal("sockact-1.failed-start.journal.jsonl")
    (life,) = lives(entries)
    assert life.instance == 103 and life.ready is None
    assert life.failure == (
        "warm-up of sockact_demo:create_app failed: RuntimeError: DEMO_FAIL=1: this "
        "release's warm-up fails on purpose"
    )
    assert life.stopped is not None  # systemd: Failed with result 'exit-code'
    # the record still names what serves: the switch did not happen
    h = host_switch("sockact-1", entries, record("sockact-1"))
    assert (h.old_release, h.new_release, h.state) == ("v2", None, "FAILED")
    table = format_table([h])
    assert "v2 -> ?" in table and "FAILED" in table
    assert "api@103.service: warm-up of sockact_demo:create_app failed" in table
    assert [e["label"] for e in h.events()][-1] == "FAILED"


def test_the_table_of_both_hosts() -> None:
    hosts = [
        host_switch(h, journal(f"{h}.journal.jsonl"), record(h), n)
        for h, n in (("sockact-1", 0), ("sockact-2", 3))
    ]
    lines = format_table(hosts).splitlines()
    assert lines[0].split() == [
        "host",
        "release",
        "warm-up",
        "start->READY",
        "switch",
        "drain",
        "cut",
        "failed",
        "state",
    ]
    assert lines[1].split() == [
        "sockact-1", "v1", "->", "v2", "1.52", "s", "3.45", "s", "11.53", "s", "1.40", "s",
        "0", "0", "ok",
    ]  # fmt: skip
    assert lines[2].split()[:4] == ["sockact-2", "v1", "->", "v2"]
    assert lines[2].split()[-3:] == ["0", "3", "ok"]


def test_no_switch_and_bad_lines() -> None:
    h = host_switch("h", [], None)
    assert h.state == "no switch" and h.switch_s is None
    assert "- -> -" in format_table([h])
    with pytest.raises(BadInput, match="journal line 2: not JSON"):
        parse_entries(["", "{nope"])
    with pytest.raises(BadInput, match="journal line 1: not a JSON object"):
        parse_entries(["[1]"])
    # a message journald keeps as bytes (not UTF-8) is a list of ints in JSON
    line = json.dumps(
        {
            "__REALTIME_TIMESTAMP": "1000000",
            "_SYSTEMD_UNIT": "api@3.service",
            "_PID": "7",
            "MESSAGE": list(b"caf\xe9"),
        }
    )
    (e,) = parse_entries([line, json.dumps({"_SYSTEMD_UNIT": "ssh.service"})])
    assert (e.instance, e.message, e.time) == (3, "caf\ufffd", 1.0)
    assert parse_entries([line], name="web") == []  # another unit name


def test_ansible_phase_follows_a_real_deploy() -> None:
    clock = iter(range(10_000))
    phase = AnsiblePhase(clock=lambda: float(next(clock)))
    assert phase.text == "starting"
    seen = []
    for line in (DATA / "ansible-deploy-v2.log").read_text().splitlines():
        phase.feed(line)
        seen.append(phase.text)
    assert "Preflight: Wait for the host to answer" in seen
    assert "Install [sockact-2, sockact-1]: Install every wheel of the release" in seen
    assert "Switch [sockact-1]: Stop the old color" in seen
    assert "Switch [sockact-2]: Stop the old color" in seen
    assert not any("localhost" in s for s in seen)  # "h -> localhost" is host h
    names = [name for _, name in phase.plays]
    assert names == [
        "Preflight every host before touching any",
        "Install the release on every host",
        "Switch blue/green, host by host",
        "Switch blue/green, host by host",
        "Clean up the controller",
        "",  # the recap
    ]
    assert phase.text.endswith(": recap")
    # not Ansible: its last line
    other = AnsiblePhase()
    other.feed("lab: booting sockact-1\n")
    assert other.text == "lab: booting sockact-1"


def test_progress_line() -> None:
    p = {
        "t": 12.0,
        "requests": 6000,
        "ok": 5998,
        "failed": 2,
        "failures": {"reset": 2},
        "versions": {"1.0.0": 4000, "2.0.0": 1998},
        "window": {
            "rps": 500.0,
            "p99_ms": 9.1,
            "max_ms": 14.0,
            "versions": {"2.0.0": 750, "1.0.0": 250},
        },
    }
    line = progress_line(75.2, "Switch [sockact-1]: Start the instances of green", p)
    assert line.startswith("  1:15  Switch [sockact-1]: Start the instances of green")
    assert "6,000 req    500/s FAILED 2 (reset 2)" in line
    assert "p99     9 ms max    14 ms" in line
    assert line.endswith("answered 1.0.0 25% 2.0.0 75%")
    assert progress_line(3, "x" * 100, None) == "  0:03  " + "x" * 53 + "..."


def test_summary_of_a_run_from_its_files(tmp_path: Path) -> None:
    """The journals and records are real; the probe report is cut to what the summary
    reads (the real one has 1,380 buckets)."""
    (tmp_path / "hosts").mkdir()
    for f in DATA.glob("sockact-?.*"):
        (tmp_path / "hosts" / f.name).write_bytes(f.read_bytes())
    urls = ["http://10.203.1.2:8080/", "http://10.203.2.2:8080/"]
    meta = {
        "label": "deploy v2",
        "log": "/tmp/run/ansible.log",
        "name": "api",
        "machine": "vm",
        "hosts": [
            {"name": f"sockact-{i}", "address": u[7:17], "url": u} for i, u in enumerate(urls, 1)
        ],
        "capacity": {"rps": 1000.0, "fraction": 0.25, "measured": True},
        "command_rc": 0,
        "command_s": 136.0,
        "command_t": [0.5, 136.5],
        "plays": [
            {"t": 0.6, "play": "Preflight every host before touching any"},
            {"t": 30.0, "play": "Install the release on every host"},
            {"t": 96.0, "play": "Switch blue/green, host by host"},
            {"t": 136.0, "play": ""},
        ],
    }
    (tmp_path / "rollout.json").write_text(json.dumps(meta))
    report = {
        "mode": "open",
        "rate": 250.0,
        "started_at": T0 - 0.5,
        "targets": urls,
        "total": 34500,
        "failed": 1,
        "failures": {"reset": 1, "refused": 0},
        "duration_s": 138.0,
        "latency_ms": {"p50": 2.0, "p99": 12.5, "max": 80.0},
        "late": 3,
        "send_lag_ms": {"p99": 1.0, "max": 12.0},
        "samples": [
            {"instance": "1", "version": "1.0.0", "count": 20000},
            {"instance": "101", "version": "2.0.0", "count": 14499},
        ],
        "buckets": [{"t": 120.0, "targets": [10, 10], "targets_failed": [0, 1]}],
    }
    (tmp_path / "probe.json").write_text(json.dumps(report))
    s = summarize(tmp_path, draw=False)
    assert s.requests == 34500 and s.failed == 1 and s.png is None
    assert [h.failed_requests for h in s.switches] == [0, 1]
    text = s.text
    assert text.startswith("deploy v2: 2 host(s), the command took 136.0 s (exit 0)")
    assert "open loop 250 req/s (25% of 1,000 req/s measured), 34,500 requests" in text
    assert "FAILED 1 (reset 1)" in text
    assert "answered by version: 1.0.0 20,000 (58%), 2.0.0 14,499 (42%)" in text
    assert "sockact-1  v1 -> v2" in text and "Ansible's output: /tmp/run/ansible.log" in text
    assert (tmp_path / "summary.txt").read_text() == text + "\n"
    events = json.loads((tmp_path / "events.json").read_text())
    plays = [e for e in events if e["host"] == rollout.PLAYS_LANE]
    assert [(e["label"], e["t"], e.get("duration")) for e in plays] == [
        ("play: Preflight", 0.6, 29.4),
        ("play: Install", 30.0, 66.0),
        ("play: Switch", 96.0, 40.0),
    ]
    assert {e["host"] for e in events} == {rollout.PLAYS_LANE, "sockact-1", "sockact-2"}


def test_figures_sockact_never_writes_are_ignored_not_a_crash() -> None:
    """A host's journal is data from elsewhere: "warm-up took 1.2.3 s" (another program
    logging with a PHASE field) is not sockact's line."""

    def entry(n: int, message: str) -> str:
        return json.dumps(
            {
                "__REALTIME_TIMESTAMP": str(1_000_000 * n),
                "_SYSTEMD_UNIT": "api@3.service",
                "_PID": "7",
                "PHASE": "serving",
                "MESSAGE": message,
            }
        )

    lines = [
        entry(1, "warm-up took 1.2.3 s"),
        entry(2, "drained in . s, 0 cut"),
        entry(3, "drain_timeout 5..0 s ran out: cut 2 connection(s)"),
        entry(4, "warm-up took 0.25 s"),
        entry(5, "drain_timeout 1e+03 s ran out: cut 2 connection(s)"),  # as :g writes it
    ]
    (life,) = lives(parse_entries(lines))
    assert (life.warmup_s, life.drain_s, life.cut_timeout) == (0.25, 1000.0, 2)
