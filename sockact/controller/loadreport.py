"""What a probe run reports: 100 ms buckets, seconds, the :class:`Report`, and the
per-thread counters they are made from (:mod:`sockact.controller.probe` runs the load).

JSON (:meth:`Report.to_dict`, ``sockact probe --json FILE``): see README.md.
"""

from __future__ import annotations

import json
import math
import threading
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sockact.controller.httpwire import SampleKey

#: every failure kind, in report order
FAILURE_KINDS: Final[tuple[str, ...]] = (
    "refused",
    "reset",
    "empty_reply",
    "truncated",
    "timeout",
    "http_5xx",
    "http_other",
    "bad_response",
    "overload",
    "internal",
    "other",
)

#: the version of the JSON report's layout (``Report.to_dict``)
SCHEMA: Final = "sockact-probe/2"
#: width of a :class:`Bucket`, seconds
BUCKET_S: Final = 0.1
PER_SECOND: Final = 10  # buckets per second
#: an open-loop request sent this long after its due time counts as ``late``
LATE_AFTER_MS: Final = 10.0
MAX_ERROR_SAMPLES: Final = 20


# -- what a run reports -------------------------------------------------------------


@dataclass(frozen=True)
class Second:
    """One second of the run (``t`` seconds after start): for plots."""

    t: int
    ok: int
    failed: int
    max_ms: float
    p99_ms: float = 0.0


@dataclass(frozen=True)
class Bucket:
    """The requests due (open loop) or started (closed loop) in ``[t, t + 0.1 s)``."""

    i: int  # index: the bucket starts i * BUCKET_S seconds after the start
    ok: int
    failures: Mapping[str, int]  # kinds with a count > 0 only
    targets: tuple[int, ...]  # requests per target, in the order of Report.targets
    answered: tuple[tuple[str | None, str | None, int], ...]  # (instance, version, ok count)
    late: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: failed requests per target, in the order of Report.targets (empty: none failed)
    targets_failed: tuple[int, ...] = ()

    @property
    def t(self) -> float:
        return round(self.i * BUCKET_S, 3)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "ok": self.ok,
            "failed": self.failed,
            "failures": dict(self.failures),
            "late": self.late,
            "targets": list(self.targets),
            "targets_failed": list(self.targets_failed) or [0] * len(self.targets),
            "answered": [[inst, ver, n] for inst, ver, n in self.answered],
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


@dataclass(frozen=True)
class Report:
    """What the probe saw. ``failures`` always has every kind of FAILURE_KINDS."""

    ok: int
    failures: Mapping[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    duration_s: float
    rps: float
    #: (instance, version) -> count, for ok responses whose body is a JSON object with
    #: an "instance" or "version" key (a missing key is None)
    samples: Counter[SampleKey]
    series: tuple[Second, ...]
    #: texts of the first "other" errors (and a few details of the rest)
    error_samples: tuple[str, ...]
    #: TCP connections opened
    connections: int
    #: idle keep-alive connections found closed cleanly before a request (not failures)
    server_closes: int
    targets: tuple[str, ...] = ()
    keepalive_clients: int = 0
    new_conn_clients: int = 0
    #: "closed" (clients as fast as they can) or "open" (requests due at ``rate`` per s)
    mode: str = "closed"
    rate: float | None = None
    schedule: str | None = None
    #: wall clock (Unix time) of t = 0: align other events with the buckets
    started_at: float = 0.0
    buckets: tuple[Bucket, ...] = ()
    #: open loop: requests sent LATE_AFTER_MS or more after their due time
    late: int = 0
    lag_p99_ms: float = 0.0
    lag_max_ms: float = 0.0
    #: open loop: requests that found every worker of their kind busy at the bound
    pool_waits: int = 0
    #: open loop: workers started per kind {"keepalive": n, "new": n}
    workers: Mapping[str, int] = field(default_factory=dict)
    max_in_flight: int = 0
    #: (from, to) seconds after start, when this report covers only that window
    window: tuple[float, float] | None = None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def to_dict(self) -> dict[str, Any]:
        """The JSON report; see ``sockact probe --help`` and README.md for the schema."""
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "started_at": round(self.started_at, 3),
            "targets": list(self.targets),
            "keepalive_clients": self.keepalive_clients,
            "new_conn_clients": self.new_conn_clients,
            "rate": self.rate,
            "schedule": self.schedule,
            "max_in_flight": self.max_in_flight,
            "window": None if self.window is None else list(self.window),
            "duration_s": round(self.duration_s, 3),
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "failures": dict(self.failures),
            "rps": round(self.rps, 1),
            "latency_ms": {
                "p50": round(self.p50_ms, 3),
                "p90": round(self.p90_ms, 3),
                "p99": round(self.p99_ms, 3),
                "max": round(self.max_ms, 3),
            },
            "late": self.late,
            "send_lag_ms": {"p99": round(self.lag_p99_ms, 3), "max": round(self.lag_max_ms, 3)},
            "pool_waits": self.pool_waits,
            "workers": dict(self.workers),
            "connections": self.connections,
            "server_closes": self.server_closes,
            "samples": [
                {"instance": inst, "version": ver, "count": n}
                for (inst, ver), n in self.samples.most_common()
            ],
            "series": [
                {
                    "t": s.t,
                    "ok": s.ok,
                    "failed": s.failed,
                    "p99_ms": round(s.p99_ms, 3),
                    "max_ms": round(s.max_ms, 3),
                }
                for s in self.series
            ],
            "bucket_s": BUCKET_S,
            "buckets": [b.to_dict() for b in self.buckets],
            "error_samples": list(self.error_samples),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def format_table(self) -> str:
        if self.mode == "open":
            load = (
                f"load       open loop, {self.rate:,.1f} req/s ({self.schedule}), "
                f"keep-alive : new-connection = {self.keepalive_clients} : "
                f"{self.new_conn_clients}, {self.duration_s:.1f} s"
            )
        else:
            load = (
                f"clients    {self.keepalive_clients} keep-alive + "
                f"{self.new_conn_clients} new-connection, {self.duration_s:.1f} s"
            )
        lines = [
            f"targets    {' '.join(self.targets)}",
            load,
            f"requests   {self.total:>10,}  ({self.rps:,.0f}/s)",
            f"ok         {self.ok:>10,}",
            f"FAILED     {self.failed:>10,}" if self.failed else f"failed     {self.failed:>10,}",
        ]
        lines += [f"  {kind:<12} {self.failures.get(kind, 0):>8,}" for kind in FAILURE_KINDS]
        lines.append(
            f"latency ms p50 {self.p50_ms:.2f}  p90 {self.p90_ms:.2f}  "
            f"p99 {self.p99_ms:.2f}  max {self.max_ms:.2f}"
            + ("  (from each request's due time)" if self.mode == "open" else "")
        )
        if self.mode == "open":
            lines.append(
                f"sending    {self.late:,} late (>= {LATE_AFTER_MS:g} ms after due), lag p99 "
                f"{self.lag_p99_ms:.2f} ms max {self.lag_max_ms:.2f} ms; "
                f"{self.pool_waits:,} waited for a worker; workers "
                + ", ".join(f"{k} {v}" for k, v in self.workers.items())
                + f" (bound {self.max_in_flight} per kind)"
            )
        lines.append(
            f"connections {self.connections:,} opened, {self.server_closes:,} idle ones "
            "closed cleanly by the server"
        )
        if self.samples:
            lines.append("served by (instance, version):")
            lines += [
                f"  {inst!s:<20} {ver!s:<12} {n:>8,}"
                for (inst, ver), n in self.samples.most_common()
            ]
        if self.error_samples:
            lines.append("error samples:")
            lines += [f"  {e}" for e in self.error_samples]
        return "\n".join(lines)


# -- counting ---------------------------------------------------------------------------


class BucketCounts:
    __slots__ = ("answered", "failures", "lat", "late", "ok", "targets", "targets_failed")

    def __init__(self, ntargets: int) -> None:
        self.ok = 0
        self.late = 0
        self.failures: Counter[str] = Counter()
        self.targets = [0] * ntargets
        self.targets_failed = [0] * ntargets
        self.answered: Counter[SampleKey] = Counter()
        self.lat = array("d")

    def merge(self, other: BucketCounts) -> None:
        self.ok += other.ok
        self.late += other.late
        self.failures.update(other.failures)
        for i, n in enumerate(other.targets):
            self.targets[i] += n
        for i, n in enumerate(other.targets_failed):
            self.targets_failed[i] += n
        self.answered.update(other.answered)
        self.lat.extend(other.lat)


class Stats:
    """One client's (or worker's) counters; written by its thread, read by snapshots."""

    def __init__(self, ntargets: int, track_recent: bool = False) -> None:
        self.ntargets = ntargets
        self.lock = threading.Lock()
        self.buckets: dict[int, BucketCounts] = {}
        self.errors: list[str] = []
        self.error_kinds: Counter[str] = Counter()
        self.connections = 0
        self.server_closes = 0
        self.lags = array("f")  # open loop: send lag of every request, ms
        # since the last progress(): taken and reset by it; kept only once progress is in
        # use, or an hour-long run would hold every latency twice
        self.track_recent = track_recent
        self.recent_lat = array("d")
        self.recent_ok = 0
        self.recent_failures: Counter[str] = Counter()
        self.recent_answered: Counter[SampleKey] = Counter()
        # whole run, for cheap progress lines
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.answered: Counter[SampleKey] = Counter()
        self.late = 0

    def record(
        self,
        due: float,
        target: int,
        kind: str | None,
        ms: float,
        sample: SampleKey | None,
        detail: str = "",
        lag_ms: float | None = None,
    ) -> None:
        """One request: ``kind`` None is a success taking ``ms`` (due is seconds after t0)."""
        # + 1 us: a due time computed as t0 + k / rate must land in its own bucket
        i = max(0, int(due * PER_SECOND + 1e-5))
        with self.lock:
            b = self.buckets.get(i)
            if b is None:
                b = self.buckets[i] = BucketCounts(self.ntargets)
            b.targets[target] += 1
            if lag_ms is not None:
                self.lags.append(lag_ms)
                if lag_ms >= LATE_AFTER_MS:
                    b.late += 1
                    self.late += 1
            if kind is None:
                b.ok += 1
                b.lat.append(ms)
                self.ok += 1
                self.recent_ok += 1
                if self.track_recent:
                    self.recent_lat.append(ms)
                if sample is not None:
                    b.answered[sample] += 1
                    self.answered[sample] += 1
                    self.recent_answered[sample] += 1
                return
            b.failures[kind] += 1
            b.targets_failed[target] += 1
            self.failures[kind] += 1
            self.recent_failures[kind] += 1
            self.error_kinds[kind] += 1
            if len(self.errors) < MAX_ERROR_SAMPLES and (
                kind in ("other", "internal") or self.error_kinds[kind] <= 2
            ):
                self.errors.append(f"{kind}: {detail}")

    def take_recent(self) -> tuple[array[float], int, Counter[str], Counter[SampleKey]]:
        with self.lock:
            out = (self.recent_lat, self.recent_ok, self.recent_failures, self.recent_answered)
            self.recent_lat = array("d")
            self.recent_ok = 0
            self.recent_failures = Counter()
            self.recent_answered = Counter()
        return out


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]


def by_version(answered: Mapping[SampleKey, int]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for (_inst, ver), n in answered.items():
        out[str(ver)] += n
    return dict(out.most_common())
