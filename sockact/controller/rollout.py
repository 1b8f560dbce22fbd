"""Run a deploy under load and show it: a progress line every few seconds while it runs,
then a per-host table from the hosts' own journals, the whole run's figures, and a PNG.

``sockact rollout run`` (what ``./deploy`` uses for every Ansible run)::

    sockact rollout run --inventory inv.ini --out runs/1 --rate 50% -- \\
        ansible-playbook -i inv.ini ansible/deploy.yml -e sockact_release=v2 ...

1. measures the capacity of the inventory's hosts on the main port (a short closed-loop
   burst) and starts the probe in open loop at ``--rate`` (a fraction of it, or req/s);
2. runs the command with its output appended to the log file (``--log``, default
   ``OUT/ansible.log``) and prints one line every ``--every`` seconds: elapsed time, the
   Ansible play, host batch and task running, requests, failures by kind, latency, and
   the share answered by each version;
3. once it ended (and ``--tail`` seconds more of load), stops the probe, fetches every
   host's journal and deploy record (``ansible/journal.yml``), and writes into OUT:
   ``probe.json``, ``progress.jsonl``, ``hosts/<host>.journal.jsonl`` and ``.deploy.json``,
   ``events.json``, ``summary.txt`` (what it prints: the per-host table and the run's
   figures) and ``timeline.png`` (``sockact timeline``, needs ``sockact[plot]``; without
   it the summary says it was skipped).

``--rate none`` runs the command with the progress line and the log only (no load, no
journal). ``sockact rollout report OUT`` prints the summary of a finished run again from
its files (and redraws the PNG); each file is checked (:mod:`.jsonshape`) before anything
is written.

The command runs in a session of its own (:mod:`.child`): a stop signal to rollout or its
stdout's reader going away stops the command's process group and waits for it before
rollout exits (130, 141); after a stop no journal is read and no PNG drawn.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from sockact.controller.child import BROKEN_PIPE, Stops, run_command
from sockact.controller.httpwire import Target
from sockact.controller.journal import (
    TABLE_NOTES,
    HostSwitch,
    format_table,
    host_switch,
    parse_entries,
)
from sockact.controller.jsonshape import (
    ANY,
    INT,
    NUM,
    STR,
    ListOf,
    MapOf,
    Obj,
    Opt,
    Shape,
    ShapeError,
    TupleOf,
    check,
)
from sockact.controller.probe import Probe, capacity_of, measure_capacity, parse_rate
from sockact.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_COMMAND_FAILED,
    EXIT_FORCED,
    EXIT_PROBE_FAILED,
    BadInput,
    MissingExtra,
)

META: Final = "rollout.json"
#: an open-loop probe for a deploy stops by itself after this long at most
MAX_LOAD_S: Final = 6 * 3600.0


# -- the command's progress, from Ansible's output ---------------------------------------

_PLAY = re.compile(r"^PLAY \[(?P<name>.*)\] \**$")
_TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>.*)\] \**$")
_RESULT = re.compile(
    r"^(?:ok|changed|skipping|fatal|failed|included|unreachable): \[(?P<h>[^\]]+)\]"
)
_RECAP = re.compile(r"^PLAY RECAP \**$")


class AnsiblePhase:
    """Follows ``ansible-playbook``'s default output: the play, the hosts that answered in
    it (with ``serial``, the batch being switched), and the task running; and when each
    play began (``plays``: monotonic time, name), for the timeline's controller lane."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.play = ""
        self.task = ""
        self.hosts: list[str] = []
        self.plays: list[tuple[float, str]] = []
        self.lines = 0
        self.last = ""
        self._clock = clock
        self._lock = threading.Lock()

    def feed(self, line: str) -> None:
        line = line.rstrip()
        with self._lock:
            self.lines += 1
            if line.strip():
                self.last = " ".join(line.split())
            if m := _PLAY.match(line):
                self.play, self.task, self.hosts = m.group("name"), "", []
                self.plays.append((self._clock(), self.play))
            elif _RECAP.match(line):
                self.task, self.hosts = "recap", []
                self.plays.append((self._clock(), ""))
            elif m := _TASK.match(line):
                self.task = m.group("name")
            elif m := _RESULT.match(line):
                host = m.group("h").split(" -> ")[0]  # "h -> localhost": delegated
                if host not in self.hosts:
                    self.hosts.append(host)

    @property
    def text(self) -> str:
        """``Play [hosts]: task``, the play by its first word (Preflight, Install, Switch)."""
        with self._lock:
            if not self.play:  # not Ansible (yet): its last line says what it does
                return self.last or "starting"
            play = self.play.split()[0] if self.play.split() else "?"
            hosts = ""
            if self.hosts:
                shown = self.hosts if len(self.hosts) <= 2 else [f"{len(self.hosts)} hosts"]
                hosts = f" [{', '.join(shown)}]"
            task = self.task.removeprefix("sockact : ")
            return f"{play}{hosts}: {task or '...'}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


#: width of the phase in a progress line
PHASE_WIDTH: Final = 56


def progress_line(elapsed: float, phase: str, p: Mapping[str, Any] | None) -> str:
    """One line for a human: time, phase, and the probe's figures (``Probe.progress()``):
    requests so far and their rate, failures by kind, p99 and max latency of the last
    interval, and the share of its answers each version gave."""
    m, s = divmod(int(elapsed), 60)
    head = f"{m:3d}:{s:02d}  {_shorten(phase, PHASE_WIDTH)}"
    if p is None:
        return head
    w = p["window"]
    fails = ", ".join(f"{k} {n:,}" for k, n in p["failures"].items())
    failed = f"FAILED {p['failed']:,} ({fails})" if p["failed"] else "0 failed"
    wtotal = sum(w["versions"].values())
    share = (
        " ".join(f"{v} {100 * n / wtotal:.0f}%" for v, n in sorted(w["versions"].items()))
        if wtotal
        else "-"
    )
    return (
        f"{head.ljust(PHASE_WIDTH + 8)} | {p['requests']:>9,} req {w['rps']:>6,.0f}/s {failed}"
        f" | p99 {w['p99_ms']:>5.0f} ms max {w['max_ms']:>5.0f} ms | answered {share}"
    )


# -- hosts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """An inventory host and the URL the probe loads it on."""

    name: str
    address: str
    url: str


def _tool(name: str) -> str:
    """An Ansible program: beside this Python (the venv) first, then on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise BadInput(f"rollout: {name} not found (beside {sys.executable} or on PATH)")
    return found


def inventory_hosts(inventory: Path, group: str, port: int, path: str) -> list[Host]:
    """The hosts of ``group`` with their ``ansible_host`` (``ansible-inventory --list``)."""
    proc = subprocess.run(
        [_tool("ansible-inventory"), "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.split())[-300:]
        raise BadInput(f"rollout: cannot read inventory {inventory}: {tail}")
    try:
        inv = json.loads(proc.stdout)
    except ValueError:
        raise BadInput(f"rollout: ansible-inventory gave no JSON for {inventory}") from None
    hostvars = inv.get("_meta", {}).get("hostvars", {})
    hosts = []
    for name in _group_hosts(inv, group):
        address = str(hostvars.get(name, {}).get("ansible_host", name))
        hosts.append(Host(name, address, Target(address, port, path).url))
    if not hosts:
        raise BadInput(f"rollout: no hosts in group {group!r} of {inventory}")
    return hosts


def _group_hosts(inv: Mapping[str, Any], group: str) -> list[str]:
    node = inv.get(group, {})
    out = list(node.get("hosts", []))
    for child in node.get("children", []):
        out += [h for h in _group_hosts(inv, child) if h not in out]
    return out


# -- the run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    command: Sequence[str]
    out: Path
    log: Path
    label: str
    inventory: Path | None = None
    group: str = "api"
    port: int = 8080
    path: str = "/"
    name: str = "api"
    rate: str = "25%"
    capacity_seconds: float = 3.0
    every: float = 3.0
    tail: float = 2.0
    journal_playbook: Path | None = None


class _Screen:
    """rollout's lines on stdout. When stdout's reader went away, that is a stop (the
    command is stopped, exit 141) and nothing more is written; when stdout fails
    otherwise (a terminal that hung up), nothing more is written either."""

    def __init__(self, stops: Stops) -> None:
        self.stops = stops
        self.gone = False

    def say(self, text: str = "") -> None:
        if self.gone:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            self.gone = True
            self.stops.note_broken_pipe()
        except OSError:
            self.gone = True


def _make_dir(path: Path) -> None:
    """``mkdir -p``, with the right error for a file in the way (not "File exists")."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    path.mkdir(parents=True, exist_ok=True)


def _prepare(opts: RunOptions) -> IO[str]:
    """Check ``--out`` and ``--log`` before anything runs (bad input: exit 2, never a
    deploy half watched); return the log, open for appending, its header written."""
    out = opts.out
    if out.exists() and not out.is_dir():
        raise BadInput(f"rollout run: --out {out}: not a directory")
    try:
        _make_dir(out)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise BadInput(
            f"rollout run: --out {out}: cannot write in it: {exc.strerror or exc}"
        ) from None
    if opts.log.is_dir():
        raise BadInput(f"rollout run: --log {opts.log}: a directory, not a file")
    try:
        _make_dir(opts.log.parent)
        log = opts.log.open("a")
    except OSError as exc:
        raise BadInput(
            f"rollout run: --log {opts.log}: cannot write: {exc.strerror or exc}"
        ) from None
    try:
        log.write(f"\n# {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC {opts.label}: ")
        log.write(" ".join(opts.command) + "\n")
        log.flush()
    except OSError as exc:
        with contextlib.suppress(OSError):
            log.close()
        raise BadInput(
            f"rollout run: --log {opts.log}: cannot write: {exc.strerror or exc}"
        ) from None
    return log


def _stopped_code(stops: Stops) -> int:
    return EXIT_BROKEN_PIPE if stops.seen[0] == BROKEN_PIPE else EXIT_FORCED


def run(opts: RunOptions) -> int:
    """Run ``opts.command`` (under load unless ``rate`` is "none"); return the exit code:
    0, :data:`EXIT_COMMAND_FAILED` (the command failed), :data:`EXIT_PROBE_FAILED` (a
    request failed, or the capacity burst saw one), 130 (SIGINT, SIGTERM or SIGHUP) or
    141 (stdout's reader went away): the command was stopped first (:mod:`.child`)."""
    load = opts.rate.strip().lower() != "none"
    if load and opts.inventory is None:
        raise BadInput("rollout: --inventory is needed for the load (or --rate none)")
    if shutil.which(opts.command[0]) is None:  # not after the capacity burst
        raise BadInput(f"rollout run: {opts.command[0]}: no such command (or not executable)")
    log = _prepare(opts)
    try:
        with Stops() as stops:
            return _run(opts, load, log, stops, _Screen(stops))
    finally:
        with contextlib.suppress(OSError):  # what it could not write was said
            log.close()


def _run(opts: RunOptions, load: bool, log: IO[str], stops: Stops, screen: _Screen) -> int:
    meta: dict[str, Any] = {
        "label": opts.label,
        "command": list(opts.command),
        "log": str(opts.log),
        "name": opts.name,
        "machine": socket.gethostname(),
    }
    probe: Probe | None = None
    hosts: list[Host] = []
    if load:
        assert opts.inventory is not None
        hosts = inventory_hosts(opts.inventory, opts.group, opts.port, opts.path)
        meta["hosts"] = [h.__dict__ for h in hosts]
        _clear_earlier_files(opts.out, hosts)
        probe, meta["capacity"] = _start_probe(opts, hosts, screen)
        if probe is None:
            _write_json(opts.out / META, meta)
            return EXIT_PROBE_FAILED
    if stops.stopped:  # before the command: it does not start
        if probe is not None:
            probe.stop()
        meta["interrupted"] = stops.reason
        _write_json(opts.out / META, meta)
        screen.say(f"{opts.label}: {stops.reason}: the command was not started")
        return _stopped_code(stops)
    phase = AnsiblePhase()
    t0 = time.monotonic()
    began = time.time()
    progress_out = _JsonLines.open(opts.out / "progress.jsonl") if load else None
    requests = failed = 0
    try:
        try:
            ran = run_command(
                opts.command,
                log,
                stops,
                feed=phase.feed,
                tick=lambda: _progress(probe, phase, t0, progress_out, screen),
                every=opts.every,
            )
        except OSError as exc:
            raise BadInput(
                f"rollout: cannot run {opts.command[0]}: {exc.strerror or exc}"
            ) from None
        rc = ran.rc
        command_s = time.monotonic() - t0
        meta.update(command_rc=rc, command_s=round(command_s, 3), command_began=began)
        if ran.stopped_by:
            screen.say(f"{opts.label}: {stops.reason}: stopped the command ({ran.stopped_by})")
        if ran.log_error:
            screen.say(f"{opts.label}: the log lost the command's output: {ran.log_error}")
        screen.say(
            f"{opts.label}: {'done' if rc == 0 else f'FAILED (exit {rc})'} in {command_s:.1f} s"
        )
        if probe is not None:
            # the plays on the probe's time base: the controller's lane of the timeline
            probe_t0 = time.monotonic() - probe.elapsed()
            meta["command_t"] = [round(t0 - probe_t0, 3), round(t0 + command_s - probe_t0, 3)]
            meta["plays"] = [
                {"t": round(when - probe_t0, 3), "play": name} for when, name in phase.plays
            ]
            stops.sleep(opts.tail)  # a little traffic on what the command left
            report = probe.stop()
            requests, failed = report.total, report.failed
            _progress(probe, phase, t0, progress_out, screen, final=report.to_dict())
            doc = report.to_dict()
            doc["capacity"] = meta.get("capacity")
            _write_json(opts.out / "probe.json", doc)
            meta["since"] = math.floor(report.started_at) - 1
    finally:
        if progress_out is not None:
            progress_out.close()
            if progress_out.error:
                screen.say(f"{opts.label}: {progress_out.error}")
        if probe is not None and probe.report is None:  # an error on the way: no load left
            probe.stop()
    if stops.stopped:  # during the command, or after it (the tail, the journals)
        meta["interrupted"] = stops.reason
    if not load:
        _write_json(opts.out / META, meta)
        screen.say(f"{opts.label}: log {opts.log}")
    else:
        if stops.stopped:  # no more remote commands once stopped
            meta["journal"] = {"ok": False, "why": f"interrupted ({stops.reason})"}
        else:
            meta["journal"] = _fetch_journals(opts, int(meta["since"]), log, stops, screen)
            if stops.stopped:
                meta["interrupted"] = stops.reason
        _write_json(opts.out / META, meta)
        try:
            screen.say()
            screen.say(summarize(opts.out, draw=not stops.stopped).text)
        except BadInput as exc:  # a host's files: the deploy's verdict stands
            screen.say(f"{opts.label}: no summary: {exc.message}")
    if stops.stopped:
        return _stopped_code(stops)
    if rc != 0:
        return EXIT_COMMAND_FAILED
    if not load:
        return 0
    return 0 if requests > 0 and failed == 0 else EXIT_PROBE_FAILED


def _clear_earlier_files(out: Path, hosts: Sequence[Host]) -> None:
    """Remove what an earlier run left in ``out`` (the same ``--out`` again) that this one
    may not write again: the hosts' files (when it reads no journal: interrupted, or
    journal.yml failed) and timeline.png (not drawn after a stop), so that the summary
    never shows an earlier deploy as this one."""
    paths = [out / "timeline.png"]
    for h in hosts:
        paths += [
            out / "hosts" / f"{h.name}{suffix}" for suffix in (".journal.jsonl", ".deploy.json")
        ]
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise BadInput(
                f"rollout run: cannot remove {path} (an earlier run's): {exc.strerror or exc}"
            ) from None


class _JsonLines:
    """progress.jsonl (this run's: emptied at its start). A write that fails (a full
    disk) does not stop the deploy: the first error is kept (``error``) and said at the
    end, and nothing more is written."""

    def __init__(self, path: Path, file: IO[str]) -> None:
        self.path = path
        self.file = file
        self.error = ""

    @classmethod
    def open(cls, path: Path) -> _JsonLines:
        try:
            return cls(path, path.open("w"))
        except OSError as exc:
            raise BadInput(f"rollout: cannot write {path}: {exc.strerror or exc}") from None

    def write(self, doc: Mapping[str, Any]) -> None:
        if self.error:
            return
        try:
            self.file.write(json.dumps(doc) + "\n")
            self.file.flush()
        except OSError as exc:
            self.error = f"cannot write {self.path}: {exc.strerror or exc}"

    def close(self) -> None:
        try:
            self.file.close()
        except OSError as exc:
            self.error = self.error or f"cannot write {self.path}: {exc.strerror or exc}"


def _start_probe(
    opts: RunOptions, hosts: Sequence[Host], screen: _Screen
) -> tuple[Probe | None, dict[str, Any]]:
    targets = [Target.from_url(h.url) for h in hosts]
    rate, fraction = parse_rate(opts.rate)
    capacity: dict[str, Any] = {}
    if fraction is not None:
        cap = measure_capacity(targets, opts.capacity_seconds)
        rps = capacity_of(cap)
        capacity = {
            "rps": round(rps, 1),
            "seconds": round(cap.duration_s, 3),
            "requests": cap.total,
            "failed": cap.failed,
            "measured": True,
            "fraction": fraction,
        }
        screen.say(
            f"{opts.label}: capacity of {len(hosts)} host(s) {rps:,.0f} req/s (closed loop, "
            f"{opts.capacity_seconds:g} s, {cap.failed} failed)"
        )
        if cap.failed or cap.ok == 0:
            screen.say(f"{opts.label}: the capacity burst saw failed requests: not starting")
            for e in cap.error_samples[:3]:
                screen.say(f"  {e}")
            return None, capacity
        screen.stops.sleep(0.5)  # let the hosts settle after the burst
        rate = max(rps * fraction, 0.1)
    assert rate is not None
    capacity["rate"] = round(rate, 1)
    what = f" ({fraction:.0%} of capacity)" if fraction is not None else ""
    screen.say(
        f"{opts.label}: open-loop load {rate:,.0f} req/s{what} on " + " ".join(h.url for h in hosts)
    )
    probe = Probe(targets, rate=rate, max_duration=MAX_LOAD_S).start()
    probe.progress()  # from here on, each progress() has the window's latencies
    return probe, capacity


def _progress(
    probe: Probe | None,
    phase: AnsiblePhase,
    t0: float,
    out: _JsonLines | None,
    screen: _Screen,
    final: Mapping[str, Any] | None = None,
) -> None:
    if final is not None:
        if out is not None:
            out.write({"final": True, "requests": final["total"]})
        return
    p = probe.progress() if probe is not None else None
    text = phase.text
    screen.say(progress_line(time.monotonic() - t0, text, p))
    if out is not None and p is not None:
        out.write({**p, "phase": text})


def _fetch_journals(
    opts: RunOptions, since: int, log: IO[str], stops: Stops, screen: _Screen
) -> dict[str, Any]:
    """Run ansible/journal.yml (a command stopped like the deploy); its output goes to
    the log."""
    book = opts.journal_playbook
    if book is None or not book.exists():
        return {"ok": False, "why": f"no journal playbook ({book or 'none given'})"}
    assert opts.inventory is not None
    dest = opts.out / "hosts"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"rollout: cannot make {dest}: {exc.strerror or exc}") from None
    argv = [
        _tool("ansible-playbook"),
        "-i",
        str(opts.inventory),
        str(book),
        "-e",
        f"sockact_journal_since={since}",
        "-e",
        f"sockact_journal_dir={dest.resolve()}",
        "-e",
        f"sockact_hosts={opts.group}",
        "-e",
        f"sockact_name={opts.name}",
    ]
    t0 = time.monotonic()
    with contextlib.suppress(OSError):
        log.write(f"\n# {opts.label}: the hosts' journals: {' '.join(argv)}\n")
        log.flush()
    ran = run_command(argv, log, stops)
    took = time.monotonic() - t0
    if stops.stopped:
        screen.say(f"{opts.label}: {stops.reason}: stopped reading the journals")
        return {"ok": False, "why": f"interrupted ({stops.reason})", "seconds": round(took, 3)}
    if ran.rc != 0:
        screen.say(f"{opts.label}: reading the hosts' journals FAILED (exit {ran.rc}, log)")
        return {"ok": False, "why": f"ansible-playbook exit {ran.rc}", "seconds": round(took, 3)}
    return {"ok": True, "seconds": round(took, 3)}


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise BadInput(f"rollout: cannot write {path}: {exc.strerror or exc}") from None


# -- the summary ------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    text: str
    switches: tuple[HostSwitch, ...]
    requests: int
    failed: int
    png: Path | None


_NAMED: Final = frozenset({"name", "url"})
_T: Final = frozenset({"t"})
#: what the summary (and the timeline) read of rollout.json
META_SHAPE: Final = Obj(
    {
        "label": STR,
        "log": STR,
        "name": STR,
        "machine": STR,
        "hosts": ListOf(Obj({"name": STR, "url": STR}, _NAMED)),
        "command_rc": Opt(INT),
        "command_s": NUM,
        "command_t": Opt(ListOf(Opt(NUM), 2)),
        "plays": Opt(ListOf(Obj({"t": NUM, "play": Opt(STR)}, _T))),
        "capacity": Opt(Obj({"fraction": Opt(NUM), "rps": NUM})),
        "journal": Opt(Obj({"why": STR})),
    }
)
#: what the summary and the timeline read of probe.json (a probe report)
REPORT_SHAPE: Final = Obj(
    {
        "mode": STR,
        "started_at": Opt(NUM),
        "targets": Opt(ListOf(STR)),
        "rate": Opt(NUM),
        "total": INT,
        "failed": INT,
        "failures": Opt(MapOf(INT)),
        "duration_s": NUM,
        "latency_ms": Opt(Obj({"p50": NUM, "p99": NUM, "max": NUM})),
        "late": INT,
        "send_lag_ms": Opt(Obj({"max": NUM})),
        "samples": Opt(ListOf(Obj({"count": INT}, frozenset({"count"})))),
        "series": Opt(ListOf(Obj({"t": NUM, "p99_ms": NUM, "max_ms": NUM}, _T))),
        "bucket_s": Opt(NUM),
        "buckets": Opt(
            ListOf(
                Obj(
                    {
                        "t": NUM,
                        "ok": INT,
                        "failures": Opt(MapOf(INT)),
                        "targets_failed": Opt(ListOf(INT)),
                        "answered": ListOf(TupleOf((ANY, ANY, INT))),
                    },
                    _T,
                )
            )
        ),
    }
)
#: a host's deploy record (``hosts/<host>.deploy.json``), as far as the table reads it
RECORD_SHAPE: Final = Obj({"instances": ListOf(ANY)})


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise BadInput(f"rollout: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"rollout: {path}: not UTF-8 text: {exc.reason}") from None


def _read_json(path: Path, shape: Shape = ANY, text: str | None = None) -> Any:
    """The JSON document in ``path``, checked against ``shape``: anything wrong is one
    line naming the file and what is wrong in it."""
    if text is None:
        text = _read_text(path)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"rollout: {path}: not JSON: {exc}") from None
    try:
        check(doc, shape)
    except ShapeError as exc:
        raise BadInput(f"rollout: {path}: {exc}") from None
    return doc


def failed_by_target(report: Mapping[str, Any]) -> list[int]:
    """Failed requests per target (``targets_failed`` of each bucket), in target order."""
    out = [0] * len(report.get("targets") or [])
    for b in report.get("buckets") or []:
        for i, n in enumerate(b.get("targets_failed") or []):
            if i < len(out):
                out[i] += int(n)
    return out


def switches_of(out: Path, meta: Mapping[str, Any], report: Mapping[str, Any]) -> list[HostSwitch]:
    """The per-host switches from the journals and records fetched into ``out/hosts``."""
    targets = list(report.get("targets") or [])
    failed = failed_by_target(report)
    result = []
    for h in meta.get("hosts", []):
        name = str(h["name"])
        i = targets.index(h["url"]) if h["url"] in targets else None
        jpath = out / "hosts" / f"{name}.journal.jsonl"
        rpath = out / "hosts" / f"{name}.deploy.json"
        if not jpath.exists():
            continue
        try:
            entries = parse_entries(_read_text(jpath).splitlines(), str(meta.get("name", "api")))
        except BadInput as exc:
            if exc.message.startswith("rollout: "):
                raise
            raise BadInput(f"rollout: {jpath}: {exc.message}") from None
        text = _read_text(rpath).strip() if rpath.exists() else ""
        record = _read_json(rpath, RECORD_SHAPE, text) if text else None
        result.append(host_switch(name, entries, record, None if i is None else failed[i]))
    return result


#: the timeline's lane of the Ansible plays (the controller's clock, not a host's)
PLAYS_LANE: Final = "ansible (controller)"


def play_events(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Ansible plays as spans on the probe's time base, each up to the next play (or
    the recap, or the command's end), labelled by the play's first word."""
    plays = list(meta.get("plays") or [])
    end = (meta.get("command_t") or [None, None])[1]
    out = []
    for i, p in enumerate(plays):
        if not p.get("play"):
            continue
        until = plays[i + 1]["t"] if i + 1 < len(plays) else end
        event: dict[str, Any] = {
            "t": p["t"],
            "host": PLAYS_LANE,
            "label": f"play: {(str(p['play']).split() or ['?'])[0]}",
            "play": p["play"],
        }
        if until is not None and until >= p["t"]:
            event["duration"] = round(float(until) - float(p["t"]), 3)
        out.append(event)
    return out


def _fmt_ms(v: Any) -> str:
    return f"{float(v):.1f} ms"


def summarize(out: Path, draw: bool = True) -> Summary:
    """The summary of the run in ``out`` (printed, and written to ``out/summary.txt``);
    draws ``out/timeline.png`` unless ``draw`` is false or matplotlib is missing.

    Every file of the run is read and checked before anything is written: a bad one is
    :class:`BadInput` naming it, and leaves the directory as it was."""
    meta = _read_json(out / META, META_SHAPE)
    if "hosts" not in meta and not (out / "probe.json").exists():
        raise BadInput(f"rollout: {out}: a run without load (--rate none): no summary")
    report = _read_json(out / "probe.json", REPORT_SHAPE)
    switches = switches_of(out, meta, report)
    started_at = float(report.get("started_at") or 0.0)
    events = [*play_events(meta), *(e for s in switches for e in s.events(started_at))]
    rc = meta.get("command_rc")
    label = str(meta.get("label", "deploy"))
    lines = [
        f"{label}: {len(meta.get('hosts', []))} host(s), the command took "
        f"{float(meta.get('command_s', 0)):.1f} s ({'exit 0' if rc == 0 else f'FAILED, exit {rc}'})"
    ]
    cap = meta.get("capacity") or {}
    total, failed = int(report.get("total", 0)), int(report.get("failed", 0))
    load = f"open loop {float(report.get('rate') or 0):,.0f} req/s"
    if cap.get("fraction") is not None:
        load += f" ({cap['fraction']:.0%} of {float(cap.get('rps') or 0):,.0f} req/s measured)"
    fails = ", ".join(f"{k} {v:,}" for k, v in (report.get("failures") or {}).items() if v)
    lines.append(
        f"load: {load}, {total:,} requests in {float(report.get('duration_s', 0)):.1f} s, "
        + (f"FAILED {failed:,} ({fails})" if failed else "0 failed")
    )
    lat = report.get("latency_ms") or {}
    lines.append(
        f"latency from each request's due time: p50 {_fmt_ms(lat.get('p50', 0))}, p99 "
        f"{_fmt_ms(lat.get('p99', 0))}, max {_fmt_ms(lat.get('max', 0))}; "
        f"{int(report.get('late', 0)):,} sent late (probe lag max "
        f"{float((report.get('send_lag_ms') or {}).get('max', 0)):.0f} ms)"
    )
    versions: dict[str, int] = {}
    for s in report.get("samples") or []:
        versions[str(s.get("version"))] = versions.get(str(s.get("version")), 0) + int(s["count"])
    vtotal = sum(versions.values())
    if vtotal:
        lines.append(
            "answered by version: "
            + ", ".join(f"{v} {n:,} ({100 * n / vtotal:.0f}%)" for v, n in versions.items())
        )
    lines.append("")
    journal = meta.get("journal") or {}
    if switches:
        lines.append(format_table(switches))
        lines.append("")
        lines += _wrap(TABLE_NOTES, 92)
    else:
        lines.append(f"per-host table: skipped ({journal.get('why', 'no journal read')})")
    _write_json(out / "events.json", events)
    png: Path | None = out / "timeline.png"
    if draw:
        why = _draw(out / "timeline.png", report, events, meta, switches)
        if why:
            png = None
            lines.append(f"timeline: skipped: {why}")
    elif not (out / "timeline.png").exists():
        png = None
    lines.append("")
    lines.append(f"files in {out}: summary.txt, probe.json, progress.jsonl, events.json, hosts/")
    if png is not None:
        lines.append(f"timeline: {png}")
    lines.append(f"Ansible's output: {meta.get('log')}")
    text = "\n".join(lines)
    try:
        (out / "summary.txt").write_text(text + "\n")
    except OSError as exc:
        raise BadInput(
            f"rollout: cannot write {out / 'summary.txt'}: {exc.strerror or exc}"
        ) from None
    return Summary(text, tuple(switches), total, failed, png)


def _wrap(text: str, width: int) -> list[str]:
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*out, line] if line else out


def _draw(
    png: Path,
    report: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    switches: Sequence[HostSwitch],
) -> str:
    """Draw the timeline; return why not ("" when drawn)."""
    from sockact.controller.timeline import default_title, events_from, render_timeline

    pairs = sorted({f"{s.old_release or '-'} -> {s.new_release or '?'}" for s in switches})
    title = (
        f"{meta.get('label', 'deploy')} ({', '.join(pairs) or 'no switch'}) on "
        f"{len(meta.get('hosts', []))} host(s), from {meta.get('machine', '?')}\n"
        + default_title(report)
    )
    try:
        render_timeline(report, events_from(events, 0.0), png, title)
    except MissingExtra as exc:
        return exc.message.removeprefix("timeline: ")
    return ""


# -- command line -----------------------------------------------------------------------


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: a finite number of seconds")
    return value


def _seconds(text: str) -> float:
    """Seconds > 0 (not inf, not nan)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0 seconds")
    return value


def _seconds_or_zero(text: str) -> float:
    """Seconds >= 0 (not inf, not nan)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0 seconds")
    return value


def _rate(text: str) -> str:
    """``none``, R requests/s or P% (:func:`parse_rate`), checked before anything runs."""
    if text.strip().lower() != "none":
        try:
            parse_rate(text)
        except BadInput as exc:
            raise argparse.ArgumentTypeError(exc.message.removeprefix("probe: --rate ")) from None
    return text


def _url_path(text: str) -> str:
    """The path of the probe's URL: from /, no spaces or control characters."""
    if not text.startswith("/") or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a URL path, from / (no spaces)")
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 1-65535")
    return value


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact rollout run ... -- COMMAND`` and ``sockact rollout report DIR``."""
    p = sub.add_parser(
        "rollout",
        help="run a deploy command under load with progress lines; per-host table and PNG",
        description="Run a deploy (any command, e.g. ansible-playbook ansible/deploy.yml) "
        "under open-loop load with a progress line every few seconds and its output in a "
        "log; then read each host's journal and print a per-host table (warm-up, start to "
        "READY, switch, drain, connections cut, failed requests) and draw a PNG timeline.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = actions.add_parser(
        "run",
        help="run COMMAND under load",
        epilog=f"Exit codes: 0 the command succeeded and no request failed; "
        f"{EXIT_COMMAND_FAILED} the command failed; {EXIT_PROBE_FAILED} a request failed (or "
        "none was made, or the capacity burst saw a failure); 2 bad input (flags, --out, --log, "
        "the command: checked before anything runs); 130 stopped by SIGINT, SIGTERM or "
        "SIGHUP, 141 stdout's reader went away: the command's process group is stopped "
        "first (SIGINT or SIGTERM, SIGKILL after 30 s or at a second stop).",
    )
    r.add_argument("--out", type=Path, required=True, metavar="DIR", help="files of the run")
    r.add_argument(
        "--log",
        type=Path,
        metavar="FILE",
        help="the command's output (appended); default DIR/ansible.log",
    )
    r.add_argument("--label", default="deploy", help="what runs, for the lines and the title")
    r.add_argument("--inventory", "-i", type=Path, metavar="FILE", help="Ansible inventory")
    r.add_argument("--group", default="api", help="inventory group of the hosts (default api)")
    r.add_argument("--port", type=_port, default=8080, help="main port of the hosts (8080)")
    r.add_argument("--path", type=_url_path, default="/", help="path the probe requests (/)")
    r.add_argument("--name", default="api", help="unit name: <name>@N.service (api)")
    r.add_argument(
        "--rate",
        type=_rate,
        default="25%",
        metavar="R|P%|none",
        help="open-loop load: R requests/s, or P%% of the capacity measured first "
        "(default 25%%); none: no load, no journal, progress and log only",
    )
    r.add_argument("--capacity-seconds", type=_seconds, default=3.0, metavar="S")
    r.add_argument("--every", type=_seconds, default=3.0, metavar="S", help="progress line (3 s)")
    r.add_argument(
        "--tail",
        type=_seconds_or_zero,
        default=2.0,
        metavar="S",
        help="load after the command ended (2 s)",
    )
    r.add_argument(
        "--journal-playbook",
        type=Path,
        default=Path("ansible/journal.yml"),
        metavar="FILE",
        help="the playbook that fetches the journals (default ansible/journal.yml)",
    )
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    r.set_defaults(func=run_rollout)
    s = actions.add_parser("report", help="print the summary of a finished run again")
    s.add_argument("out", type=Path, metavar="DIR")
    s.add_argument("--no-png", action="store_true", help="do not redraw timeline.png")
    s.set_defaults(func=report_rollout)


def run_rollout(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise BadInput("rollout run: no command: put it after --")
    return run(
        RunOptions(
            command=command,
            out=args.out,
            log=args.log or args.out / "ansible.log",
            label=args.label,
            inventory=args.inventory,
            group=args.group,
            port=args.port,
            path=args.path,
            name=args.name,
            rate=args.rate,
            capacity_seconds=args.capacity_seconds,
            every=args.every,
            tail=args.tail,
            journal_playbook=args.journal_playbook,
        )
    )


def report_rollout(args: argparse.Namespace) -> int:
    summary = summarize(args.out, draw=not args.no_png)
    print(summary.text)
    return 0
