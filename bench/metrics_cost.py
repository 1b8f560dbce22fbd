"""What counting one request for /metrics costs, in CPU time per request.

    .venv/bin/python bench/metrics_cost.py [--requests N]

Three ways to count the same thing (in flight, requests by status, the duration histogram
by status class), each timed with ``timeit`` over N requests, best of 7, CPU time
(``time.process_time``) so that other work on the machine counts less:

- ``sockact``: what server.py does per request: the two frames it adds around waitress
  (the channel's ``service``, the parser's ``received``), two ``perf_counter`` calls, the
  status parse, :meth:`Metrics.request_started` and :meth:`Metrics.request_finished`;
- ``prometheus_client``: a labelled Gauge, Counter and Histogram, ``.labels()`` per request;
- ``prometheus_client, cached children``: the same with the labelled children looked up
  once per status (what one would do to make it cheaper).
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sockact.runtime.metrics import BUCKETS, Metrics
from sockact.runtime.server import status_code

STATUS_LINE = "200 OK"
SECONDS = 0.003


def sockact_path() -> Callable[[], None]:
    metrics = Metrics(1)

    class Parser:
        completed_at = 0.0

        def received(self) -> int:  # stands for _Parser.received around waitress's own
            consumed = 1
            if not self.completed_at:
                self.completed_at = time.perf_counter() - SECONDS
            return consumed

    request = Parser()  # waitress makes one per request anyway: not counted here

    def per_request() -> None:
        request.completed_at = 0.0
        request.received()
        metrics.request_started()
        status_sent = STATUS_LINE  # set by build_response_header
        try:
            pass  # waitress and the app
        finally:
            started = request.completed_at or time.perf_counter()
            metrics.request_finished(status_code(status_sent), time.perf_counter() - started)

    return per_request


def prometheus_client_path(cached: bool) -> Callable[[], None]:
    registry = CollectorRegistry()
    in_flight = Gauge("in_flight", "x", registry=registry)
    requests = Counter("requests", "x", ["status"], registry=registry)
    duration = Histogram(
        "duration_seconds", "x", ["status_class"], buckets=BUCKETS, registry=registry
    )
    by_status = {200: requests.labels("200")}
    by_class = {"2xx": duration.labels("2xx")}

    def per_request() -> None:
        started = time.perf_counter() - SECONDS
        in_flight.inc()
        try:
            pass
        finally:
            status = status_code(STATUS_LINE)
            klass = f"{status // 100}xx"
            in_flight.dec()
            if cached:
                by_status[status].inc()
                by_class[klass].observe(time.perf_counter() - started)
            else:
                requests.labels(str(status)).inc()
                duration.labels(klass).observe(time.perf_counter() - started)

    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    n = parser.parse_args().requests
    ways = {
        "sockact": sockact_path(),
        "prometheus_client": prometheus_client_path(cached=False),
        "prometheus_client, cached children": prometheus_client_path(cached=True),
    }
    baseline = min(timeit.Timer(lambda: None, timer=time.process_time).repeat(7, n)) / n
    print(
        f"CPU time per request, best of 7 x {n} (the empty call, {baseline * 1e6:.2f} us, "
        "subtracted)"
    )
    for name, work in ways.items():
        best = min(timeit.Timer(work, timer=time.process_time).repeat(7, n)) / n
        print(f"  {name:36} {(best - baseline) * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
