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
from sockact.errors import BadInput

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
    assert _cli(["probe", dead, "--duration", "0.2", "--json"]) == probe.EXIT_PROBE_FAILED
    assert json.loads(capsys.readouterr().out)["failures"]["refused"] > 0
