"""Canary analysis: compare the new color with the old one while both serve the port.

During a blue/green switch both colors accept connections on the same port for a while.
``sockact canary`` reads every instance's ``/metrics`` at the start and at the end of a
window, takes the difference (what each color answered during the window), and compares
the new color's error rate and p99 latency with the old color's::

    sockact canary --old 127.0.0.1:9001 --old 127.0.0.1:9002 \\
        --new 127.0.0.1:9101 --new 127.0.0.1:9102 --window 30

Exit 0 when the new color is not worse, 7 when it is (or when either color answered fewer
than ``--min-requests`` requests: too little evidence fails closed), 2 on bad input.
The Ansible role runs it on the first host (or batch) of a deploy and rolls that host back
by itself on exit 7.

Both figures come from the histogram ``sockact_http_request_duration_seconds`` (label
``status_class``): requests are its ``_count``, errors the ``_count`` of ``5xx`` and of
``none`` (no complete response: none written, the connection cut, or a response the app
cut short), and the p99 is estimated from its buckets the way Prometheus'
``histogram_quantile`` does, on the bucket bounds both colors have (a release with other
buckets is compared on the ones in common).

The new release may be broken, and it is what answers half of the readings: what an
instance exposes is checked before it is believed, and whatever the comparison cannot
vouch for fails closed (exit 7), naming the instance: no ``200`` within 5 seconds
from connect to last byte, or more than 16 MiB; not Prometheus' text format or OpenMetrics; no
such histogram, or one of another type; a sample that is not a finite number >= 0, or that
appears twice; a series without a known ``status_class``; buckets that are not cumulative
or whose ``+Inf`` is not the ``_count``; an instance that restarted between the readings
(``process_start_time_seconds`` changed or a counter went down: what it answered before
the restart is lost, and a crash is what a canary is for); a p99 the histograms cannot
tell (no finite bucket bound in common, or the new color's p99 above the largest one).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from sockact.controller.httpwire import Target, WireFailure, classify, connect, read_response
from sockact.errors import EXIT_CANARY_FAILED, BadInput, CanaryFailed

HISTOGRAM = "sockact_http_request_duration_seconds"
#: the process collector's gauge: another value at the second reading means a restart
START_TIME = "process_start_time_seconds"
#: the ``status_class`` values of the histogram (sockact/runtime/metrics.py)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
#: the classes that count as errors: a 5xx, or no response at all
ERROR_CLASSES = frozenset({"5xx", "none"})
#: how long one reading of one instance may take, connect to last byte (seconds)
FETCH_TIMEOUT = 5.0
#: a family of this name holds the histogram's samples that the text parser found after
#: another family's (the histogram split in two): the rest of it would go unseen
_STRAY = frozenset(f"{HISTOGRAM}_{suffix}" for suffix in ("bucket", "count", "sum"))
#: at most this much of a parser's complaint goes into the error line
_QUOTE = 160


@dataclass(frozen=True)
class Stats:
    """What some instances answered: request and error counts, cumulative latency buckets."""

    requests: float = 0.0
    errors: float = 0.0
    #: upper bound (seconds, ``inf`` last) -> requests at or below it
    buckets: dict[float, float] = field(default_factory=dict)
    #: the instance's ``process_start_time_seconds`` (None: not exposed, or several)
    started: float | None = None
    #: every ``_count`` and ``_bucket`` sample of one reading, by series: a restart is a
    #: counter that went down
    counters: Mapping[str, float] = field(default_factory=dict, repr=False)

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def bounds(self) -> frozenset[float]:
        """The finite bucket bounds."""
        return frozenset(b for b in self.buckets if not math.isinf(b))

    def coarsened(self, bounds: Iterable[float]) -> Stats:
        """The same requests in the buckets ``bounds`` (and +Inf) only: exact, as a
        cumulative bucket's count does not depend on the others."""
        keep = set(bounds)
        buckets = {b: c for b, c in self.buckets.items() if b in keep or math.isinf(b)}
        return replace(self, buckets=buckets)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds, interpolated within its bucket as Prometheus'
        ``histogram_quantile`` does; ``inf`` when it lies above the largest finite bound
        (where histogram_quantile returns that bound: a floor, not an estimate); None
        without requests or without a finite bound."""
        count_all = self.buckets.get(math.inf, 0.0)
        if count_all <= 0 or not self.bounds():
            return None
        rank = q * count_all
        lower_bound, lower_count = 0.0, 0.0
        for bound in sorted(self.buckets):
            count = self.buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    return math.inf
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    count - lower_count
                )
            lower_bound, lower_count = bound, count
        return math.inf

    def __add__(self, other: Stats) -> Stats:
        """Both together, in the buckets both have (an empty Stats adds nothing)."""
        if not self.buckets and not self.requests:
            return other
        if not other.buckets and not other.requests:
            return self
        keys = set(self.buckets) & set(other.buckets)
        return Stats(
            self.requests + other.requests,
            self.errors + other.errors,
            {k: self.buckets[k] + other.buckets[k] for k in keys},
        )

    def since(self, earlier: Stats) -> Stats | None:
        """What was answered since ``earlier`` (a reading of the same instance); None when
        the instance restarted in between (another start time, a counter that went down
        or disappeared): what it answered before the restart is lost."""
        if self.started != earlier.started:
            return None
        if any(self.counters.get(k, -1.0) < v for k, v in earlier.counters.items()):
            return None
        keys = set(self.buckets) & set(earlier.buckets)
        delta = Stats(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            {k: self.buckets[k] - earlier.buckets[k] for k in keys},
        )
        # each reading is cumulative, yet the difference need not be: a bucket whose own
        # share went down is a counter that went down
        if _histogram_problem(delta.buckets, delta.requests) is not None:
            return None
        return delta


def _histogram_problem(buckets: Mapping[float, float], count: float) -> str | None:
    """What is wrong with cumulative ``buckets`` of ``count`` requests (None: nothing)."""
    if math.inf not in buckets:
        return "no +Inf bucket"
    if buckets[math.inf] != count:
        return f"its +Inf bucket ({buckets[math.inf]:g}) is not its _count ({count:g})"
    below = 0.0
    for bound in sorted(buckets):
        if buckets[bound] < below:
            return f"bucket le={bound:g} holds fewer than the one below it (not cumulative)"
        below = buckets[bound]
    return None


def _series_name(name: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


@dataclass
class _Series:
    count: float | None = None
    buckets: dict[float, float] = field(default_factory=dict)


def parse_metrics(text: str, source: str = "/metrics") -> Stats:
    """The request histogram of one instance's ``/metrics`` text, summed over classes.

    Raises CanaryFailed naming ``source`` when the text cannot be believed (see the module's
    docstring).
    """

    def bad(problem: str) -> CanaryFailed:
        return CanaryFailed(f"canary: {source}: {problem}")

    # OpenMetrics ends with "# EOF" (a mere comment in Prometheus' text format); read with
    # the other parser, its histograms' _created samples would split them
    openmetrics = text.rstrip("\n").endswith("\n# EOF") or text.strip() == "# EOF"
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    try:
        families = list(parse(text))
    except Exception as exc:  # the parsers raise ValueError, IndexError... on bad text
        fmt = "OpenMetrics" if openmetrics else "Prometheus' text format"
        raise bad(f"not {fmt}: {str(exc)[:_QUOTE]!r}") from None
    series: dict[tuple[tuple[str, str], ...], _Series] = {}
    counters: dict[str, float] = {}
    started: float | None = None
    for family in families:
        if family.name == START_TIME:
            started = next((s.value for s in family.samples if s.name == START_TIME), None)
            continue
        if family.name in _STRAY:
            raise bad(f"{family.name} samples outside the {HISTOGRAM} histogram")
        if family.name != HISTOGRAM:
            continue
        if family.type != "histogram":
            raise bad(f"{HISTOGRAM} is a {family.type}, not a histogram")
        for sample in family.samples:
            if sample.name not in (f"{HISTOGRAM}_bucket", f"{HISTOGRAM}_count"):
                continue
            key = _series_name(sample.name, sample.labels)
            value = float(sample.value)
            if key in counters:
                raise bad(f"{key} appears twice")
            if not (math.isfinite(value) and value >= 0):
                raise bad(f"{key} is {value:g}, not a count")
            counters[key] = value
            labels = dict(sample.labels)
            le = labels.pop("le", None)
            one = series.setdefault(tuple(sorted(labels.items())), _Series())
            if sample.name.endswith("_count"):
                one.count = value
                continue
            try:
                bound = float("nan" if le is None else le)
            except ValueError:
                bound = math.nan
            if math.isnan(bound) or bound < 0 or bound in one.buckets:
                raise bad(f"{key}: no le, a bad le, or a bucket bound given twice")
            one.buckets[bound] = value
    if not series:
        raise bad(f"no {HISTOGRAM} histogram")
    out = Stats()
    for key_labels, one in series.items():
        name = _series_name(HISTOGRAM, dict(key_labels))
        klass = dict(key_labels).get("status_class")
        if klass not in STATUS_CLASSES:
            raise bad(f"{name}: status_class must be one of {', '.join(STATUS_CLASSES)}")
        if one.count is None:
            raise bad(f"{name}: no _count")
        problem = _histogram_problem(one.buckets, one.count)
        if problem is not None:
            raise bad(f"{name}: {problem}")
        errors = one.count if klass in ERROR_CLASSES else 0.0
        out = out + Stats(one.count, errors, dict(one.buckets))
    started = started if started is not None and math.isfinite(started) else None
    return replace(out, started=started, counters=counters)


def total(stats: Iterable[Stats]) -> Stats:
    out = Stats()
    for s in stats:
        out = out + s
    return out


@dataclass(frozen=True)
class Thresholds:
    """When the new color counts as worse than the old one."""

    #: fewer requests than this on either color: not enough evidence (fails closed)
    min_requests: int = 200
    #: the new error ratio may exceed the old one by at most this (0.01 = 1 point)
    max_error_increase: float = 0.01
    #: the new p99 may be at most this times the old p99 ...
    max_p99_ratio: float = 1.5
    #: ... plus this many seconds (histogram buckets are coarse; fast apps need slack)
    p99_slack: float = 0.025

    def __post_init__(self) -> None:
        problems = []
        if self.min_requests < 1:
            problems.append(f"min_requests = {self.min_requests}: must be >= 1")
        if not 0 <= self.max_error_increase <= 1:
            problems.append(f"max_error_increase = {self.max_error_increase}: must be 0..1")
        if not 1 <= self.max_p99_ratio <= 100:
            problems.append(f"max_p99_ratio = {self.max_p99_ratio}: must be 1..100")
        if not 0 <= self.p99_slack <= 60:
            problems.append(f"p99_slack = {self.p99_slack}: must be 0..60 seconds")
        if problems:
            raise BadInput("invalid canary thresholds", details=problems)


@dataclass(frozen=True)
class Side:
    requests: int
    errors: int
    error_ratio: float
    p99_ms: float | None
    #: p99_ms is a floor: the p99 lies above the largest bucket bound compared
    p99_above: bool = False

    @property
    def exact_ratio(self) -> float:
        """errors / requests unrounded: what the verdict's reasons say (``error_ratio``
        keeps 5 decimals for the JSON; rounding that again could show another figure)."""
        return self.errors / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, stats: Stats) -> Side:
        p99 = stats.quantile(0.99)
        above = p99 is not None and math.isinf(p99)
        if above:
            p99 = max(stats.bounds())
        return cls(
            int(stats.requests),
            int(stats.errors),
            round(stats.error_ratio, 5),
            None if p99 is None else round(p99 * 1000, 1),
            above,
        )


@dataclass(frozen=True)
class Verdict:
    ok: bool
    old: Side
    new: Side
    window: float
    #: why the new color failed; empty when ok
    reasons: list[str]
    #: wall clock (Unix time) of the first and the second reading: the window compared
    started_at: float = 0.0
    ended_at: float = 0.0

    def table(self) -> str:
        """A few lines for a human: both colors side by side and the verdict."""

        def p99(side: Side) -> str:
            if side.p99_ms is None:
                return "-"
            return f"{'> ' if side.p99_above else ''}{side.p99_ms:.1f} ms"

        lines = [
            f"canary over {self.window:.0f} s     old color      new color",
            f"  requests         {self.old.requests:>9}      {self.new.requests:>9}",
            f"  5xx or none      {self.old.errors:>9}      {self.new.errors:>9}",
            f"  error ratio      {self.old.exact_ratio:>9.2%}      {self.new.exact_ratio:>9.2%}",
            f"  p99              {p99(self.old):>9}      {p99(self.new):>9}",
            "  verdict: " + ("pass" if self.ok else "FAIL: " + "; ".join(self.reasons)),
        ]
        return "\n".join(lines)


def analyse(
    old: Stats,
    new: Stats,
    thresholds: Thresholds,
    window: float = 0.0,
    restarted: Sequence[str] = (),
) -> Verdict:
    """Is the new color worse than the old one over the same window? ``restarted`` names
    the instances (``"<color> <address>"``) that restarted during it: inconclusive."""
    t = thresholds
    # the p99s are estimated on the bucket bounds both colors have
    common = old.bounds() & new.bounds()
    old, new = old.coarsened(common), new.coarsened(common)
    reasons = [
        f"inconclusive: the {each} instance restarted during the window (what it "
        "answered before is lost, a crash among it)"
        for each in restarted
    ]
    for name, stats in (("old", old), ("new", new)):
        if stats.requests < t.min_requests:
            reasons.append(
                f"inconclusive: the {name} color answered {int(stats.requests)} requests "
                f"(< min_requests {t.min_requests}; a longer window or more traffic "
                "gives enough to compare)"
            )
    if not reasons:
        if new.error_ratio > old.error_ratio + t.max_error_increase:
            reasons.append(
                f"error ratio {new.error_ratio:.2%} > old {old.error_ratio:.2%} "
                f"+ {t.max_error_increase:.2%}"
            )
        old_p99, new_p99 = old.quantile(0.99), new.quantile(0.99)
        if old_p99 is None or new_p99 is None:
            reasons.append(
                "p99 cannot be compared: the colors' histograms have no finite bucket "
                "bound in common"
            )
        elif math.isinf(new_p99):
            reasons.append(
                f"p99 above {max(common) * 1000:.1f} ms, the largest bucket bound both "
                "colors have (how far above, the histograms cannot tell)"
            )
        else:
            limit = old_p99 * t.max_p99_ratio + t.p99_slack
            if new_p99 > limit:
                reasons.append(
                    f"p99 {new_p99 * 1000:.1f} ms > {t.max_p99_ratio:g} x old "
                    f"{old_p99 * 1000:.1f} ms + {t.p99_slack * 1000:.0f} ms"
                )
    return Verdict(not reasons, Side.of(old), Side.of(new), window, reasons)


Fetch = Callable[[str], str]


def fetch_metrics(address: str, timeout: float = FETCH_TIMEOUT) -> str:
    """GET http://<address>/metrics within ``timeout`` seconds in all (connect to last
    byte: an answer that trickles fails like none); CanaryFailed unless it is a 200 of at
    most 16 MiB."""
    target = Target.from_url(f"http://{address}/metrics")
    deadline = time.monotonic() + timeout
    try:
        conn = connect(target, deadline)
        try:
            conn.sock.sendall(target.request(keepalive=False))
            status, body, _close = read_response(conn, deadline)
        finally:
            conn.close()
    except (WireFailure, OSError) as exc:
        kind, detail = classify(exc, "reading")
        if kind == "timeout":
            detail = f"no complete answer within {timeout:g} s"
        raise CanaryFailed(f"canary: cannot read {target.url}: {detail}") from None
    if status != 200:
        raise CanaryFailed(f"canary: cannot read {target.url}: HTTP {status}")
    return body.decode("utf-8", "replace")


def run(
    old: Sequence[str],
    new: Sequence[str],
    window: float,
    thresholds: Thresholds,
    *,
    fetch: Fetch = fetch_metrics,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Verdict:
    """Read every admin address, wait ``window`` seconds, read again, and compare."""

    def read(addresses: Sequence[str]) -> list[Stats]:
        return [parse_metrics(fetch(a), f"http://{a}/metrics") for a in addresses]

    restarted: list[str] = []

    def answered(color: str, addresses: Sequence[str], before: list[Stats]) -> Stats:
        parts = []
        for address, earlier, later in zip(addresses, before, read(addresses), strict=True):
            delta = later.since(earlier)
            if delta is None:
                restarted.append(f"{color} {address}")
                delta = later  # since its restart: shown, not trusted
            parts.append(delta)
        return total(parts)

    started_at = clock()
    old_before, new_before = read(old), read(new)
    sleep(window)
    old_delta = answered("old", old, old_before)
    new_delta = answered("new", new, new_before)
    ended_at = clock()
    verdict = analyse(old_delta, new_delta, thresholds, window, restarted)
    return replace(verdict, started_at=round(started_at, 3), ended_at=round(ended_at, 3))


def _command(args: argparse.Namespace) -> int:
    if args.window <= 0 or args.window > 3600:
        raise BadInput(f"--window {args.window:g}: must be more than 0 and at most 3600 s")
    thresholds = Thresholds(
        min_requests=args.min_requests,
        max_error_increase=args.max_error_increase,
        max_p99_ratio=args.max_p99_ratio,
        p99_slack=args.p99_slack,
    )
    verdict = run(args.old, args.new, args.window, thresholds)
    if args.json:
        print(json.dumps({**asdict(verdict), "table": verdict.table()}, sort_keys=True))
    else:
        print(verdict.table())
    sys.stdout.flush()
    return 0 if verdict.ok else EXIT_CANARY_FAILED


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact canary``."""
    p = sub.add_parser(
        "canary",
        help="compare the new color's errors and p99 with the old color's while both serve",
        description="Read /metrics of every old and new instance, wait --window seconds, "
        "read again, and compare what each color answered in between. Exit 0: the new "
        "color is not worse; 7: it is, or there were too few requests to tell.",
        epilog="example: sockact canary --old 127.0.0.1:9001 --new 127.0.0.1:9101 --window 30",
    )
    p.add_argument(
        "--old", action="append", required=True, metavar="HOST:PORT", help="admin address"
    )
    p.add_argument(
        "--new", action="append", required=True, metavar="HOST:PORT", help="admin address"
    )
    p.add_argument("--window", type=float, default=30.0, help="seconds (default 30)")
    d = Thresholds()
    p.add_argument("--min-requests", type=int, default=d.min_requests, help="per color")
    p.add_argument(
        "--max-error-increase",
        type=float,
        default=d.max_error_increase,
        help=f"allowed rise of the error ratio (5xx or none) (default {d.max_error_increase})",
    )
    p.add_argument(
        "--max-p99-ratio",
        type=float,
        default=d.max_p99_ratio,
        help=f"new p99 <= ratio x old p99 + slack (default {d.max_p99_ratio})",
    )
    p.add_argument(
        "--p99-slack", type=float, default=d.p99_slack, help=f"seconds (default {d.p99_slack})"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the verdict as one JSON line (with the table as 'table')",
    )
    p.set_defaults(func=_command)
