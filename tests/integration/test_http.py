"""HTTP on the main port as clients really send it: many keep-alive clients, pipelined
requests across a drain, a request with both Content-Length and Transfer-Encoding."""

from __future__ import annotations

import select
import signal

from tests.integration.support import TEST_APPS, RawConn, ServeFactory, in_flight, json_of, poll

APP = ["--app", f"{TEST_APPS}:create_app"]


def _answered_within(conn: RawConn, seconds: float) -> bool:
    readable, _, _ = select.select([conn.sock], [], [], seconds)
    return bool(readable)


# -- connection_limit counts client connections -------------------------------------------


def test_connection_limit_counts_client_connections(serve: ServeFactory) -> None:
    sp = serve.start(*APP, "--connection-limit", "2", demo=False, warmup=None)
    sp.wait_ready()
    first, second = RawConn(sp.port), RawConn(sp.port)
    assert first.get("/")[0] == 200
    assert second.get("/")[0] == 200  # two keep-alive clients for a limit of 2

    third = RawConn(sp.port)  # the kernel queues it; sockact must not accept it yet
    third.send_get("/")
    assert not _answered_within(third, 1.0), "a third connection was served over the limit"
    first.close()  # one leaves: the third gets its turn
    status, _headers, _body = third.read_response()
    assert status == 200
    assert second.get("/")[0] == 200


# -- Content-Length together with Transfer-Encoding ----------------------------------------


def test_content_length_and_transfer_encoding_closes_after_response(serve: ServeFactory) -> None:
    """RFC 9112 6.1: such a request may be a smuggling attempt; answer, then close."""
    sp = serve.start(*APP, demo=False, warmup=None)
    sp.wait_ready()
    conn = RawConn(sp.port)
    conn.sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    status, headers, body = conn.read_response()
    assert status == 200, body
    assert json_of(body.decode())["echo"] == "hello"  # read as chunked, as the RFC says
    assert headers.get("connection", "").lower() == "close", headers
    assert conn.wait_close(3) == "eof"

    plain = RawConn(sp.port)  # a normal request keeps its connection
    plain.send_post("/echo", b"hi")
    status, headers, _ = plain.read_response()
    assert status == 200 and "connection" not in headers, headers
    assert plain.wait_close(0.5) == "open"


# -- pipelined requests across a drain -------------------------------------------------------


def test_drain_answers_pipelined_requests_already_received(serve: ServeFactory) -> None:
    sp = serve.start(*APP, demo=False, warmup=None)
    sp.wait_ready()
    conn = RawConn(sp.port)
    conn.sock.sendall(b"GET /slow?ms=400 HTTP/1.1\r\nHost: test\r\n\r\n" * 3)
    poll("the first request in flight", lambda: in_flight(sp), 5)
    sp.signal(signal.SIGTERM)

    answers = [conn.read_response() for _ in range(3)]
    assert [status for status, _h, _b in answers] == [200, 200, 200]
    connection = [h.get("connection", "").lower() for _s, h, _b in answers]
    assert connection == ["", "", "close"], connection  # the close goes on the last one
    assert conn.wait_close(3) == "eof"
    assert sp.wait_exit(10) == 0, sp.output()
    assert "no connection cut" in sp.stderr(), sp.output()


def test_drain_answers_pipelined_get_then_post(serve: ServeFactory) -> None:
    sp = serve.start(*APP, demo=False, warmup=None)
    sp.wait_ready()
    conn = RawConn(sp.port)
    conn.sock.sendall(
        b"GET /slow?ms=400 HTTP/1.1\r\nHost: test\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello"
    )
    poll("the GET in flight", lambda: in_flight(sp), 5)
    sp.signal(signal.SIGTERM)

    status, headers, body = conn.read_response()
    assert status == 200 and json_of(body.decode())["slept_ms"] == 400
    assert "connection" not in headers, headers
    status, headers, body = conn.read_response()
    assert status == 200 and json_of(body.decode())["echo"] == "hello"
    assert headers.get("connection", "").lower() == "close", headers
    assert conn.wait_close(3) == "eof"
    assert sp.wait_exit(10) == 0, sp.output()


def test_drain_counts_what_it_cuts(serve: ServeFactory) -> None:
    """A pipelined request that is still running at drain_timeout is cut, and counted."""
    sp = serve.start(*APP, "--drain-timeout", "1", "--idle-grace", "0.2", demo=False, warmup=None)
    sp.wait_ready()
    conn = RawConn(sp.port)
    conn.sock.sendall(
        b"GET /slow?ms=200 HTTP/1.1\r\nHost: test\r\n\r\n"
        b"GET /slow?ms=5000 HTTP/1.1\r\nHost: test\r\n\r\n"
    )
    poll("the first request in flight", lambda: in_flight(sp), 5)
    sp.signal(signal.SIGTERM)
    assert conn.read_response()[0] == 200
    assert sp.wait_exit(8) == 0, sp.output()
    lines = sp.log_lines("cut 1 connection(s)")
    assert lines, sp.output()
