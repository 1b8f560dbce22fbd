"""What one instance tells Prometheus: the ``/metrics`` of its admin server.

Each :class:`Metrics` has a ``prometheus_client`` registry of its own (not the global
one, so one process can hold several instances, as the tests do) with the standard
process, platform and garbage-collector collectors, and one collector of sockact's own
that reads plain fields kept under one lock. The request path pays one lock round trip
at the start of a request and one at the end, with a bisect into the histogram's
buckets: about 1 us of CPU per request in all, where prometheus_client's labelled Gauge,
Counter and Histogram cost 3.6-3.8 us (bench/metrics_cost.py, bench/README.md).

README.md, section Metrics, lists every metric; ``sockact canary`` reads the histogram.
"""

from __future__ import annotations

import bisect
import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sockact import __version__
from sockact.runtime.phase import Phase

log = logging.getLogger("sockact.runtime.metrics")

#: the request histogram; ``sockact canary`` (sockact/controller/canary.py) parses it
REQUEST_DURATION = "sockact_http_request_duration_seconds"
#: upper bounds of its buckets in seconds (+Inf follows): fine below 10 ms, where a fast
#: app's p99 lies, and up to 10 s
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: ``status_class`` of a request: its status' first digit, or ``none`` when it got no
#: complete response (none was written: the client went away first; or the client got it
#: cut off: the app raised after its response began, or gave fewer bytes than its
#: Content-Length)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
#: the ``status`` label of a request that got no response
NO_STATUS = 0
#: why the drain closed a connection that still had work on it
CUT_REASONS = ("drain_timeout", "unread_request")

_CLASS_OF = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class Stopwatch:
    """How long something took, or has taken so far (0 before it started)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: float | None = None
        self._stopped: float | None = None

    def start(self) -> None:
        self._started, self._stopped = self._clock(), None

    def stop(self) -> None:
        if self._started is not None and self._stopped is None:
            self._stopped = self._clock()

    def seconds(self) -> float:
        started, stopped = self._started, self._stopped
        if started is None:
            return 0.0
        return (self._clock() if stopped is None else stopped) - started


def build_labels(app: str, release_digest: str = "") -> dict[str, str]:
    """The labels of ``sockact_build_info`` for the app factory ``app`` (``module:attr``).

    ``app_distribution`` and ``app_version`` are those of the installed distribution that
    provides the factory's top-level module (empty when none does, e.g. a module on
    PYTHONPATH). ``release_digest`` identifies the release: the runtime passes the digest
    its admin ``/release`` computed at start (empty when it could not). Not ``release``: the
    scrape targets carry a ``release`` label (docs/metrics.md), and Prometheus would
    rename ours to ``exported_release``.
    """
    top = app.partition(":")[0].split(".", 1)[0]
    distribution = version = ""
    try:
        found = importlib.metadata.packages_distributions().get(top, [])
        if found:
            distribution = found[0]
            version = importlib.metadata.version(distribution)
    except Exception as exc:  # odd metadata must not stop an instance
        log.warning("cannot tell which distribution provides %r: %s", top, exc)
    return {
        "version": __version__,
        "app": app,
        "app_distribution": distribution,
        "app_version": version,
        "release_digest": release_digest,
    }


class Metrics:
    """One instance's figures: thread-safe, rendered by :meth:`exposition`."""

    def __init__(self, instance: int) -> None:
        #: the instance number, for the admin server's JSON and the logs (not a label:
        #: Prometheus adds ``instance`` to every target itself)
        self.instance = instance
        self.phase = Phase.STARTING
        #: set by the server adapter once it runs; returns the number of open connections
        self.open_connections: Callable[[], int] = lambda: 0
        #: factory, warm-up function and health gate
        self.warmup = Stopwatch()
        #: from the stop signal (or the listener's failure) to the last connection closed
        self.drain = Stopwatch()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._by_status: dict[int, int] = {}
        #: per status class: requests per bucket (not cumulative; the last one is +Inf)
        self._buckets = {klass: [0] * (len(BUCKETS) + 1) for klass in STATUS_CLASSES}
        self._sums = dict.fromkeys(STATUS_CLASSES, 0.0)
        self._cut = dict.fromkeys(CUT_REASONS, 0)
        self._accept_paused = 0
        self._build = build_labels("")
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # -- the request path (worker threads) ----------------------------------------------

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def request_finished(self, status: int, seconds: float) -> None:
        """A request is done: ``status`` 100-599 or :data:`NO_STATUS`, ``seconds`` taken."""
        klass = _CLASS_OF.get(status // 100, "none")
        slot = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self._in_flight -= 1
            self._by_status[status] = self._by_status.get(status, 0) + 1
            self._buckets[klass][slot] += 1
            self._sums[klass] += seconds

    # -- rarer events -------------------------------------------------------------------

    def connections_cut(self, reason: str, count: int) -> None:
        """Count connections the drain closed with work left on them (by ``reason``)."""
        with self._lock:
            self._cut[reason] += count

    def out_of_descriptors(self) -> None:
        """Count an episode of accept() failing for want of file descriptors."""
        with self._lock:
            self._accept_paused += 1

    def set_build_info(self, labels: dict[str, str]) -> None:
        """The labels of ``sockact_build_info`` (see :func:`build_labels`)."""
        self._build = dict(labels)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    # -- reading ------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The body and Content-Type of ``/metrics`` for the request's Accept header:
        Prometheus text 0.0.4 by default, OpenMetrics when asked for."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def render(self) -> str:
        """The Prometheus text format 0.0.4."""
        return self.exposition()[0].decode()

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            return _Snapshot(
                in_flight=self._in_flight,
                by_status=dict(self._by_status),
                buckets={k: list(v) for k, v in self._buckets.items()},
                sums=dict(self._sums),
                cut=dict(self._cut),
                accept_paused=self._accept_paused,
            )


@dataclass(frozen=True, kw_only=True)
class _Snapshot:
    """The locked fields of :class:`Metrics`, copied at once (one scrape is consistent)."""

    in_flight: int
    by_status: dict[int, int]
    buckets: dict[str, list[int]]
    sums: dict[str, float]
    cut: dict[str, int]
    accept_paused: int


#: the ``le`` labels, as prometheus_client writes them
_BOUNDS = [repr(float(b)) for b in BUCKETS] + ["+Inf"]


class _Collector(Collector):
    """sockact's own metrics, read from :class:`Metrics` at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        s = m._snapshot()
        histogram = HistogramMetricFamily(
            REQUEST_DURATION,
            "Time from a request fully read to its response handed to the connection "
            "(waiting for a worker thread included), by status class; none: no complete response.",
            labels=["status_class"],
        )
        for klass in STATUS_CLASSES:
            cumulative, total = [], 0
            for bound, count in zip(_BOUNDS, s.buckets[klass], strict=True):
                total += count
                cumulative.append((bound, float(total)))
            histogram.add_metric([klass], cumulative, s.sums[klass])
        yield histogram

        requests = CounterMetricFamily(
            "sockact_http_requests",
            "Requests answered, by HTTP status (none: no complete response).",
            labels=["status"],
        )
        for status, count in sorted(s.by_status.items()):
            requests.add_metric(["none" if status == NO_STATUS else str(status)], count)
        yield requests
        yield GaugeMetricFamily(
            "sockact_http_requests_in_flight",
            "Requests being handled now (read, and not yet answered).",
            value=s.in_flight,
        )
        yield GaugeMetricFamily(
            "sockact_http_open_connections",
            "Client connections open on the main listener.",
            value=m.open_connections(),
        )
        cut = CounterMetricFamily(
            "sockact_connections_cut",
            "Connections the drain closed with a request unfinished (drain_timeout) or "
            "unread (unread_request).",
            labels=["reason"],
        )
        for reason in CUT_REASONS:
            cut.add_metric([reason], s.cut[reason])
        yield cut
        yield CounterMetricFamily(
            "sockact_accept_paused",
            "Episodes of accept() paused for want of file descriptors (EMFILE, ENFILE).",
            value=s.accept_paused,
        )
        phase = GaugeMetricFamily(
            "sockact_phase", "Lifecycle phase: 1 for the current one.", labels=["phase"]
        )
        current = m.phase
        for each in Phase:
            phase.add_metric([each.value], 1.0 if each is current else 0.0)
        yield phase
        yield GaugeMetricFamily(
            "sockact_warmup_duration_seconds",
            "App factory, warm-up function and health gate: how long they took (or have "
            "taken so far); 0 before they start.",
            value=m.warmup.seconds(),
        )
        yield GaugeMetricFamily(
            "sockact_drain_duration_seconds",
            "How long the drain took (or has taken so far); 0 before it starts.",
            value=m.drain.seconds(),
        )
        yield InfoMetricFamily(
            "sockact_build",
            "sockact's version, the app factory, the distribution that provides it and its "
            "version, and the release digest when known.",
            value=m._build,
        )
