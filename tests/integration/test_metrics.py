"""/metrics of a real instance after real requests, read as Prometheus reads it.

One instance for the whole module: it answers a known mix of requests (200, 404, an app
that raises, a request waitress cannot parse, a slow one), then each test reads its
/metrics: with prometheus_client's parser, with ``sockact canary``'s reader, and with
``promtool check metrics``.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sockact import __version__
from sockact.controller import canary
from sockact.controller.canary import HISTOGRAM as REQUEST_DURATION
from tests.integration.support import (
    TEST_APPS,
    VENV_BIN,
    RawConn,
    ServeFactory,
    ServeProc,
    http_get,
    in_flight,
    metric,
    poll,
    scrape,
)
from tests.needs import need

SLOW_MS = 300
#: what the module's instance is asked: status -> requests
ASKED = {200: 6, 404: 1, 500: 2, 400: 1}
#: and requests whose 200 the client got cut off: the app raised after the response began
#: (/cut), or gave fewer bytes than its Content-Length (/short)
CUT = {"/cut": b"partial", "/short": b"short"}


@dataclass
class Served:
    sp: ServeProc
    #: a keep-alive connection left open on the main port
    conn: RawConn


def _raw(port: int, request: bytes) -> bytes:
    """Send ``request`` on a connection of its own; all that comes back until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def _bad_request(port: int) -> bytes:
    """A request waitress refuses itself (Content-Length is not a number): its answer."""
    return _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    factory = ServeFactory(tmp_path_factory.mktemp("metrics"))
    conn: RawConn | None = None
    try:
        sp = factory.start(
            "--app",
            f"{TEST_APPS}:create_app",
            "--warmup",
            f"{TEST_APPS}:warmup",
            demo=False,
            warmup=None,
            env={"WARMUP": "0.3"},
        )
        sp.wait_ready()
        conn = RawConn(sp.port)  # stays open: a keep-alive client
        assert conn.get("/")[0] == 200
        for _ in range(ASKED[200] - 3):
            assert http_get(sp.port, "/")[0] == 200
        # a body through wsgi.file_wrapper is written after the task: still a whole 200
        assert http_get(sp.port, "/file")[0] == 200
        assert http_get(sp.port, f"/slow?ms={SLOW_MS}")[0] == 200
        assert http_get(sp.port, "/nope")[0] == 404
        for _ in range(ASKED[500]):
            assert http_get(sp.port, "/raise")[0] == 500
        assert _bad_request(sp.port).startswith(b"HTTP/1.1 400 ")
        for path, body in CUT.items():
            cut = _raw(sp.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert cut.startswith(b"HTTP/1.1 200 ") and cut.endswith(b"\r\n\r\n" + body), cut
        # each is counted right after its response is written: wait for the last one
        total = sum(ASKED.values()) + len(CUT)
        poll(f"{total} requests counted", lambda: _count(scrape(sp)) == total, 10)
        yield Served(sp, conn)
    finally:
        if conn is not None:
            conn.close()
        factory.close()


def _count(text: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == f"{REQUEST_DURATION}_count"
    )


def test_requests_are_counted_by_the_status_the_client_got(served: Served) -> None:
    """Waitress's own answers count too: 500 for an app that raised (before: counted
    as 200, the status a task starts with), 400 for a request it could not parse; a
    response the app cut off after it began is no complete response (``none``), not the
    200 its header said (the client got an error)."""
    text = scrape(served.sp)
    for status, count in ASKED.items():
        got = metric(text, "sockact_http_requests_total", status=str(status))
        assert got == count, (status, got, text)
    assert metric(text, "sockact_http_requests_total", status="none") == len(CUT), text
    by_class = {"2xx": 6, "4xx": 2, "5xx": 2, "1xx": 0, "3xx": 0, "none": len(CUT)}
    for klass, count in by_class.items():
        assert metric(text, f"{REQUEST_DURATION}_count", status_class=klass) == count, klass


def test_the_histogram_holds_the_requests_durations(served: Served) -> None:
    text = scrape(served.sp)
    ok = {"status_class": "2xx"}
    assert metric(text, f"{REQUEST_DURATION}_bucket", le="+Inf", **ok) == ASKED[200]
    # the slow request took at least SLOW_MS: above the 0.25 s bucket, in the sum
    below = metric(text, f"{REQUEST_DURATION}_bucket", le="0.25", **ok)
    assert below is not None and below <= ASKED[200] - 1, text
    total = metric(text, f"{REQUEST_DURATION}_sum", **ok)
    assert total is not None and total >= SLOW_MS / 1000, text


def test_no_label_named_instance(served: Served) -> None:
    """Prometheus adds ``instance`` to every target (ours became ``exported_instance``)."""
    text = scrape(served.sp)
    labels = {n for f in text_string_to_metric_families(text) for s in f.samples for n in s.labels}
    assert "instance" not in labels, sorted(labels)


def test_phase_connections_warmup_and_build_info(served: Served) -> None:
    sp = served.sp
    text = scrape(sp)
    assert metric(text, "sockact_phase", phase="ready") == 1
    assert metric(text, "sockact_phase", phase="warming") == 0
    assert metric(text, "sockact_http_requests_in_flight") == 0
    # the module's keep-alive connection, at least (a scrape's own goes to the admin port)
    connections = metric(text, "sockact_http_open_connections")
    assert connections is not None and connections >= 1
    warmup = metric(text, "sockact_warmup_duration_seconds")
    assert warmup is not None and warmup >= 0.3  # WARMUP=0.3 s, and the factory
    assert metric(text, "sockact_drain_duration_seconds") == 0
    # the release digest is the one /release reports: what this process runs
    _status, _headers, body = http_get(sp.admin_port, "/release", host=sp.admin_host)
    digest = json.loads(body)["digest"]
    assert isinstance(digest, str) and len(digest) == 64, body
    build = {
        "version": __version__,
        "app": f"{TEST_APPS}:create_app",
        "app_distribution": "",
        "app_version": "",
        "release_digest": digest,
    }
    assert metric(text, "sockact_build_info", **build) == 1, text
    for name in ("process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"):
        assert metric(text, name) is not None, name


def test_the_canary_reads_it(served: Served) -> None:
    stats = canary.parse_metrics(scrape(served.sp))
    cut = len(CUT)
    assert (stats.requests, stats.errors) == (sum(ASKED.values()) + cut, ASKED[500] + cut)
    p99 = stats.quantile(0.99)
    assert p99 is not None and p99 > 0.25  # the slow request is the top 1%


def test_promtool_check_metrics(served: Served) -> None:
    """``promtool check metrics`` (Prometheus' own linter) finds nothing to say."""
    promtool = shutil.which("promtool") or str(VENV_BIN / "promtool")
    need(shutil.which(promtool) is not None, "needs promtool (bash .ci/setup puts it in .venv)")
    text = scrape(served.sp)
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), text


def test_the_drain_is_timed_while_it_runs(serve: ServeFactory) -> None:
    """During a drain (a request still in flight): phase draining, and a drain duration
    that grows; the instance then exits 0 as always."""
    sp = serve.start("--app", f"{TEST_APPS}:create_app", demo=False, warmup=None)
    sp.wait_ready()
    conn = RawConn(sp.port)
    try:
        conn.send_get("/slow?ms=3000")
        poll("the request in flight", lambda: in_flight(sp), 5)
        sp.signal(signal.SIGTERM)
        sp.wait_phase("draining", timeout=3)
        text = scrape(sp)
        assert metric(text, "sockact_phase", phase="draining") == 1, text
        assert metric(text, "sockact_phase", phase="ready") == 0, text
        assert metric(text, "sockact_http_requests_in_flight") == 1, text
        first = metric(text, "sockact_drain_duration_seconds")
        assert first is not None and first > 0, text

        def grown() -> bool:
            later = metric(scrape(sp), "sockact_drain_duration_seconds")
            return later is not None and later > first

        poll("the drain duration growing", grown, 3)
        assert conn.read_response()[0] == 200
        assert sp.wait_exit(10) == 0, sp.output()
    finally:
        conn.close()


def test_the_canary_sees_an_instance_that_crashed_and_restarted(
    served: Served, serve: ServeFactory
) -> None:
    """Killed during the window and started again by "systemd" (here: the test), the new
    instance answers more requests than before the crash: every counter is higher at the
    second reading, yet the canary must not take the difference for a window."""
    first = serve.start("--app", f"{TEST_APPS}:create_app", demo=False, warmup=None)
    first.wait_ready()
    for _ in range(3):
        assert http_get(first.port, "/")[0] == 200
    poll("3 requests counted", lambda: _count(scrape(first)) == 3, 10)
    new = f"127.0.0.1:{first.admin_port}"

    def crash_and_restart(_seconds: float) -> None:
        first.signal(signal.SIGKILL)
        first.wait_exit(10)
        again = serve.start(
            "--app",
            f"{TEST_APPS}:create_app",
            demo=False,
            warmup=None,
            port=first.port,
            admin_port=first.admin_port,
        )
        again.wait_ready()
        for _ in range(5):
            assert http_get(again.port, "/")[0] == 200
        poll("5 requests counted", lambda: _count(scrape(again)) == 5, 10)

    old = f"127.0.0.1:{served.sp.admin_port}"
    verdict = canary.run(
        [old], [new], 1, canary.Thresholds(min_requests=1), sleep=crash_and_restart
    )
    assert not verdict.ok
    assert verdict.reasons[0].startswith(f"inconclusive: the new {new} instance restarted"), (
        verdict.reasons
    )
