"""sockact.controller.probe against real servers on 127.0.0.1 made here (no mocked sockets)."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sockact.controller import probe
from sockact.controller.probe import FAILURE_KINDS, Probe, Report, Target
from sockact.errors import EXIT_PROBE_FAILED, BadInput

BODY = b'{"instance": "api@1", "version": "1.2.3"}'


Handler = Callable[[socket.socket, "Server"], None]
MakeServer = Callable[[Handler], "Server"]


def response(status: str = "200 OK", body: bytes = BODY, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


class Server:
    """A tiny threaded TCP server: ``handler(sock, server)`` runs once per connection."""

    def __init__(self, handler: Callable[[socket.socket, Server], None]) -> None:
        self.handler = handler
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port: int = self.lsock.getsockname()[1]
        self.requests = 0  # complete request heads read
        self.connections = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def target(self) -> Target:
        return Target("127.0.0.1", self.port, "/")

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self.handler(sock, self)
        except OSError:
            pass
        finally:
            sock.close()

    def read_request(self, sock: socket.socket, buf: bytearray) -> bytes | None:
        """Read one request head (GET only) from ``buf`` + socket, None at EOF."""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        i = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:i])
        del buf[:i]
        with self.lock:
            self.requests += 1
        return head

    def close(self) -> None:
        self.closing.set()
        self.lsock.close()
        with self.lock:
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def serve_ok(reply: bytes = response()) -> Callable[[socket.socket, Server], None]:
    """Well-behaved HTTP/1.1 keep-alive server that honours ``Connection: close``."""

    def handler(sock: socket.socket, srv: Server) -> None:
        buf = bytearray()
        while (head := srv.read_request(sock, buf)) is not None:
            if b"connection: close" in head.lower():
                sock.sendall(reply.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
                return
            sock.sendall(reply)

    return handler


@pytest.fixture
def make_server() -> Iterator[MakeServer]:
    servers: list[Server] = []

    def make(handler: Callable[[socket.socket, Server], None]) -> Server:
        srv = Server(handler)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.close()


def run(targets: list[Target], seconds: float = 0.3, **kw: Any) -> Report:
    with Probe(targets, **kw) as p:
        time.sleep(seconds)
    assert p.report is not None
    return p.report


def finish(targets: list[Target], limit: float = 20.0, **kw: Any) -> Report:
    """Run until the load ends by itself (max_requests or max_duration)."""
    with Probe(targets, **kw) as p:
        assert p.wait(limit), "the probe did not end by itself"
    assert p.report is not None
    return p.report


def only(report: Report, *kinds: str) -> None:
    """Every failure is one of ``kinds``, and there is at least one."""
    assert report.failed > 0, report.format_table()
    others = {k: n for k, n in report.failures.items() if n and k not in kinds}
    assert not others, report.format_table()


def test_well_behaved_keepalive_server(make_server: MakeServer) -> None:
    srv = make_server(serve_ok())
    r = run([srv.target], keepalive_clients=2, new_conn_clients=2)
    assert r.failed == 0, r.format_table()
    assert r.ok > 50
    assert r.total == srv.requests  # one request on the wire per counted request
    assert set(r.failures) == set(FAILURE_KINDS)
    assert r.samples == {("api@1", "1.2.3"): r.ok}
    assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert sum(s.ok for s in r.series) == r.ok
    # keep-alive clients kept their connection; new-connection ones opened one each
    assert r.connections < r.total
    assert r.server_closes == 0


def test_new_conn_clients_send_connection_close(make_server: MakeServer) -> None:
    srv = make_server(serve_ok())
    r = run([srv.target], keepalive_clients=0, new_conn_clients=1, max_requests=20)
    assert (r.ok, r.failed) == (20, 0)
    assert srv.connections == 20 == r.connections


def test_accept_and_close_is_empty_reply(make_server: MakeServer) -> None:
    def handler(sock: socket.socket, srv: Server) -> None:
        srv.read_request(sock, bytearray())  # read it all, then close: a clean FIN

    srv = make_server(handler)
    r = run([srv.target], keepalive_clients=1, new_conn_clients=1, max_requests=20)
    assert r.ok == 0
    assert r.failures["empty_reply"] == 20, r.format_table()


def test_linger_zero_is_reset(make_server: MakeServer) -> None:
    def handler(sock: socket.socket, srv: Server) -> None:
        srv.read_request(sock, bytearray())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    srv = make_server(handler)
    r = run([srv.target], keepalive_clients=1, new_conn_clients=1, max_requests=20)
    assert r.failures["reset"] == 20, r.format_table()


def test_closed_port_is_refused() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # bound, never listened: nothing listens there now
    r = run([Target("127.0.0.1", port)], keepalive_clients=1, new_conn_clients=1, max_requests=10)
    assert r.failures["refused"] == 10, r.format_table()
    assert r.ok == 0


def test_failures_are_counted_per_target(make_server: MakeServer) -> None:
    """./deploy's per-host table needs each host's failed requests: a bucket counts them
    by target, beside the requests per target."""
    good = make_server(serve_ok())
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = Target("127.0.0.1", s.getsockname()[1])
    s.close()
    with Probe([good.target, closed], rate=200, max_duration=0.5) as p:
        assert p.wait(10)
    r = p.report
    assert r is not None and r.total == 100
    per_target = [sum(b.targets[i] for b in r.buckets) for i in (0, 1)]
    failed = [sum(b.targets_failed[i] for b in r.buckets if b.targets_failed) for i in (0, 1)]
    assert per_target == [50, 50] and failed == [0, 50], r.format_table()
    assert r.failures["refused"] == 50 and r.ok == 50
    doc = r.to_dict()
    assert sum(b["targets_failed"][1] for b in doc["buckets"]) == 50
    assert all(b["targets_failed"][0] == 0 for b in doc["buckets"])


def test_503_is_http_5xx_and_404_http_other(make_server: MakeServer) -> None:
    s503 = make_server(serve_ok(response("503 Service Unavailable", b"warming up")))
    s404 = make_server(serve_ok(response("404 Not Found", b"no")))
    r = run([s503.target, s404.target], keepalive_clients=2, new_conn_clients=2)
    assert r.failures["http_5xx"] == s503.requests > 0, r.format_table()
    assert r.failures["http_other"] == s404.requests > 0
    assert r.total == r.failed == s503.requests + s404.requests


def test_idle_close_crossing_the_next_request_is_a_failure_not_retried(
    make_server: MakeServer,
) -> None:
    """Keep-alive server without ``Connection: close`` that closes the connection as the
    next request arrives (a broken drain): every second request fails, none retried."""

    def handler(sock: socket.socket, srv: Server) -> None:
        buf = bytearray()
        if srv.read_request(sock, buf) is None:
            return
        sock.sendall(response())  # says nothing about closing...
        srv.read_request(sock, buf)  # ...and closes when the next request comes

    srv = make_server(handler)
    r = run([srv.target], keepalive_clients=1, new_conn_clients=0, max_requests=40)
    only(r, "empty_reply", "reset")
    assert r.ok == 20 == r.failed
    assert srv.requests == r.total == 40  # each request went out exactly once


def test_close_right_after_each_response_fails_without_pause(make_server: MakeServer) -> None:
    """Server closes at once after every response, no ``Connection: close``; clients
    without pause race it: whatever the probe sees, nothing is retried or lost."""

    def handler(sock: socket.socket, srv: Server) -> None:
        if srv.read_request(sock, bytearray()) is not None:
            sock.sendall(response())

    srv = make_server(handler)
    r = run([srv.target], keepalive_clients=2, new_conn_clients=0, max_requests=200)
    assert r.total == 200
    # every request the server read was answered ok; all others never reached a live
    # connection and were counted (the server never saw them: no retry happened)
    assert r.ok == srv.requests
    assert r.failed == r.failures["empty_reply"] + r.failures["reset"]
    assert r.ok + r.failed == 200


def test_clean_close_while_idle_is_not_a_failure(make_server: MakeServer) -> None:
    def handler(sock: socket.socket, srv: Server) -> None:
        if srv.read_request(sock, bytearray()) is not None:
            sock.sendall(response())  # then FIN, long before the client's next request

    srv = make_server(handler)
    r = run([srv.target], keepalive_clients=1, new_conn_clients=0, pause=0.05, max_requests=4)
    assert (r.ok, r.failed) == (4, 0), r.format_table()
    assert r.server_closes == 3
    assert r.connections == 4 == srv.connections


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", "truncated"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "truncated"),
        (b"garbage\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad_response"),
    ],
)
def test_broken_responses(make_server: MakeServer, reply: bytes, kind: str) -> None:
    def handler(sock: socket.socket, srv: Server) -> None:
        if srv.read_request(sock, bytearray()) is not None:
            sock.sendall(reply)

    srv = make_server(handler)
    r = run([srv.target], keepalive_clients=1, new_conn_clients=1, max_requests=6)
    assert r.failures[kind] == 6, r.format_table()


def test_chunked_response_is_parsed(make_server: MakeServer) -> None:
    chunks = [BODY[:7], BODY[7:20], BODY[20:]]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
        + b"0\r\nX-Trailer: t\r\n\r\n"
    )

    def handler(sock: socket.socket, srv: Server) -> None:
        buf = bytearray()
        while srv.read_request(sock, buf) is not None:
            for i in range(0, len(reply), 5):  # dribble it: the parser must reassemble
                sock.sendall(reply[i : i + 5])

    srv = make_server(handler)
    r = run([srv.target], keepalive_clients=1, new_conn_clients=1, max_requests=10)
    assert (r.ok, r.failed) == (10, 0), r.format_table()
    assert r.samples == {("api@1", "1.2.3"): 10}
    assert srv.connections == r.connections >= 2


def test_timeout_and_bounded_stop(make_server: MakeServer) -> None:
    hold = threading.Event()

    def handler(sock: socket.socket, srv: Server) -> None:
        srv.read_request(sock, bytearray())
        hold.wait(5)  # never answers

    srv = make_server(handler)
    p = Probe([srv.target], keepalive_clients=2, new_conn_clients=2, timeout=0.3).start()
    time.sleep(0.1)
    t = time.monotonic()
    r = p.stop()
    hold.set()
    assert time.monotonic() - t < 1.0
    assert r.failures["timeout"] == 4, r.format_table()
    assert p.stop() is r  # idempotent


def test_max_duration_stops_clients_by_themselves(make_server: MakeServer) -> None:
    srv = make_server(serve_ok())
    p = Probe([srv.target], keepalive_clients=1, new_conn_clients=1, max_duration=0.2).start()
    assert p.wait(2.0)
    snap = p.snapshot()
    r = p.stop()
    assert r.ok > 0 and r.failed == 0
    assert r.total == snap.total
    assert r.duration_s < 0.5


def test_round_robin_and_snapshot(make_server: MakeServer) -> None:
    a = make_server(serve_ok(response(body=b'{"instance": "a", "version": "1"}')))
    b = make_server(serve_ok(response(body=b'{"instance": "b", "version": "2"}')))
    with Probe([a.target, b.target], keepalive_clients=2, new_conn_clients=2) as p:
        time.sleep(0.2)
        mid = p.snapshot()
        time.sleep(0.1)
    r = p.report
    assert r is not None and r.failed == 0
    assert mid.ok > 0 and r.ok >= mid.ok
    assert set(r.samples) == {("a", "1"), ("b", "2")}
    d = json.loads(r.to_json())
    assert d["ok"] == r.ok and d["failures"]["reset"] == 0
    assert "empty_reply" in r.format_table()


def test_target_from_url() -> None:
    assert Target.from_url("http://10.203.1.2:8080/") == Target("10.203.1.2", 8080, "/")
    assert Target.from_url("http://h/x?y=1") == Target("h", 80, "/x?y=1")
    assert Target.from_url("http://[::1]:81").host == "::1"
    assert Target.from_url("http://[::1]:81").url == "http://[::1]:81/"
    for bad in ("https://h/", "h:80", "http://:80/", "http://h:99999/"):
        with pytest.raises(BadInput):
            Target.from_url(bad)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    probe.add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_exit_codes(make_server: MakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    srv = make_server(serve_ok())
    url = f"http://127.0.0.1:{srv.port}/"
    assert _cli(["probe", url, "--keepalive", "1", "--new", "1", "--duration", "0.2"]) == 0
    assert "latency ms" in capsys.readouterr().out
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    s.close()
    assert _cli(["probe", dead, "--duration", "0.2", "--json"]) == EXIT_PROBE_FAILED
    assert json.loads(capsys.readouterr().out)["failures"]["refused"] > 0


# -- issue 15: nothing in the success path may end a client silently -------------------


DEEP_JSON = b'{"a": ' + b"[" * 20000 + b"]" * 20000 + b"}"


@pytest.mark.parametrize("rate", [None, 200.0])
def test_deeply_nested_json_body_is_ok_and_loses_no_client(
    make_server: MakeServer, rate: float | None
) -> None:
    """json raises RecursionError (not ValueError) on such a body: once, it ended both
    clients silently and the probe reported 0 requests."""
    srv = make_server(serve_ok(response(body=DEEP_JSON)))
    r = finish([srv.target], keepalive_clients=1, new_conn_clients=1, max_requests=20, rate=rate)
    assert (r.ok, r.failed) == (20, 0), r.format_table()
    assert not r.samples  # answered, just not sampled


@pytest.mark.parametrize("rate", [None, 200.0])
def test_exception_in_the_success_path_is_counted_internal(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch, rate: float | None
) -> None:
    def broken(body: bytes) -> Any:
        raise RuntimeError("sampling broke")

    monkeypatch.setattr(probe, "sample_of", broken)  # a bug in the probe, on purpose
    srv = make_server(serve_ok())
    r = finish([srv.target], keepalive_clients=1, new_conn_clients=1, max_requests=20, rate=rate)
    assert r.total == 20 == r.failures["internal"], r.format_table()
    assert any("sampling broke" in e for e in r.error_samples)


# -- open loop ----------------------------------------------------------------------


class Arrivals:
    """When each request head reached the server (monotonic), and its head."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: list[float] = []
        self.heads: list[bytes] = []

    def add(self, head: bytes) -> None:
        with self.lock:
            self.times.append(time.monotonic())
            self.heads.append(head)

    def between(self, a: float, b: float) -> int:
        with self.lock:
            return sum(a <= t < b for t in self.times)


def serve_logged(
    arrivals: Arrivals,
    stall: list[float] | None = None,
    delay: float = 0.0,
    reply: bytes = response(),
) -> Handler:
    """Keep-alive server logging each request; a request that arrives in the window
    ``stall = [a, b]`` (monotonic) is answered at ``b``; every answer waits ``delay``."""

    def handler(sock: socket.socket, srv: Server) -> None:
        buf = bytearray()
        while (head := srv.read_request(sock, buf)) is not None:
            arrivals.add(head)
            now = time.monotonic()
            if stall and stall[0] <= now < stall[1]:
                time.sleep(stall[1] - now)
            if delay:
                time.sleep(delay)
            if b"connection: close" in head.lower():
                sock.sendall(reply.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
                return
            sock.sendall(reply)

    return handler


def test_open_loop_stall_shows_in_the_latency_of_every_request_due_during_it(
    make_server: MakeServer,
) -> None:
    """The server answers nothing for 1 s: the requests due in that second are still
    sent on schedule (no coordinated omission), each one's latency counts from its due
    time, and the request count stays rate x duration."""
    arrivals = Arrivals()
    stall: list[float] = []
    srv = make_server(serve_logged(arrivals, stall))
    with Probe(
        [srv.target], keepalive_clients=1, new_conn_clients=1, rate=100, max_duration=3.0
    ) as p:
        t0 = time.monotonic() - p.elapsed()
        stall[:] = [t0 + 1.0, t0 + 2.0]
        assert p.wait(10)
    r = p.report
    assert r is not None
    assert (r.total, r.failed) == (300, 0), r.format_table()
    assert r.total == srv.requests
    # sent during the stall, not held back until it ended (ideal: 100)
    assert arrivals.between(*stall) >= 60, arrivals.between(*stall)
    # the first requests due in the stall waited for all of it
    assert r.max_ms >= 990, r.format_table()
    assert r.p99_ms >= 900, r.format_table()
    first = next(b for b in r.buckets if b.t == 1.0)
    assert first.ok == 10 and first.p50_ms >= 850, first
    # the window of the stall holds exactly the requests due in it
    w = p.snapshot(window=(1.0, 2.0))
    assert w.total == 100 and w.duration_s == 1.0 and w.max_ms >= 990
    assert sum(b.targets[0] for b in r.buckets) == r.total


def test_open_loop_keeps_its_rate(make_server: MakeServer) -> None:
    arrivals = Arrivals()
    srv = make_server(serve_logged(arrivals))
    with Probe(
        [srv.target], keepalive_clients=1, new_conn_clients=1, rate=200, max_duration=2.0
    ) as p:
        t0 = time.monotonic() - p.elapsed()
        assert p.wait(10)
    r = p.report
    assert r is not None
    assert (r.total, r.ok) == (400, 400), r.format_table()
    assert r.duration_s == pytest.approx(2.0) and r.rps == pytest.approx(200)
    assert r.mode == "open" and r.rate == 200 and r.schedule == "fixed"
    # what the server saw, second by second (generous: a loaded 2-core machine)
    for sec in range(2):
        n = arrivals.between(t0 + sec, t0 + sec + 1)
        assert 160 <= n <= 240, (sec, n)
    assert len(r.buckets) == 20 and all(b.ok == 20 for b in r.buckets)


def test_open_loop_poisson_is_seeded(make_server: MakeServer) -> None:
    srv = make_server(serve_ok())
    totals = []
    for _ in range(2):
        r = finish([srv.target], rate=600, schedule="poisson", seed=7, max_duration=0.5)
        assert r.failed == 0, r.format_table()
        totals.append(r.total)
    assert totals[0] == totals[1]
    assert 215 <= totals[0] <= 385  # 300 +- 5 sigma


def test_open_loop_mix_of_keepalive_and_new_connections(make_server: MakeServer) -> None:
    arrivals = Arrivals()
    srv = make_server(serve_logged(arrivals))
    r = finish([srv.target], keepalive_clients=1, new_conn_clients=3, rate=200, max_requests=200)
    assert (r.total, r.failed) == (200, 0), r.format_table()
    closing = sum(b"connection: close" in h.lower() for h in arrivals.heads)
    assert closing == 150  # exactly 3 in 4
    assert srv.connections == r.connections
    assert 150 < r.connections <= 150 + r.workers["keepalive"]


def test_open_loop_at_its_bound_waits_and_counts_what_it_could_not_send(
    make_server: MakeServer,
) -> None:
    """One worker, a server taking 100 ms, requests due every 20 ms: they queue, their
    wait is latency, and the ones that waited longer than the timeout are 'overload':
    not sent, but counted."""
    arrivals = Arrivals()
    srv = make_server(serve_logged(arrivals, delay=0.1))
    r = finish(
        [srv.target],
        keepalive_clients=1,
        new_conn_clients=0,
        rate=50,
        max_requests=30,
        timeout=1.0,
        max_in_flight=1,
    )
    assert r.total == 30, r.format_table()
    assert r.ok + r.failures["overload"] == 30, r.format_table()
    assert r.ok >= 8 and r.failures["overload"] >= 5, r.format_table()
    assert r.workers == {"keepalive": 1, "new": 0}
    assert r.pool_waits >= 20 and r.late >= 20
    assert r.max_ms >= 500  # the wait for the worker is in the latency
    assert srv.requests == r.ok  # an overload is never sent


def test_progress_callback(make_server: MakeServer) -> None:
    seen: list[dict[str, Any]] = []
    srv = make_server(serve_ok())
    r = finish(
        [srv.target], rate=100, max_duration=1.0, progress_every=0.2, on_progress=seen.append
    )
    assert len(seen) >= 3
    assert seen[-1].get("final") is True
    assert seen[-1]["requests"] == r.total == 100
    assert seen[-1]["versions"] == {"1.2.3": 100}
    assert sum(p["window"]["requests"] for p in seen) == 100  # windows do not overlap
    assert [p["requests"] for p in seen] == sorted(p["requests"] for p in seen)


def test_bad_open_loop_arguments() -> None:
    t = [Target("127.0.0.1", 1)]
    kws: tuple[dict[str, Any], ...] = (
        {"rate": 0},
        {"rate": -1},
        {"rate": float("inf")},
        {"rate": 10, "pause": 1},
        {"rate": 10, "schedule": "bursty"},
        {"rate": 10, "max_in_flight": 0},
    )
    for kw in kws:
        with pytest.raises(BadInput):
            Probe(t, **kw)
    assert probe.parse_rate("250") == (250.0, None)
    assert probe.parse_rate("50%") == (None, 0.5)
    for bad in ("", "x", "0", "-5", "0%", "nan", "2000%"):
        with pytest.raises(BadInput):
            probe.parse_rate(bad)


def test_cli_open_loop_json_and_progress_files(
    make_server: MakeServer, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = make_server(serve_ok())
    url = f"http://127.0.0.1:{srv.port}/"
    out, prog = tmp_path / "probe.json", tmp_path / "progress.jsonl"
    argv = [
        "probe",
        url,
        "--rate",
        "50%",
        "--capacity",
        "400",
        "--duration",
        "1",
        "--json",
        str(out),
        "--progress",
        str(prog),
        "--progress-every",
        "0.3",
    ]
    assert _cli(argv) == 0
    assert "open loop, 200.0 req/s" in capsys.readouterr().out  # the table, on stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == "sockact-probe/2" and doc["mode"] == "open"
    assert doc["rate"] == 200.0 and doc["total"] == 200
    assert doc["capacity"] == {"rps": 400.0, "measured": False, "fraction": 0.5}
    assert doc["started_at"] == pytest.approx(time.time(), abs=30)
    b = doc["buckets"][0]
    assert set(b) == {
        "t",
        "ok",
        "failed",
        "failures",
        "late",
        "targets",
        "targets_failed",
        "answered",
        "p50_ms",
        "p99_ms",
        "max_ms",
    }
    assert sum(x["ok"] for x in doc["buckets"]) == 200
    assert b["answered"] == [["api@1", "1.2.3", b["ok"]]]
    lines = [json.loads(x) for x in prog.read_text().splitlines()]
    assert lines and lines[-1]["final"] is True and lines[-1]["requests"] == 200


def test_cli_measure_capacity(make_server: MakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    srv = make_server(serve_ok())
    url = f"http://127.0.0.1:{srv.port}/"
    argv = ["probe", url, "--measure-capacity", "--capacity-seconds", "0.5", "--json"]
    assert _cli(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["capacity"]["rps"] > 0 and doc["capacity"]["failed"] == 0
    assert doc["report"]["mode"] == "closed"
    # and --rate P% measures it first, then runs at that fraction
    assert (
        _cli(
            [
                "probe",
                url,
                "--rate",
                "10%",
                "--capacity-seconds",
                "0.5",
                "--duration",
                "0.5",
                "--json",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["capacity"]["measured"] is True and doc["capacity"]["fraction"] == 0.1
    assert doc["rate"] == pytest.approx(doc["capacity"]["rps"] * 0.1, rel=0.01)
    assert "probe: capacity" in captured.err


@pytest.mark.parametrize(
    "extra",
    [
        ["--schedule", "poisson"],  # open loop only
        ["--capacity", "100"],
        ["--rate", "fast"],
        ["--rate", "10", "--pause", "0.1"],
        ["--json", "http://127.0.0.1:1/"],  # the URL eaten as the file name
    ],
)
def test_cli_bad_flags(extra: list[str]) -> None:
    with pytest.raises(BadInput):
        _cli(["probe", "http://127.0.0.1:1/", "--duration", "0.1", *extra])


def test_without_progress_no_latency_is_kept_twice(make_server: MakeServer) -> None:
    """The window figures of progress() need the latencies since the last call: they are
    kept only once progress is in use (an hour-long run would hold them all twice)."""
    srv = make_server(serve_ok())
    p = Probe([srv.target], rate=200, max_duration=0.6).start()
    time.sleep(0.3)
    assert not any(len(s.recent_lat) for s in p._stats)
    assert p.progress()["requests"] > 0  # counts; latencies from now on
    assert p.wait(5)
    second = p.progress()
    assert second["window"]["requests"] > 0 and second["window"]["p99_ms"] > 0
    assert p.stop().total == 120
