"""What each host's instances did during a deploy, read from their own journal.

Input: the lines of ``journalctl --output=json --unit=<name>@*.service`` on one host
(``ansible/journal.yml`` fetches them, with the host's deploy record). Two kinds of
entries are used, never the controller's clock:

* systemd's own messages about a unit, recognised by their ``MESSAGE_ID`` (stable ids of
  ``sd-messages.h``): the start job began ("Starting api@101.service"), the unit stopped
  or failed;
* sockact's entries (they carry ``INSTANCE`` and ``PHASE``): ``warm-up took X s``,
  ``serving on ...`` (sent with READY=1), ``SIGTERM: draining N connection(s)``,
  ``drained in X s, ...`` or ``drain_timeout X s ran out: cut N connection(s)``,
  ``closed N connection(s) with request bytes unread``, any entry in phase
  ``failed``, and the plain stderr line ``sockact: error: ...`` of a failed start. The
  texts are those of :mod:`sockact.runtime.lifecycle` (tests/integration/
  test_journal_messages.py reads them from real instances).

From them :func:`lives` makes one :class:`Life` per instance start (or per instance seen
stopping), and :func:`host_switch` the blue/green switch of one host: the instances that
started in the window are the new color, those that only stopped are the old one. The
table and the timeline events come from there (:func:`format_table`, :meth:`HostSwitch.events`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sockact.errors import BadInput

# systemd's catalog ids (sd-messages.h): stable across versions; tests/unit/data/deploy has
# them as systemd 252 (Debian 12) writes them
MSG_UNIT_STARTING: Final = "7d4958e842da4a758f6c1cdc7b36dcc5"
MSG_UNIT_STARTED: Final = "39f53479d3a045ac8e11786248231fbf"
MSG_UNIT_STOPPING: Final = "de5b426a63be47a7b6ac3eaac82e2f6f"
MSG_UNIT_STOPPED: Final = "9d1aaa27d60140bd96365438aad20286"
MSG_UNIT_SUCCESS: Final = "7ad2d189f7e94e70a38c781354912448"  # "Deactivated successfully."
MSG_UNIT_FAILURE_RESULT: Final = "d9b373ed55a64feb8242e02dbe79a49c"  # "Failed with result ..."
MSG_UNIT_PROCESS_EXIT: Final = "98e322203f7a4ed290d09fe03c09fe15"  # "Main process exited ..."
MSG_UNIT_FAILED: Final = "be02cf6855d2428ba40df7e9d022f03d"  # "Failed to start ..."

# sockact's own messages (sockact/runtime/lifecycle.py)
#: seconds as sockact writes them (%.2f, or :g: "1e+03"); a bare "." or "1.2.3" is not
#: a match (before, a crash)
_SECONDS: Final = r"[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?"
_WARMUP = re.compile(rf"^warm-up took (?P<s>{_SECONDS}) s$")
_SERVING = re.compile(r"^serving on ")
_DRAINING = re.compile(r"^\S+: draining (?P<n>[0-9]+) connection\(s\)")
_DRAINED = re.compile(rf"^drained in (?P<s>{_SECONDS}) s, (?P<rest>.*)$")
_UNREAD = re.compile(r"^closed (?P<n>[0-9]+) connection\(s\) with request bytes unread")
#: what sockact.cli prints before an exit other than 0 (a plain stderr line)
_ERROR: Final = "sockact: error: "
_TIMED_OUT = re.compile(
    rf"^drain_timeout (?P<s>{_SECONDS}) s ran out: cut (?P<n>[0-9]+) connection\(s\)"
)


@dataclass(frozen=True)
class Entry:
    """One journal entry about an instance unit."""

    time: float  # Unix time, from __REALTIME_TIMESTAMP
    unit: str  # api@101.service
    instance: int  # 101
    message: str
    #: systemd's catalog id when PID 1 wrote it about the unit, else ""
    message_id: str = ""
    #: sockact's PHASE field ("" for systemd's own entries and the app's)
    phase: str = ""
    pid: int = 0

    @property
    def from_sockact(self) -> bool:
        return bool(self.phase)


def _field(doc: Mapping[str, Any], key: str) -> str:
    """A journal field as text: a string, bytes as a list of ints, or several values."""
    value = doc.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if value and all(isinstance(b, int) for b in value):
            return bytes(value).decode("utf-8", "replace")
        return _field({"v": value[-1]}, "v") if value else ""
    return str(value)


def parse_entries(lines: Iterable[str], name: str = "api") -> list[Entry]:
    """The entries about ``<name>@<n>.service`` units in ``journalctl -o json`` lines,
    sorted by time. Entries of other units and blank lines are skipped; a line that is not
    a JSON object is :class:`BadInput`."""
    unit_re = re.compile(rf"^{re.escape(name)}@(\d+)\.service$")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise BadInput(f"journal line {n}: not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadInput(f"journal line {n}: not a JSON object")
        # PID 1 writes UNIT= about a unit; the unit's own processes have _SYSTEMD_UNIT=
        by_pid1 = _field(doc, "_PID") == "1" and bool(_field(doc, "UNIT"))
        unit = _field(doc, "UNIT") if by_pid1 else _field(doc, "_SYSTEMD_UNIT")
        m = unit_re.match(unit)
        stamp = _field(doc, "__REALTIME_TIMESTAMP")
        if m is None or not stamp.isdigit():
            continue
        pid = _field(doc, "_PID")
        out.append(
            Entry(
                time=int(stamp) / 1e6,
                unit=unit,
                instance=int(m.group(1)),
                message=_field(doc, "MESSAGE"),
                message_id=_field(doc, "MESSAGE_ID") if by_pid1 else "",
                phase="" if by_pid1 else _field(doc, "PHASE"),
                pid=int(pid) if pid.isdigit() else 0,
            )
        )
    out.sort(key=lambda e: e.time)
    return out


@dataclass
class Life:
    """One run of one instance, as far as the journal window shows it.

    Times are Unix times (None: not in the window); seconds are what sockact logged.
    """

    instance: int
    unit: str
    #: systemd began the start job (``systemctl start`` reached PID 1)
    start: float | None = None
    warmup_s: float | None = None
    #: sockact's "serving on": the listener is open and READY=1 was sent
    ready: float | None = None
    #: systemd began the stop job (SIGTERM follows)
    stopping: float | None = None
    #: sockact's "draining": the listener closed, open connections finishing
    drain_start: float | None = None
    drain_s: float | None = None
    #: connections the drain closed with a request unfinished at drain_timeout
    cut_timeout: int = 0
    #: connections closed with request bytes unread (pipelined after Connection: close)
    cut_unread: int = 0
    drain_timed_out: bool = False
    #: the unit stopped (or failed) and its process is gone
    stopped: float | None = None
    #: why it failed (sockact's line in phase "failed", or systemd's result)
    failure: str = ""
    entries: list[Entry] = field(default_factory=list, repr=False)

    @property
    def cut(self) -> int:
        """Connections the drain closed unfinished (``sockact_connections_cut_total``)."""
        return self.cut_timeout + self.cut_unread

    @property
    def start_to_ready_s(self) -> float | None:
        if self.start is None or self.ready is None:
            return None
        return self.ready - self.start


def lives(entries: Sequence[Entry]) -> list[Life]:
    """One :class:`Life` per instance start in ``entries`` (sorted by time), and one for
    an instance seen only stopping (it started before the window)."""
    current: dict[int, Life] = {}
    out: list[Life] = []

    def life_of(e: Entry, new: bool = False) -> Life:
        life = current.get(e.instance)
        if life is None or (new and (life.start is not None or life.stopped is not None)):
            life = Life(e.instance, e.unit)
            current[e.instance] = life
            out.append(life)
        return life

    for e in entries:
        if e.message_id == MSG_UNIT_STARTING:
            life_of(e, new=True).start = e.time
            current[e.instance].entries.append(e)
            continue
        life = life_of(e)
        life.entries.append(e)
        if e.message_id == MSG_UNIT_STOPPING:
            life.stopping = e.time
        elif e.message_id == MSG_UNIT_STARTED:  # READY=1 reached systemd
            life.ready = life.ready or e.time  # sockact's own "serving on" comes first
        elif e.message_id == MSG_UNIT_PROCESS_EXIT:  # logged when it exited non-zero
            life.failure = life.failure or e.message
        elif e.message_id in (MSG_UNIT_STOPPED, MSG_UNIT_SUCCESS):
            life.stopped = e.time
        elif e.message_id in (MSG_UNIT_FAILURE_RESULT, MSG_UNIT_FAILED):
            life.stopped = life.stopped or e.time
            life.failure = life.failure or e.message
        elif e.from_sockact:
            _sockact_entry(life, e)
        elif not e.message_id:
            _stderr_entry(life, e)
    return out


def _sockact_entry(life: Life, e: Entry) -> None:
    msg = e.message
    if m := _WARMUP.match(msg):
        life.warmup_s = float(m.group("s"))
    elif _SERVING.match(msg):
        life.ready = e.time
    elif _DRAINING.match(msg):
        life.drain_start = e.time
    elif m := _DRAINED.match(msg):
        life.drain_s = float(m.group("s"))
    elif m := _TIMED_OUT.match(msg):
        life.drain_s = float(m.group("s"))
        life.drain_timed_out = True
        life.cut_timeout = int(m.group("n"))
    elif m := _UNREAD.match(msg):  # logged before the drain's last line, in both cases
        life.cut_unread = int(m.group("n"))
    elif e.phase == "failed" and not life.failure:
        life.failure = msg


def _stderr_entry(life: Life, e: Entry) -> None:
    """A plain line the process wrote to stderr: sockact's last words before an exit."""
    if e.message.startswith(_ERROR) and not life.failure:
        life.failure = e.message.removeprefix(_ERROR)


def _label(release: Any) -> str | None:
    if isinstance(release, Mapping) and isinstance(release.get("label"), str):
        return str(release["label"])
    return None


@dataclass(frozen=True)
class HostSwitch:
    """The blue/green switch of one host in the window: new color started, old one stopped.

    ``recorded``: the deploy record names the new instances (the switch finished).
    """

    host: str
    old_release: str | None
    new_release: str | None
    new: tuple[Life, ...]
    old: tuple[Life, ...]
    recorded: bool
    #: failed requests of the probe against this host (None: not known)
    failed_requests: int | None = None

    @property
    def start(self) -> float | None:
        """When the first new instance's start began."""
        starts = [x.start for x in self.new if x.start is not None]
        return min(starts) if starts else None

    @property
    def ready(self) -> float | None:
        """When the last new instance was READY (None unless all were)."""
        if not self.new or any(x.ready is None for x in self.new):
            return None
        return max(x.ready for x in self.new if x.ready is not None)

    @property
    def end(self) -> float | None:
        """When the last old instance was gone (None unless all were)."""
        if not self.old or any(x.stopped is None for x in self.old):
            return None
        return max(x.stopped for x in self.old if x.stopped is not None)

    @property
    def warmup_s(self) -> float | None:
        """The longest warm-up of the new instances (they warm up side by side)."""
        values = [x.warmup_s for x in self.new if x.warmup_s is not None]
        return max(values) if values else None

    @property
    def start_to_ready_s(self) -> float | None:
        """From the first new start to the last new READY."""
        if self.start is None or self.ready is None:
            return None
        return self.ready - self.start

    @property
    def switch_s(self) -> float | None:
        """From the first new start to the last old instance gone (or READY, with no old
        color): the whole switch of this host as systemd saw it."""
        end = self.end if self.old else self.ready
        if self.start is None or end is None:
            return None
        return end - self.start

    @property
    def drain_s(self) -> float | None:
        """The longest drain of the old instances."""
        values = [x.drain_s for x in self.old if x.drain_s is not None]
        return max(values) if values else None

    @property
    def cut(self) -> int:
        return sum(x.cut for x in self.old)

    @property
    def failures(self) -> list[str]:
        return [f"{x.unit}: {x.failure}" for x in (*self.new, *self.old) if x.failure]

    @property
    def state(self) -> str:
        if not self.new and not self.old:
            return "no switch"
        if self.failures or not self.recorded:
            return "FAILED"
        if self.old and self.end is None:
            return "old color still stopping"
        return "ok"

    def events(self, t0: float = 0.0) -> list[dict[str, Any]]:
        """Timeline events (``sockact timeline --events``), ``t`` seconds after ``t0``: per
        new instance its start (a span up to READY) and READY, per old instance its drain
        (a span up to the stop) and its stop, and every failure."""
        out: list[dict[str, Any]] = []

        def add(when: float | None, label: str, life: Life, until: float | None = None) -> None:
            if when is None:
                return
            event = {"t": round(when - t0, 3), "host": self.host, "label": label}
            if until is not None and until >= when:
                event["duration"] = round(until - when, 3)
            out.append({**event, "unit": life.unit})

        for x in self.new:
            add(x.start, "new: start -> READY", x, x.ready)
            add(x.ready, "new: READY", x)
        for x in self.old:
            began = x.drain_start if x.drain_start is not None else x.stopping
            add(began, "old: drain -> stopped", x, x.stopped)
            add(x.stopped, "old: stopped", x)
        for x in (*self.new, *self.old):
            if x.failure:
                add(x.stopped if x.stopped is not None else x.start, "FAILED", x)
        return sorted(out, key=lambda e: float(e["t"]))

    def to_dict(self) -> dict[str, Any]:
        def life(x: Life) -> dict[str, Any]:
            return {
                "unit": x.unit,
                "start": x.start,
                "warmup_s": x.warmup_s,
                "ready": x.ready,
                "stopping": x.stopping,
                "drain_start": x.drain_start,
                "drain_s": x.drain_s,
                "cut_timeout": x.cut_timeout,
                "cut_unread": x.cut_unread,
                "drain_timed_out": x.drain_timed_out,
                "stopped": x.stopped,
                "failure": x.failure or None,
            }

        def secs(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "host": self.host,
            "old_release": self.old_release,
            "new_release": self.new_release,
            "state": self.state,
            "warmup_s": secs(self.warmup_s),
            "start_to_ready_s": secs(self.start_to_ready_s),
            "switch_s": secs(self.switch_s),
            "drain_s": secs(self.drain_s),
            "cut": self.cut,
            "failed_requests": self.failed_requests,
            "new": [life(x) for x in self.new],
            "old": [life(x) for x in self.old],
        }


def host_switch(
    host: str,
    entries: Sequence[Entry],
    record: Mapping[str, Any] | None,
    failed_requests: int | None = None,
) -> HostSwitch:
    """The switch of ``host`` from its journal ``entries`` (the window of one deploy) and
    its deploy record (``deploy.json`` after the deploy; None if it has none)."""
    found = lives(entries)
    new = [x for x in found if x.start is not None]
    # an instance that started and stopped in the window (a failed start, a leftover the
    # switch stopped first) is not the old color: the old color started before it
    old = [x for x in found if x.start is None and (x.stopping or x.stopped or x.drain_start)]
    recorded_instances = set()
    if record is not None and isinstance(record.get("instances"), list):
        recorded_instances = {int(i) for i in record["instances"] if str(i).isdecimal()}
    serving = [x for x in new if x.stopped is None]
    recorded = bool(serving) and {x.instance for x in serving} == recorded_instances
    new_release = _label(record.get("release")) if record and recorded else None
    if record is None:
        old_release = None
    elif recorded:
        old_release = _label(record.get("previous"))
    else:  # the record still names what served before
        old_release = _label(record.get("release"))
    return HostSwitch(
        host=host,
        old_release=old_release,
        new_release=new_release,
        new=tuple(serving if recorded else new),
        old=tuple(old),
        recorded=recorded or not new,
        failed_requests=failed_requests,
    )


# -- the table --------------------------------------------------------------------------

TABLE_COLUMNS: Final = (
    "host",
    "release",
    "warm-up",
    "start->READY",
    "switch",
    "drain",
    "cut",
    "failed",
    "state",
)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def format_table(switches: Sequence[HostSwitch]) -> str:
    """The per-host table: old -> new release, warm-up, start to READY, switch, drain,
    connections cut, failed requests, state."""
    rows = [list(TABLE_COLUMNS)]
    for h in switches:
        old = h.old_release or "-"
        new = h.new_release or ("?" if h.new else old)
        rows.append(
            [
                h.host,
                f"{old} -> {new}",
                _s(h.warmup_s),
                _s(h.start_to_ready_s),
                _s(h.switch_s),
                _s(h.drain_s),
                str(h.cut),
                "?" if h.failed_requests is None else f"{h.failed_requests:,}",
                h.state,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    left = {0, 1, len(TABLE_COLUMNS) - 1}
    lines = []
    for r in rows:
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
    for h in switches:
        lines += [f"  {h.host}: {f}" for f in h.failures]
    return "\n".join(lines)


TABLE_NOTES: Final = (
    "warm-up: the longest of the new instances' (sockact's 'warm-up took'); start->READY: "
    "systemd began the first new start -> the last new instance served (READY=1); switch: "
    "that start -> the last old instance gone; drain: the longest old instance's; cut: "
    "connections the drains closed unfinished; failed: the probe's requests to that host. "
    "All from each host's journal."
)
