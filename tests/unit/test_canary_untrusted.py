"""``sockact canary`` against instances that lie, break or restart: real HTTP servers on
the loopback serve crafted ``/metrics``, one answer per reading, and the real command
reads them (the new release is untrusted: it may be broken in any of these ways)."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from sockact.cli import main
from sockact.controller import canary
from sockact.errors import EXIT_BAD_INPUT, EXIT_CANARY_FAILED, CanaryFailed
from sockact.runtime import metrics as runtime_metrics

H = canary.HISTOGRAM
#: sockact's own buckets, as the runtime exposes them
BUCKETS = runtime_metrics.BUCKETS
#: an answer to one reading: 200 with this text, or a function that writes the response
Answer = str | Callable[[BaseHTTPRequestHandler, threading.Event], None]


class Instance:
    """One instance's request histogram (and process start time), exposed the way the
    runtime exposes it (prometheus_client)."""

    def __init__(self, buckets: Sequence[float] = BUCKETS, started: float = 1.7e9) -> None:
        self.registry = CollectorRegistry()
        self.hist = Histogram(
            H, "request duration", ["status_class"], registry=self.registry, buckets=buckets
        )
        for klass in canary.STATUS_CLASSES:
            self.hist.labels(klass)
        self.start = Gauge(canary.START_TIME, "start", registry=self.registry)
        self.start.set(started)

    def serve(self, n: int, seconds: float, status_class: str = "2xx") -> Instance:
        for _ in range(n):
            self.hist.labels(status_class).observe(seconds)
        return self

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class Server:
    """A real HTTP server on 127.0.0.1: the i-th GET gets ``answers[i]`` (the last one
    repeats)."""

    def __init__(self, answers: Sequence[Answer]) -> None:
        self.answers = list(answers)
        self.readings = 0
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = outer.answers[min(outer.readings, len(outer.answers) - 1)]
                outer.readings += 1
                if isinstance(answer, str):
                    body = answer.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    answer(self, outer.stop)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def servers() -> Iterator[Callable[..., str]]:
    """``serve(answer, answer...)``: the address of a new server giving these answers."""
    made: list[Server] = []

    def serve(*answers: Answer) -> str:
        made.append(Server(answers))
        return made[-1].address

    yield serve
    for each in made:
        each.close()


def canary_cli(old: Sequence[str], new: Sequence[str], *more: str) -> int:
    argv = ["canary", "--window", "0.01", "--min-requests", "200", *more]
    argv += [f"--old={a}" for a in old] + [f"--new={a}" for a in new]
    return main(argv)


def good_old(serve: Callable[..., str]) -> str:
    """An old instance that answered 1000 requests at 4 ms during the window."""
    inst = Instance().serve(500, 0.004)
    before = inst.text()
    return serve(before, inst.serve(1000, 0.004).text())


# -- an instance that restarts, disappears or answers badly at the second reading --------


def test_a_new_instance_that_restarted_during_the_window_fails(
    servers: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """It crashed (its in-flight requests and everything it counted died with it) and,
    restarted, answered more than it had before: every counter is higher than at the
    first reading, so a plain difference sees a small, clean window."""
    before = Instance(started=1.7e9).serve(300, 0.004).serve(100, 0.004, "5xx")
    after = Instance(started=1.7e9 + 12).serve(600, 0.004).serve(100, 0.004, "5xx")
    new = servers(before.text(), after.text())
    assert canary_cli([good_old(servers)], [new]) == EXIT_CANARY_FAILED
    out = capsys.readouterr().out
    assert f"inconclusive: the new {new} instance restarted during the window" in out, out


def test_counters_that_went_down_are_a_restart_even_with_the_same_start_time(
    servers: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No process start time to go by (an exposition without the process collector), and
    a 5xx counter that went down while the total rose: the difference would be a window
    with minus 100 errors."""
    before, after = Instance().serve(1000, 0.004, "5xx"), Instance().serve(2000, 0.004)
    after.serve(900, 0.004, "5xx")
    for each in (before, after):
        each.registry.unregister(each.start)
    new = servers(before.text(), after.text())
    assert canary_cli([good_old(servers)], [new]) == EXIT_CANARY_FAILED
    assert "restarted during the window" in capsys.readouterr().out


def test_a_new_instance_gone_at_the_second_reading_fails_closed(
    servers: Callable[..., str],
) -> None:
    """It answered the first reading, then stopped during the window (nothing listens)."""
    new = Server([Instance().serve(10, 0.004).text()])
    try:
        with pytest.raises(CanaryFailed) as err:
            canary.run(
                [good_old(servers)],
                [new.address],
                0.01,
                canary.Thresholds(),
                sleep=lambda _s: new.close(),
            )
    finally:
        new.close()
    assert f"cannot read http://{new.address}/metrics" in err.value.message, err.value.message


def _unavailable(handler: BaseHTTPRequestHandler, _stop: threading.Event) -> None:
    handler.send_error(503)


def _hang_up(handler: BaseHTTPRequestHandler, _stop: threading.Event) -> None:
    handler.close_connection = True
    handler.connection.shutdown(2)


@pytest.mark.parametrize(
    ("second", "says"),
    [
        (_unavailable, "HTTP 503"),
        (_hang_up, "connection closed before any response byte"),
        ("<html><body>Bad Gateway</body></html>\n", "not Prometheus' text format"),
        ("", f"no {H} histogram"),
    ],
)
def test_a_new_instance_that_breaks_at_the_second_reading_fails_closed(
    servers: Callable[..., str], capsys: pytest.CaptureFixture[str], second: Answer, says: str
) -> None:
    new = servers(Instance().serve(10, 0.004).text(), second)
    assert canary_cli([good_old(servers)], [new]) == EXIT_CANARY_FAILED
    err = capsys.readouterr().err
    assert "sockact: error: canary: " in err and says in err and new in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_an_answer_that_trickles_fails_within_the_timeout(servers: Callable[..., str]) -> None:
    """A byte every 0.2 s: each read returns in time, the answer never ends (for 20 s)."""

    def trickle(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        body = Instance().serve(10, 0.004).text().encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        end = time.monotonic() + 20
        for i in range(len(body)):
            if stop.wait(0.2) or time.monotonic() > end:
                return
            handler.wfile.write(body[i : i + 1])
            handler.wfile.flush()

    address = servers(trickle)
    with pytest.raises(CanaryFailed) as err:
        canary.fetch_metrics(address, timeout=1.0)
    assert "no complete answer within 1 s" in err.value.message, err.value.message


def test_a_huge_answer_is_refused(servers: Callable[..., str]) -> None:
    """Valid metrics, then 24 MiB of comments: read whole, it would parse."""

    def huge(handler: BaseHTTPRequestHandler, _stop: threading.Event) -> None:
        body = (Instance().serve(10, 0.004).text() + "# x\n" * (6 << 20)).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with contextlib.suppress(OSError):  # the canary hung up: what it should do
            handler.wfile.write(body)

    address = servers(huge)
    with pytest.raises(CanaryFailed) as err:
        canary.fetch_metrics(address)
    assert "too large" in err.value.message, err.value.message


# -- expositions that must not be believed ---------------------------------------------

GOOD = f"""# TYPE {H} histogram
{H}_bucket{{status_class="2xx",le="0.005"}} 990
{H}_bucket{{status_class="2xx",le="+Inf"}} 1000
{H}_count{{status_class="2xx"}} 1000
{H}_sum{{status_class="2xx"}} 4
{H}_bucket{{status_class="5xx",le="0.005"}} 0
{H}_bucket{{status_class="5xx",le="+Inf"}} 0
{H}_count{{status_class="5xx"}} 0
{H}_sum{{status_class="5xx"}} 0
"""


def _good(*edits: tuple[str, str]) -> str:
    text = GOOD
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


COUNT_2XX = '_count{status_class="2xx"}'
SUMMARY = f'# TYPE {H} summary\n{H}{{quantile="0.99"}} 0.004\n{H}_count 1000\n{H}_sum 4\n'


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (_good((f"{COUNT_2XX} 1000", f"{COUNT_2XX} NaN")), "is nan, not a count"),
        (_good((f"{COUNT_2XX} 1000", f"{COUNT_2XX} +Inf")), "is inf, not a count"),
        (_good(('"5xx"} 0\n', '"5xx"} -50\n')), "is -50, not a count"),
        (_good(('le="+Inf"} 1000', 'le="+Inf"} 10')), "+Inf bucket (10) is not its _count"),
        (_good(('le="0.005"} 990', 'le="0.005"} 9990')), "not cumulative"),
        (GOOD + f"{H}{COUNT_2XX} 1000\n", "appears twice"),
        (_good(('"2xx",le="0.005"', '"2xx"')), "no le"),
        (_good(('le="0.005"', 'le="fast"')), "bad le"),
        (_good(('status_class="5xx",', ""), ('{status_class="5xx"}', "")), "status_class must"),
        (_good(('"5xx"', '"5XX"')), "status_class must be one of"),
        (SUMMARY, "is a summary, not a histogram"),
        ("# TYPE process_open_fds gauge\nprocess_open_fds 12\n", f"no {H} histogram"),
    ],
    ids=[
        "nan",
        "inf",
        "negative",
        "inf-bucket-below-count",
        "not-cumulative",
        "duplicate",
        "no-le",
        "bad-le",
        "no-class",
        "odd-class",
        "summary",
        "none",
    ],
)
def test_an_exposition_that_cannot_be_believed_fails_closed(
    servers: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    text: str,
    says: str,
) -> None:
    """The first reading is clean (nothing), the second has 1000 requests in a form that
    is broken: one line naming the instance and what is wrong, exit 7."""
    first = GOOD.replace(" 1000", " 0").replace(" 990", " 0").replace(" 4\n", " 0\n")
    new = servers(first, text)
    assert canary_cli([good_old(servers)], [new]) == EXIT_CANARY_FAILED, text
    err = capsys.readouterr().err
    assert f"sockact: error: canary: http://{new}/metrics: " in err and says in err, err


def test_openmetrics_and_labels_in_any_order_read_the_same() -> None:
    inst = Instance().serve(990, 0.004).serve(10, 0.2, "5xx")
    text = inst.text()
    # status_class first, then le, and a label sockact does not have
    reordered = re.sub(
        r'\{le="([^"]+)",status_class="(\w+)"\}', r'{status_class="\2",zone="a",le="\1"}', text
    )
    reordered = re.sub(
        r'(_count|_sum)\{status_class="(\w+)"\}', r'\1{zone="a",status_class="\2"}', reordered
    )
    assert reordered.count('zone="a"') == 6 * (len(BUCKETS) + 3), reordered
    om = openmetrics_latest(inst.registry).decode()  # type: ignore[no-untyped-call]
    assert om.endswith("# EOF\n"), om
    stats = [canary.parse_metrics(t) for t in (text, reordered, om)]
    assert [(s.requests, s.errors, s.buckets) for s in stats] == [
        (1000.0, 10.0, stats[0].buckets)
    ] * 3


def test_a_histogram_split_in_two_fails_closed(
    servers: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The 5xx series after another family (or OpenMetrics' _created samples between the
    series, read without "# EOF"): Prometheus' text parser starts a new family there, and
    the 5xx of the new color would go unseen (50 of 1000 here)."""
    head, _, tail = GOOD.replace('"5xx"} 0\n', '"5xx"} 50\n').partition(
        f'{H}_bucket{{status_class="5xx"'
    )
    other = "# TYPE process_open_fds gauge\nprocess_open_fds 12\n"
    split = f'{head}{other}{H}_bucket{{status_class="5xx"{tail}'
    split = (
        split.replace(f"{COUNT_2XX} 1000", f"{COUNT_2XX} 950")
        .replace('le="+Inf"} 1000', 'le="+Inf"} 950')
        .replace(" 990\n", " 940\n")
    )
    first = GOOD.replace(" 1000", " 0").replace(" 990", " 0").replace(" 4\n", " 0\n")
    new = servers(first, split)
    assert canary_cli([good_old(servers)], [new]) == EXIT_CANARY_FAILED
    err = capsys.readouterr().err
    assert f"{H}_bucket samples outside the {H} histogram" in err, err


# -- comparisons: worse must fail, good must pass --------------------------------------


def window(
    servers: Callable[..., str],
    old: Instance,
    new: Instance,
    serve_old: Callable[[Instance], object],
    serve_new: Callable[[Instance], object],
) -> int:
    before_old, before_new = old.text(), new.text()
    serve_old(old)
    serve_new(new)
    a, b = servers(before_old, old.text()), servers(before_new, new.text())
    return canary_cli([a], [b])


def test_requests_without_a_response_count_as_errors(
    servers: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """5% of the new color's requests got no response (status_class none): its clients
    saw them fail as surely as a 500."""
    rc = window(
        servers,
        Instance(),
        Instance(),
        lambda i: i.serve(1000, 0.004),
        lambda i: i.serve(950, 0.004).serve(50, 0.004, "none"),
    )
    out = capsys.readouterr().out
    assert rc == EXIT_CANARY_FAILED, out
    assert "error ratio 5.00% > old 0.00% + 1.00%" in out, out


def test_a_p99_above_the_largest_bucket_fails(
    servers: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The new release's histogram ends at 25 ms and its requests take 5 s: read as
    histogram_quantile reads it, its p99 is 25 ms, under the old 10 ms x 1.5 + 25 ms."""
    rc = window(
        servers,
        Instance(),
        Instance(buckets=(0.001, 0.005, 0.01, 0.025)),
        lambda i: i.serve(1000, 0.009),
        lambda i: i.serve(1000, 5.0),
    )
    out = capsys.readouterr().out
    assert rc == EXIT_CANARY_FAILED, out
    assert "p99 above 25.0 ms, the largest bucket bound both colors have" in out, out
    assert "> 25.0 ms" in out, out


def test_other_buckets_in_the_new_release_compare_on_the_common_ones(
    servers: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Same 4 ms requests on both colors; the new release's histogram is coarse
    (1 ms, 100 ms, 10 s). Interpolated within (1 ms, 100 ms] its p99 reads 99 ms against
    the old color's 5 ms: a good release failed. On the common bounds both read alike."""
    rc = window(
        servers,
        Instance(),
        Instance(buckets=(0.001, 0.1, 10.0)),
        lambda i: i.serve(1000, 0.004),
        lambda i: i.serve(1000, 0.004),
    )
    out = capsys.readouterr().out
    assert rc == 0, out


def test_no_common_finite_bucket_fails_closed(
    servers: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = window(
        servers,
        Instance(),
        Instance(buckets=(0.003, 0.007)),
        lambda i: i.serve(1000, 0.004),
        lambda i: i.serve(1000, 0.004),
    )
    out = capsys.readouterr().out
    assert rc == EXIT_CANARY_FAILED and "p99 cannot be compared" in out, out


@pytest.mark.parametrize("value", ["nan", "-0.01", "inf"])
def test_thresholds_that_are_not_numbers_in_range_are_bad_input(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """What the role passes (`| float | string`): NaN, negative or infinite never pass."""
    for flag in ("--max-error-increase", "--max-p99-ratio", "--p99-slack"):
        rc = canary_cli(["127.0.0.1:1"], ["127.0.0.1:1"], flag, value)
        err = capsys.readouterr().err
        assert rc == EXIT_BAD_INPUT and "invalid canary thresholds" in err, (flag, value, err)


def test_the_status_classes_are_the_runtimes() -> None:
    assert canary.STATUS_CLASSES == runtime_metrics.STATUS_CLASSES
