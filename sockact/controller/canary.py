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
``status_class``): requests are its ``_count``, errors the ``_count`` of ``5xx``, and the
p99 is estimated from its buckets the way Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

from prometheus_client.parser import text_string_to_metric_families

from sockact.errors import EXIT_CANARY_FAILED, BadInput, CanaryFailed

HISTOGRAM = "sockact_http_request_duration_seconds"


@dataclass(frozen=True)
class Stats:
    """What some instances answered: request and error counts, cumulative latency buckets."""

    requests: float = 0.0
    errors: float = 0.0
    #: upper bound (seconds, ``inf`` last) -> requests at or below it
    buckets: dict[float, float] = field(default_factory=dict)

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds, interpolated within its bucket (None: no data)."""
        if self.requests <= 0 or not self.buckets:
            return None
        rank = q * self.requests
        lower_bound, lower_count = 0.0, 0.0
        bounds = sorted(self.buckets)
        for bound in bounds:
            count = self.buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    # like histogram_quantile: the highest finite bound
                    finite = [b for b in bounds if not math.isinf(b)]
                    return finite[-1] if finite else None
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    count - lower_count
                )
            lower_bound, lower_count = bound, count
        return None

    def __add__(self, other: Stats) -> Stats:
        keys = set(self.buckets) | set(other.buckets)
        return Stats(
            self.requests + other.requests,
            self.errors + other.errors,
            {k: self.buckets.get(k, 0.0) + other.buckets.get(k, 0.0) for k in keys},
        )

    def __sub__(self, earlier: Stats) -> Stats:
        """What happened since ``earlier``; a counter that went down (restart) counts whole."""
        if self.requests < earlier.requests:
            return self
        keys = set(self.buckets) | set(earlier.buckets)
        return Stats(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            {k: self.buckets.get(k, 0.0) - earlier.buckets.get(k, 0.0) for k in keys},
        )


def parse_metrics(text: str) -> Stats:
    """The request histogram of one instance's ``/metrics`` text, summed over classes."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            klass = sample.labels.get("status_class", "")
            if sample.name == f"{HISTOGRAM}_count":
                requests += sample.value
                if klass == "5xx":
                    errors += sample.value
            elif sample.name == f"{HISTOGRAM}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Stats(requests, errors, buckets)


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

    @classmethod
    def of(cls, stats: Stats) -> Side:
        p99 = stats.quantile(0.99)
        return cls(
            int(stats.requests),
            int(stats.errors),
            round(stats.error_ratio, 5),
            None if p99 is None else round(p99 * 1000, 1),
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
            return "-" if side.p99_ms is None else f"{side.p99_ms:.1f} ms"

        lines = [
            f"canary over {self.window:.0f} s     old color      new color",
            f"  requests         {self.old.requests:>9}      {self.new.requests:>9}",
            f"  5xx              {self.old.errors:>9}      {self.new.errors:>9}",
            f"  error ratio      {self.old.error_ratio:>9.2%}      {self.new.error_ratio:>9.2%}",
            f"  p99              {p99(self.old):>9}      {p99(self.new):>9}",
            "  verdict: " + ("pass" if self.ok else "FAIL: " + "; ".join(self.reasons)),
        ]
        return "\n".join(lines)


def analyse(old: Stats, new: Stats, thresholds: Thresholds, window: float = 0.0) -> Verdict:
    """Is the new color worse than the old one over the same window?"""
    t = thresholds
    reasons: list[str] = []
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
        if old_p99 is not None and new_p99 is not None:
            limit = old_p99 * t.max_p99_ratio + t.p99_slack
            if new_p99 > limit:
                reasons.append(
                    f"p99 {new_p99 * 1000:.1f} ms > {t.max_p99_ratio:g} x old "
                    f"{old_p99 * 1000:.1f} ms + {t.p99_slack * 1000:.0f} ms"
                )
    return Verdict(not reasons, Side.of(old), Side.of(new), window, reasons)


Fetch = Callable[[str], str]


def fetch_metrics(address: str, timeout: float = 5.0) -> str:
    """GET http://<address>/metrics."""
    url = f"http://{address}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body: bytes = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise CanaryFailed(f"canary: cannot read {url}: {exc}") from exc
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

    def snapshot() -> tuple[list[Stats], list[Stats]]:
        return [parse_metrics(fetch(a)) for a in old], [parse_metrics(fetch(a)) for a in new]

    started_at = clock()
    old_before, new_before = snapshot()
    sleep(window)
    old_after, new_after = snapshot()
    ended_at = clock()
    old_delta = total(a - b for a, b in zip(old_after, old_before, strict=True))
    new_delta = total(a - b for a, b in zip(new_after, new_before, strict=True))
    verdict = analyse(old_delta, new_delta, thresholds, window)
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
        help=f"allowed rise of the 5xx ratio (default {d.max_error_increase})",
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
