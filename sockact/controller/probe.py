"""A load probe that never retries and counts every failed request by kind.

Every handover test and benchmark uses it to prove "zero failed requests of any kind".
It speaks HTTP/1.1 over raw sockets (stdlib only, :mod:`sockact.controller.httpwire`) so
that nothing between the probe and the server can retry, reconnect or swallow an error.

Two kinds of connections:

* keep-alive: a connection is reused. A new one is opened only when the server said
  ``Connection: close`` (or answered HTTP/1.0 without keep-alive, or ended the body by
  closing), or when the server had already closed the idle connection cleanly (FIN)
  *before* the next request was sent: that close is seen with a zero-timeout poll just
  before sending, is not a failure, and is counted in :attr:`Report.server_closes`.
  A close that crosses the next request on the wire shows up as ``empty_reply`` or
  ``reset`` and IS a failure: the request is never retried.
* new-connection: one connection per request, with ``Connection: close``.

Two ways to send load:

* **closed loop** (default): ``keepalive_clients`` + ``new_conn_clients`` threads, each
  sending its next request as soon as the previous one ended (client ``i`` of a kind
  uses ``targets[i % len(targets)]``). It finds what the server can do, and saturates it.
  Latency runs from the moment the client starts a request (the connect, when it needs
  a new connection, then the send) to the last byte of the response: a SYN dropped by a
  full accept queue (a 1 s stall) shows up, so connect time is in.
* **open loop** (``rate=R``): a scheduler thread gives every request a *due time*, R per
  second (a fixed interval, or Poisson arrivals), whatever the server does, and hands it
  to a pool of worker threads per connection kind. Requests alternate between the kinds
  in the ratio ``keepalive_clients : new_conn_clients``, and go round-robin over the
  targets within each kind. Latency runs from the **due time**, not from when the probe
  got round to sending: a server stall shows in the latency of every request that fell
  due during it (no coordinated omission). A slow response holds only its own worker:
  an idle worker takes the next request (the most recently idle one first, so that few
  keep-alive connections stay hot), and a new worker (with its own connections) is
  started when none is idle, up to ``max_in_flight`` per kind. At that bound a request
  waits for the next free worker: the wait is part of its latency, and the wait is
  counted in :attr:`Report.pool_waits`. A request that waited ``timeout`` seconds and is
  still not sent (every worker busy, or the probe starved of CPU) is not sent at all: it
  is the failure ``overload``, counted, never dropped. Once sent, a request has
  ``timeout`` seconds to complete (``timeout`` failure). A request sent 10 ms or more after its due
  time (:data:`LATE_AFTER_MS`) is counted as ``late`` (not a failure: its latency says
  how late). No slot is ever skipped: ``total`` is exactly the number of due times.

Every request is recorded in the 100 ms :class:`Bucket` its due time (open loop) or start
(closed loop) falls in: by target, by the (instance, version) that answered (read from a
JSON object body that has an ``instance`` or ``version`` key), by failure kind, with the
latencies of its successful requests. An exception inside the probe itself (a bug) is
the failure ``internal``: it is counted, the connection dropped, and the client goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import random
import sys
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from sockact.controller.httpwire import (
    Conn,
    SampleKey,
    Target,
    WireFailure,
    classify,
    connect,
    read_response,
    sample_of,
)
from sockact.controller.loadreport import (
    BUCKET_S,
    FAILURE_KINDS,
    LATE_AFTER_MS,
    MAX_ERROR_SAMPLES,
    PER_SECOND,
    SCHEMA,
    Bucket,
    BucketCounts,
    Report,
    Second,
    Stats,
    by_version,
    percentile,
)
from sockact.errors import EXIT_PROBE_FAILED, BadInput

__all__ = [
    "BUCKET_S",
    "DEFAULT_MAX_IN_FLIGHT",
    "FAILURE_KINDS",
    "LATE_AFTER_MS",
    "SCHEMA",
    "Bucket",
    "Probe",
    "Report",
    "SampleKey",
    "Second",
    "Target",
    "format_progress",
    "measure_capacity",
]

DEFAULT_MAX_DURATION: Final = 600.0
#: open loop: workers (each a request in flight) per connection kind, at most
DEFAULT_MAX_IN_FLIGHT: Final = 256
_INITIAL_WORKERS: Final = 8  # started up front, so that a short blip does not spawn threads
SCHEDULES: Final = ("fixed", "poisson")


# -- the probe --------------------------------------------------------------------------


_Job = tuple[float, int]  # (due time, monotonic; target index)


class _Worker:
    """An open-loop worker thread: one request at a time, its own connections."""

    def __init__(self, keepalive: bool) -> None:
        self.keepalive = keepalive
        self.inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()


class _Pool:
    def __init__(self) -> None:
        self.workers: list[_Worker] = []
        self.idle: list[_Worker] = []  # a stack: the most recently idle worker goes first
        self.backlog: deque[_Job] = deque()


class Probe:
    """Load on one or more targets from threads; :meth:`stop` returns the :class:`Report`.

    Never retries. Closed loop (``rate`` None): clients stop by themselves after
    ``max_duration`` seconds or once ``max_requests`` requests (over all clients) were
    started. Open loop (``rate`` requests/s): requests fall due for ``max_duration``
    seconds or until ``max_requests`` fell due. ``timeout`` is a request's whole budget
    from its send (connect, send, response); in open loop, a request that waited
    ``timeout`` for a free worker is ``overload`` instead of being sent. :meth:`stop`
    waits for the requests in flight, so it returns within about ``timeout`` + 1 s
    (closed loop) or 2 x ``timeout`` + 1 s (open loop).

    ``on_progress`` (with ``progress_every`` seconds) is called from a thread of the
    probe with :meth:`progress`'s dict, and once more (``"final": True``) by :meth:`stop`.

    Example, 200 requests/s for 10 s::

        with Probe([Target.from_url("http://127.0.0.1:8080/")], rate=200,
                   max_duration=10) as p:
            p.wait()
        print(p.report.format_table())
    """

    def __init__(
        self,
        targets: Sequence[Target],
        keepalive_clients: int = 6,
        new_conn_clients: int = 6,
        timeout: float = 5.0,
        pause: float = 0.0,
        max_requests: int | None = None,
        max_duration: float = DEFAULT_MAX_DURATION,
        *,
        rate: float | None = None,
        schedule: str = "fixed",
        seed: int | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        progress_every: float = 2.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not targets:
            raise BadInput("probe: no target")
        if (
            keepalive_clients < 0
            or new_conn_clients < 0
            or (keepalive_clients + new_conn_clients == 0)
        ):
            raise BadInput("probe: need at least one client, and no negative counts")
        if timeout <= 0 or pause < 0 or max_duration <= 0:
            raise BadInput("probe: timeout and max_duration must be > 0, pause >= 0")
        if max_requests is not None and max_requests < 0:
            raise BadInput("probe: max_requests must be >= 0")
        if rate is not None:
            if not (rate > 0 and math.isfinite(rate)):
                raise BadInput(f"probe: rate must be > 0 requests/s, not {rate}")
            if pause:
                raise BadInput("probe: pause applies to closed-loop load only, not with a rate")
        if schedule not in SCHEDULES:
            raise BadInput(f"probe: schedule must be one of {', '.join(SCHEDULES)}")
        if max_in_flight < 1:
            raise BadInput("probe: max_in_flight must be >= 1")
        if progress_every <= 0:
            raise BadInput("probe: progress_every must be > 0")
        self.targets = tuple(targets)
        self.keepalive_clients = keepalive_clients
        self.new_conn_clients = new_conn_clients
        self.timeout = timeout
        self.pause = pause
        self.max_requests = max_requests
        self.max_duration = max_duration
        self.rate = rate
        self.schedule = schedule
        self.seed = seed
        self.max_in_flight = max_in_flight
        self.progress_every = progress_every
        self.on_progress = on_progress
        self._requests = {ka: tuple(t.request(ka) for t in self.targets) for ka in (True, False)}
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self._started = 0
        self._threads: list[threading.Thread] = []
        self._stats: list[Stats] = []
        self._t0 = 0.0
        self._wall0 = 0.0
        self._hard_end = 0.0
        self._end: float | None = None
        self._alive = 0
        self._report: Report | None = None
        self._extra_errors: list[str] = []
        # open loop
        self._pools = {True: _Pool(), False: _Pool()}
        self._pool_lock = threading.Lock()
        self._drained = threading.Condition(self._pool_lock)
        self._outstanding = 0
        self._pool_waits = 0
        self._scheduler: threading.Thread | None = None
        self._last_progress = 0.0
        #: keep the latencies since the last progress() (for its window figures)
        self._track_recent = on_progress is not None

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "open"

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> Probe:
        if self._threads or self._scheduler is not None:
            raise RuntimeError("probe already started")
        self._wall0 = time.time()
        self._t0 = time.monotonic()
        self._last_progress = self._t0
        self._hard_end = self._t0 + self.max_duration
        if self.rate is None:
            self._start_closed()
        else:
            with self._pool_lock:
                for ka, weight in ((True, self.keepalive_clients), (False, self.new_conn_clients)):
                    for _ in range(min(_INITIAL_WORKERS, self.max_in_flight) if weight else 0):
                        self._pools[ka].idle.append(self._spawn(ka))
            self._scheduler = threading.Thread(
                target=self._schedule_loop, name="probe-scheduler", daemon=True
            )
            self._scheduler.start()
        if self.on_progress is not None:
            threading.Thread(target=self._progress_loop, name="probe-progress", daemon=True).start()
        return self

    def _start_closed(self) -> None:
        clients = [(True, i) for i in range(self.keepalive_clients)]
        clients += [(False, i) for i in range(self.new_conn_clients)]
        self._alive = len(clients)
        for n, (keepalive, i) in enumerate(clients):
            stats = Stats(len(self.targets), self._track_recent)
            self._stats.append(stats)
            kind = "ka" if keepalive else "new"
            t = threading.Thread(
                target=self._client,
                args=(stats, i % len(self.targets), keepalive),
                name=f"probe-{kind}-{n}",
                daemon=True,
            )
            self._threads.append(t)
        for t in self._threads:
            t.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the load ended by itself (and, open loop, every request ended)."""
        end = None if timeout is None else time.monotonic() + timeout

        def left() -> float:
            return 0.2 if end is None else min(0.2, end - time.monotonic())

        threads = list(self._threads)
        if self._scheduler is not None:
            threads.append(self._scheduler)
        for t in threads:
            while t.is_alive():
                if left() <= 0:
                    return False
                t.join(left())
        if self._scheduler is not None:
            with self._drained:
                while self._outstanding:
                    if left() <= 0:
                        return False
                    self._drained.wait(left())
        return True

    def stop(self) -> Report:
        """Stop sending, wait for requests in flight, return the final report."""
        if self._report is not None:
            return self._report
        now = time.monotonic()
        with self._lock:
            if self._end is None:
                self._end = min(now, self._hard_end)
        self._stop_evt.set()
        self.wait(self.timeout * (1 if self.rate is None else 2) + 1.0)
        if self.on_progress is not None:
            self._emit_progress(final=True)
        report = self.snapshot()
        self._report = report
        with self._pool_lock:
            for pool in self._pools.values():
                for w in pool.workers:
                    w.inbox.put(None)
        return report

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def report(self) -> Report | None:
        """The final report once :meth:`stop` ran."""
        return self._report

    @property
    def started_at(self) -> float:
        """Wall clock (Unix time) of t = 0 (0.0 before :meth:`start`)."""
        return self._wall0

    def elapsed(self) -> float:
        """Seconds since start (monotonic): the time base of buckets and windows."""
        return time.monotonic() - self._t0

    # -- reports ------------------------------------------------------------------

    def snapshot(self, window: tuple[float, float] | None = None) -> Report:
        """A report of everything counted so far (the load goes on).

        With ``window=(a, b)``: only the requests due (open loop) or started (closed
        loop) from ``a`` to ``b`` seconds after start, rounded to 100 ms buckets; its
        duration is ``b - a``. Connections, server closes, send lags and error samples
        are always the whole run's.
        """
        merged: dict[int, BucketCounts] = {}
        errors: list[str] = []
        lags = array("f")
        connections = server_closes = 0
        lo = hi = None
        if window is not None:
            lo = round(window[0] * PER_SECOND)
            hi = round(window[1] * PER_SECOND)
        for s in list(self._stats):
            with s.lock:
                for i, b in s.buckets.items():
                    if lo is not None and hi is not None and not lo <= i < hi:
                        continue
                    m = merged.get(i)
                    if m is None:
                        m = merged[i] = BucketCounts(len(self.targets))
                    m.merge(b)
                errors.extend(s.errors)
                lags.extend(s.lags)
                connections += s.connections
                server_closes += s.server_closes
        errors.extend(self._extra_errors)
        ok = late = 0
        failures: Counter[str] = Counter()
        samples: Counter[SampleKey] = Counter()
        all_lat = array("d")
        seconds: dict[int, list[BucketCounts]] = {}
        buckets: list[Bucket] = []
        for i in sorted(merged):
            b = merged[i]
            ok += b.ok
            late += b.late
            failures.update(b.failures)
            samples.update(b.answered)
            all_lat.extend(b.lat)
            seconds.setdefault(i // PER_SECOND, []).append(b)
            lat = sorted(b.lat)
            buckets.append(
                Bucket(
                    i=i,
                    ok=b.ok,
                    failures={k: b.failures[k] for k in FAILURE_KINDS if b.failures[k]},
                    targets=tuple(b.targets),
                    answered=tuple(
                        (inst, ver, n)
                        for (inst, ver), n in sorted(b.answered.items(), key=lambda kv: str(kv[0]))
                    ),
                    late=b.late,
                    p50_ms=percentile(lat, 0.50),
                    p99_ms=percentile(lat, 0.99),
                    max_ms=lat[-1] if lat else 0.0,
                    targets_failed=tuple(b.targets_failed) if any(b.targets_failed) else (),
                )
            )
        series = []
        for sec, bs in sorted(seconds.items()):
            lat = sorted(x for b in bs for x in b.lat)
            series.append(
                Second(
                    sec,
                    sum(b.ok for b in bs),
                    sum(sum(b.failures.values()) for b in bs),
                    lat[-1] if lat else 0.0,
                    percentile(lat, 0.99),
                )
            )
        if window is not None:
            duration = max(0.0, window[1] - window[0])
        elif not self._threads and self._scheduler is None:
            duration = 0.0
        else:
            with self._lock:
                end = self._end
            duration = (min(time.monotonic(), self._hard_end) if end is None else end) - self._t0
        ordered = sorted(all_lat)
        lags_sorted = sorted(lags)
        total = ok + sum(failures.values())
        return Report(
            ok=ok,
            failures={k: failures.get(k, 0) for k in FAILURE_KINDS},
            p50_ms=percentile(ordered, 0.50),
            p90_ms=percentile(ordered, 0.90),
            p99_ms=percentile(ordered, 0.99),
            max_ms=ordered[-1] if ordered else 0.0,
            duration_s=duration,
            rps=total / duration if duration > 0 else 0.0,
            samples=samples,
            series=tuple(series),
            error_samples=tuple(errors[:MAX_ERROR_SAMPLES]),
            connections=connections,
            server_closes=server_closes,
            targets=tuple(t.url for t in self.targets),
            keepalive_clients=self.keepalive_clients,
            new_conn_clients=self.new_conn_clients,
            mode=self.mode,
            rate=self.rate,
            schedule=None if self.rate is None else self.schedule,
            started_at=self._wall0,
            buckets=tuple(buckets),
            late=late,
            lag_p99_ms=percentile(lags_sorted, 0.99),
            lag_max_ms=lags_sorted[-1] if lags_sorted else 0.0,
            pool_waits=self._pool_waits,
            workers={
                name: len(self._pools[ka].workers)
                for name, ka in (("keepalive", True), ("new", False))
            }
            if self.rate is not None
            else {},
            max_in_flight=self.max_in_flight if self.rate is not None else 0,
            window=window,
        )

    def progress(self) -> dict[str, Any]:
        """Counts so far, and the figures of the responses since the last call.

        Cheap enough to call every second during an hour-long run. Keys: ``t`` (seconds
        since start), ``requests``, ``ok``, ``failed``, ``failures`` (kinds > 0),
        ``late``, ``in_flight`` (open loop), ``versions`` ({version: ok responses}), and
        ``window``: ``{"s", "requests", "ok", "failed", "failures", "rps", "p99_ms",
        "max_ms", "versions"}`` for the responses that ended since the previous call
        (without ``on_progress``, the first call's window has counts but no latencies).
        """
        now = time.monotonic()
        with self._lock:
            since = self._last_progress
            self._last_progress = now
        if not self._track_recent:  # the first call: window latencies from now on
            self._track_recent = True
            for s in list(self._stats):
                s.track_recent = True
        ok = late = 0
        failures: Counter[str] = Counter()
        answered: Counter[SampleKey] = Counter()
        w_lat = array("d")
        w_ok = 0
        w_fail: Counter[str] = Counter()
        w_ans: Counter[SampleKey] = Counter()
        for s in list(self._stats):
            lat, n_ok, fails, ans = s.take_recent()
            w_lat.extend(lat)
            w_ok += n_ok
            w_fail.update(fails)
            w_ans.update(ans)
            with s.lock:
                ok += s.ok
                late += s.late
                failures.update(s.failures)
                answered.update(s.answered)
        with self._pool_lock:
            in_flight = self._outstanding
        lat_sorted = sorted(w_lat)
        span = max(now - since, 1e-9)
        w_total = w_ok + sum(w_fail.values())
        return {
            "t": round(now - self._t0, 3),
            "requests": ok + sum(failures.values()),
            "ok": ok,
            "failed": sum(failures.values()),
            "failures": {k: failures[k] for k in FAILURE_KINDS if failures[k]},
            "late": late,
            "in_flight": in_flight,
            "versions": by_version(answered),
            "window": {
                "s": round(span, 3),
                "requests": w_total,
                "ok": w_ok,
                "failed": w_total - w_ok,
                "failures": {k: w_fail[k] for k in FAILURE_KINDS if w_fail[k]},
                "rps": round(w_total / span, 1),
                "p99_ms": round(percentile(lat_sorted, 0.99), 3),
                "max_ms": round(lat_sorted[-1], 3) if lat_sorted else 0.0,
                "versions": by_version(w_ans),
            },
        }

    def _emit_progress(self, final: bool = False) -> None:
        assert self.on_progress is not None
        try:
            p = self.progress()
            if final:
                p["final"] = True
            self.on_progress(p)
        except Exception as exc:  # a broken callback must not stop the load
            with self._lock:
                if len(self._extra_errors) < 3:
                    self._extra_errors.append(f"progress callback: {type(exc).__name__}: {exc}")

    def _progress_loop(self) -> None:
        while not self._stop_evt.wait(self.progress_every):
            self._emit_progress()

    # -- one request --------------------------------------------------------------

    def _exchange(
        self, stats: Stats, conns: dict[int, Conn], ti: int, keepalive: bool, deadline: float
    ) -> tuple[str | None, str, SampleKey | None]:
        """Send one request on a kept or new connection: (failure kind or None, detail, sample)."""
        conn = conns.pop(ti, None)  # put back only if it may be reused
        stage = "connect"
        try:
            if conn is not None:
                stage = "reuse"
                if conn.closed_while_idle():
                    with stats.lock:
                        stats.server_closes += 1
                    conn.close()
                    conn = None
            if conn is None:
                stage = "connect"
                conn = connect(self.targets[ti], deadline)
                with stats.lock:
                    stats.connections += 1
            stage = "send"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WireFailure("timeout", "no time left to send")
            conn.sock.settimeout(remaining)
            conn.sock.sendall(self._requests[keepalive][ti])
            stage = "response"
            status, body, must_close = read_response(conn, deadline)
        except Exception as exc:  # every failure is counted, none is retried
            if conn is not None:
                conn.close()
            kind, detail = classify(exc, stage)
            return kind, detail, None
        if keepalive and not must_close:
            conns[ti] = conn
        else:
            conn.close()
        if 200 <= status < 300:
            return None, "", sample_of(body)
        if status >= 500:
            return "http_5xx", f"HTTP {status}", None
        return "http_other", f"HTTP {status}", None

    def _one(
        self,
        stats: Stats,
        conns: dict[int, Conn],
        ti: int,
        keepalive: bool,
        due: float,
        lag_ms: float | None,
    ) -> None:
        """One request due at ``due`` (monotonic), counted exactly once whatever happens.

        It gets ``timeout`` seconds from now (its send) to its last response byte; its
        latency counts from ``due``.
        """
        try:
            deadline = time.monotonic() + self.timeout
            kind, detail, sample = self._exchange(stats, conns, ti, keepalive, deadline)
            ms = (time.monotonic() - due) * 1000.0
            stats.record(due - self._t0, ti, kind, ms, sample, detail, lag_ms)
        except Exception as exc:
            # a bug of the probe itself: count it, drop the connections, go on
            for c in conns.values():
                c.close()
            conns.clear()
            stats.record(
                due - self._t0, ti, "internal", 0.0, None, f"{type(exc).__name__}: {exc}", lag_ms
            )

    # -- closed loop --------------------------------------------------------------

    def _claim(self) -> bool:
        """May this client start one more request?"""
        if self._stop_evt.is_set() or time.monotonic() >= self._hard_end:
            return False
        with self._lock:
            if self.max_requests is not None and self._started >= self.max_requests:
                return False
            self._started += 1
            return True

    def _client(self, stats: Stats, ti: int, keepalive: bool) -> None:
        conns: dict[int, Conn] = {}
        try:
            while self._claim():
                self._one(stats, conns, ti, keepalive, time.monotonic(), None)
                if self.pause and self._stop_evt.wait(self.pause):
                    break
        finally:
            for c in conns.values():
                c.close()
            with self._lock:
                self._alive -= 1
                if self._alive == 0 and self._end is None:
                    self._end = time.monotonic()

    # -- open loop ----------------------------------------------------------------

    def _spawn(self, keepalive: bool) -> _Worker:
        """A new worker (call with _pool_lock held)."""
        w = _Worker(keepalive)
        stats = Stats(len(self.targets), self._track_recent)
        self._stats.append(stats)
        pool = self._pools[keepalive]
        pool.workers.append(w)
        kind = "ka" if keepalive else "new"
        threading.Thread(
            target=self._worker,
            args=(w, stats),
            name=f"probe-{kind}-{len(pool.workers)}",
            daemon=True,
        ).start()
        return w

    def _dispatch(self, keepalive: bool, job: _Job) -> None:
        pool = self._pools[keepalive]
        with self._pool_lock:
            self._outstanding += 1
            if pool.idle:
                pool.idle.pop().inbox.put(job)
            elif len(pool.workers) < self.max_in_flight:
                self._spawn(keepalive).inbox.put(job)
            else:
                pool.backlog.append(job)
                self._pool_waits += 1

    def _schedule_loop(self) -> None:
        rate = self.rate
        assert rate is not None
        rng = random.Random(self.seed)
        ka_w, new_w = self.keepalive_clients, self.new_conn_clients
        total_w = ka_w + new_w
        per_kind = {True: 0, False: 0}
        k = 0
        due = self._t0
        end: float | None = None
        try:
            while True:
                if self.schedule == "poisson":
                    due += rng.expovariate(rate)
                else:
                    due = self._t0 + k / rate
                if due >= self._hard_end:
                    end = self._hard_end
                    break
                if self.max_requests is not None and k >= self.max_requests:
                    end = due
                    break
                left = due - time.monotonic()
                if left > 0 and self._stop_evt.wait(left):
                    break
                if self._stop_evt.is_set():
                    break
                # spread the kinds evenly in the ratio ka_w : new_w (Bresenham)
                keepalive = ((k + 1) * ka_w) // total_w > (k * ka_w) // total_w
                ti = per_kind[keepalive] % len(self.targets)
                per_kind[keepalive] += 1
                self._dispatch(keepalive, (due, ti))
                k += 1
        finally:
            with self._lock:
                if self._end is None:
                    self._end = end if end is not None else min(time.monotonic(), self._hard_end)

    def _worker(self, w: _Worker, stats: Stats) -> None:
        conns: dict[int, Conn] = {}
        pool = self._pools[w.keepalive]
        try:
            job = w.inbox.get()
            while job is not None:
                due, ti = job
                try:
                    start = time.monotonic()
                    lag_ms = (start - due) * 1000.0
                    if start - due >= self.timeout:
                        stats.record(
                            due - self._t0,
                            ti,
                            "overload",
                            0.0,
                            None,
                            f"waited {start - due:.2f} s to be sent "
                            f"({len(pool.workers)} workers of this kind, bound "
                            f"{self.max_in_flight})",
                            lag_ms,
                        )
                    else:
                        self._one(stats, conns, ti, w.keepalive, due, lag_ms)
                except Exception as exc:  # never lose a worker, nor the count
                    with contextlib.suppress(Exception):
                        stats.record(due - self._t0, ti, "internal", 0.0, None, f"worker: {exc!r}")
                next_job: _Job | None = None
                with self._pool_lock:
                    self._outstanding -= 1
                    if pool.backlog:
                        next_job = pool.backlog.popleft()
                    else:
                        pool.idle.append(w)
                    if self._outstanding == 0:
                        self._drained.notify_all()
                job = next_job if next_job is not None else w.inbox.get()
        finally:
            for c in conns.values():
                c.close()


def measure_capacity(
    targets: Sequence[Target],
    seconds: float = 3.0,
    keepalive_clients: int = 6,
    new_conn_clients: int = 6,
    timeout: float = 5.0,
) -> Report:
    """A short closed-loop burst: its ``ok / duration_s`` is the capacity (requests/s).

    What it measures is what the targets and this client machine can do together, with
    the same mix of keep-alive and new connections as the load. It saturates the targets
    for ``seconds``.
    """
    with Probe(
        targets,
        keepalive_clients=keepalive_clients,
        new_conn_clients=new_conn_clients,
        timeout=timeout,
        max_duration=seconds,
    ) as p:
        p.wait()
    assert p.report is not None
    return p.report


def capacity_of(report: Report) -> float:
    """Successful requests per second of a :func:`measure_capacity` report."""
    return report.ok / report.duration_s if report.duration_s > 0 else 0.0


def format_progress(p: Mapping[str, Any]) -> str:
    """One line for a human from a :meth:`Probe.progress` dict."""
    w = p["window"]
    total = sum(p["versions"].values())
    versions = (
        " ".join(f"{v} {100 * n / total:.0f}%" for v, n in p["versions"].items()) if total else "-"
    )
    wtotal = sum(w["versions"].values())
    now = " ".join(f"{v} {100 * n / wtotal:.0f}%" for v, n in w["versions"].items())
    fails = ", ".join(f"{k} {n}" for k, n in p["failures"].items())
    return (
        f"t {p['t']:6.1f}s  requests {p['requests']:,} ({w['rps']:,.0f}/s)  "
        f"failed {p['failed']:,}{f' ({fails})' if fails else ''}  "
        f"p99 {w['p99_ms']:.1f} ms max {w['max_ms']:.0f} ms  "
        f"versions {versions}{f' (now {now})' if now else ''}"
    )


# -- command line -----------------------------------------------------------------


def parse_rate(text: str) -> tuple[float | None, float | None]:
    """``"500"`` -> (500.0, None) requests/s; ``"50%"`` -> (None, 0.5) of the capacity."""
    raw = text.strip()
    pct = raw.endswith("%")
    try:
        value = float(raw[:-1] if pct else raw)
    except ValueError:
        raise BadInput(f"probe: --rate {text!r}: a number of requests/s, or N%") from None
    if not (value > 0 and math.isfinite(value)) or (pct and value > 1000):
        raise BadInput(f"probe: --rate {text!r}: must be > 0 (and at most 1000%)")
    return (None, value / 100.0) if pct else (value, None)


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact probe URL [URL ...]``."""
    p = sub.add_parser(
        "probe",
        help="load one or more URLs, count every failed request by kind (never retries)",
        description=(
            "Send GET requests on keep-alive and new connections, never retrying, and "
            "report every failure by kind: " + ", ".join(FAILURE_KINDS) + ". "
            "Closed loop by default (clients as fast as they can); --rate sends requests "
            "on a schedule (open loop) and measures each latency from its due time."
        ),
        epilog=(
            f"Exit codes: 0 every request succeeded (2xx); {EXIT_PROBE_FAILED} any request "
            "failed, or no request was made; 2 bad input. Ctrl-C stops early and still "
            "writes the report. JSON report (--json): see README.md, 'sockact probe'."
        ),
    )
    p.add_argument("urls", nargs="+", metavar="URL", help="http://HOST:PORT/PATH")
    p.add_argument(
        "--keepalive",
        type=int,
        default=6,
        metavar="N",
        help="closed loop: keep-alive clients; open loop: weight of keep-alive requests",
    )
    p.add_argument(
        "--new",
        type=int,
        default=6,
        metavar="N",
        help="closed loop: clients with a new connection each; open loop: their weight",
    )
    p.add_argument("--duration", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="budget of one request")
    p.add_argument(
        "--pause",
        type=float,
        default=0.0,
        metavar="S",
        help="closed loop: sleep between a client's requests",
    )
    p.add_argument(
        "--rate",
        metavar="R|P%",
        help="open loop: R requests/s over all targets, or P%% of the capacity "
        "(measured first with a short closed-loop burst, unless --capacity is given)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="fixed",
        help="open loop: fixed interval (default) or Poisson arrivals",
    )
    p.add_argument("--seed", type=int, help="open loop: seed of the Poisson schedule")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        metavar="N",
        help="open loop: requests in flight per connection kind, at most (default "
        f"{DEFAULT_MAX_IN_FLIGHT}); beyond, a request waits and its wait is latency",
    )
    p.add_argument(
        "--capacity",
        type=float,
        metavar="RPS",
        help="the capacity --rate P%% is taken of, instead of measuring it",
    )
    p.add_argument(
        "--measure-capacity",
        action="store_true",
        help="only measure the capacity (closed loop, --capacity-seconds) and print it",
    )
    p.add_argument("--capacity-seconds", type=float, default=3.0, metavar="S")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the JSON report to FILE (the table still goes to stdout); "
        "without FILE, or '-': print the JSON instead of the table",
    )
    p.add_argument(
        "--progress",
        metavar="FILE",
        help="every --progress-every seconds append one JSON line of progress to FILE; "
        "'-': a line for humans on stderr",
    )
    p.add_argument("--progress-every", type=float, default=2.0, metavar="S")
    p.set_defaults(func=run_probe)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BadInput(f"probe: cannot write {path}: {exc.strerror or exc}") from None


class _ProgressOut:
    """The --progress sink: JSON lines to a file, or human lines to stderr."""

    def __init__(self, dest: str) -> None:
        self.human = dest == "-"
        self.fh: IO[str] = sys.stderr
        if not self.human:
            try:
                self.fh = open(dest, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise BadInput(f"probe: --progress {dest}: {exc.strerror or exc}") from None

    def __call__(self, p: dict[str, Any]) -> None:
        self.fh.write((f"probe: {format_progress(p)}" if self.human else json.dumps(p)) + "\n")
        self.fh.flush()

    def close(self) -> None:
        if not self.human:
            self.fh.close()


def _check_args(args: argparse.Namespace) -> None:
    if args.duration <= 0:
        raise BadInput("probe: --duration must be > 0")
    if args.json not in (None, "-") and "://" in args.json:
        raise BadInput(
            f"probe: --json {args.json!r} looks like a URL: put the URLs before --json, "
            "or write --json - for stdout"
        )
    if args.rate is None:
        for flag, value, default in (
            ("--schedule", args.schedule, "fixed"),
            ("--seed", args.seed, None),
            ("--capacity", args.capacity, None),
            ("--max-in-flight", args.max_in_flight, DEFAULT_MAX_IN_FLIGHT),
        ):
            if value != default:
                raise BadInput(f"probe: {flag} applies to open-loop load only (with --rate)")
    if args.capacity is not None and not (args.capacity > 0 and math.isfinite(args.capacity)):
        raise BadInput("probe: --capacity must be > 0 requests/s")
    if args.capacity_seconds <= 0:
        raise BadInput("probe: --capacity-seconds must be > 0")
    if args.progress_every <= 0:
        raise BadInput("probe: --progress-every must be > 0")


def run_probe(args: argparse.Namespace) -> int:
    """Handler of ``sockact probe``: run, print the report, return 0 or 6."""
    targets = [Target.from_url(u) for u in args.urls]
    _check_args(args)
    rate, fraction = parse_rate(args.rate) if args.rate is not None else (None, None)
    capacity: dict[str, Any] | None = None
    if args.measure_capacity or (fraction is not None and args.capacity is None):
        cap = measure_capacity(
            targets, args.capacity_seconds, args.keepalive, args.new, args.timeout
        )
        capacity = {
            "rps": round(capacity_of(cap), 1),
            "seconds": round(cap.duration_s, 3),
            "requests": cap.total,
            "failed": cap.failed,
            "measured": True,
        }
        line = (
            f"capacity {capacity['rps']:,.0f} req/s (closed loop, {args.keepalive} keep-alive "
            f"+ {args.new} new-connection clients, {cap.duration_s:.1f} s, "
            f"{cap.failed} failed)"
        )
        if args.measure_capacity:
            if args.json is not None:
                text = json.dumps({"capacity": capacity, "report": cap.to_dict()}, indent=2)
                if args.json == "-":
                    print(text)
                else:
                    _write_atomic(Path(args.json), text + "\n")
                    print(line)
            else:
                print(line)
            return 0 if cap.failed == 0 and cap.total > 0 else EXIT_PROBE_FAILED
        print(f"probe: {line}", file=sys.stderr)
        if cap.failed or cap.ok == 0:
            print(
                "probe: the capacity burst saw failed requests (or none answered): "
                "not starting the load",
                file=sys.stderr,
            )
            return EXIT_PROBE_FAILED
        time.sleep(0.5)  # let the targets settle after the burst
    if fraction is not None:
        base = capacity["rps"] if capacity is not None else args.capacity
        if capacity is None:
            capacity = {"rps": args.capacity, "measured": False}
        rate = max(base * fraction, 0.1)
        capacity["fraction"] = fraction
        print(
            f"probe: open loop at {rate:,.1f} req/s ({fraction:.0%} of {base:,.0f})",
            file=sys.stderr,
        )
    progress = _ProgressOut(args.progress) if args.progress else None
    try:
        probe = Probe(
            targets,
            keepalive_clients=args.keepalive,
            new_conn_clients=args.new,
            timeout=args.timeout,
            pause=args.pause,
            max_duration=args.duration,
            rate=rate,
            schedule=args.schedule,
            seed=args.seed,
            max_in_flight=args.max_in_flight,
            progress_every=args.progress_every,
            on_progress=progress,
        )
        probe.start()
        try:
            probe.wait()
        except KeyboardInterrupt:
            print("probe: interrupted, stopping", file=sys.stderr)
        finally:
            report = probe.stop()
    finally:
        if progress is not None:
            progress.close()
    doc = report.to_dict()
    if capacity is not None:
        doc["capacity"] = capacity
    if args.json == "-":
        print(json.dumps(doc, indent=2))
    else:
        if args.json is not None:
            _write_atomic(Path(args.json), json.dumps(doc) + "\n")
        print(report.format_table())
    return 0 if report.failed == 0 and report.total > 0 else EXIT_PROBE_FAILED
