"""The admin server under idle and slow clients, over IPv6, and its /check endpoint."""

from __future__ import annotations

import contextlib
import socket
import time

from tests.integration.support import (
    TEST_APPS,
    RawConn,
    ServeFactory,
    http_get,
    http_json,
    poll,
)

IDLE_CLIENTS = 300


def test_idle_connections_hold_no_threads_and_live_still_answers(serve: ServeFactory) -> None:
    sp = serve.start("--app", f"{TEST_APPS}:create_app", demo=False, warmup=None)
    sp.wait_ready()
    threads_before = sp.threads()
    idle = []
    try:
        for _ in range(IDLE_CLIENTS):
            idle.append(socket.create_connection(("127.0.0.1", sp.admin_port), timeout=5))
        half = [socket.create_connection(("127.0.0.1", sp.admin_port), timeout=5) for _ in range(5)]
        for conn in half:  # slow clients: half a request, then nothing
            conn.sendall(b"GET /live HTTP/1.1\r\nHost: x\r\n")
        idle += half
        time.sleep(0.5)  # let the server see every one of them
        # /live answers while all of them idle (a new connection, like a health check)
        status, body = http_json(sp.admin_port, "/live", timeout=5)
        assert (status, body["live"]) == (200, True)
        threads = sp.threads()
        # the main port's 8 workers and the admin server's few: not one per connection
        assert threads <= threads_before + 8, (threads_before, threads)
        assert http_get(sp.port, "/")[0] == 200  # the main port is not affected
    finally:
        for conn in idle:
            conn.close()


def test_admin_connections_time_out(serve: ServeFactory) -> None:
    sp = serve.start("--app", f"{TEST_APPS}:create_app", demo=False, warmup=None)
    sp.wait_ready()
    silent = RawConn(sp.admin_port)
    slow = RawConn(sp.admin_port)
    slow.sock.sendall(b"GET /live HTTP/1.1\r\n")  # and never the rest
    began = time.monotonic()
    assert silent.wait_close(20) == "eof"
    assert slow.wait_close(20) == "eof"
    assert time.monotonic() - began < 20


def test_admin_server_on_ipv6_loopback(serve: ServeFactory) -> None:
    sp = serve.start("--app", f"{TEST_APPS}:create_app", demo=False, warmup=None, admin_host="::1")
    sp.wait_ready()
    status, body = http_json(sp.admin_port, "/ready", host="::1")
    assert (status, body["phase"]) == (200, "ready")
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", sp.admin_port), timeout=1),
    ):
        raise AssertionError("admin_host = ::1 also answered on 127.0.0.1")


def test_check_answers_502_when_the_app_fails_and_503_before_ready(serve: ServeFactory) -> None:
    # the gate accepts 404 (below 500), /check does not (it wants 2xx/3xx)
    sp = serve.start("--app", f"{TEST_APPS}:answers_404", demo=False, warmup=None)
    sp.wait_ready()
    status, body = sp.admin("/check")
    assert status == 502, body
    assert (body["ok"], body["status"]) == (False, 404)

    warming = serve.start(warmup=5)
    warming.wait_live()
    status, body = warming.admin("/check")
    # /live answers from the start: on a busy machine the warm-up may not have begun yet
    assert (status, body["ok"]) == (503, False), body
    assert body["phase"] in ("starting", "warming"), body


def test_check_answers_200_with_the_apps_answer(serve: ServeFactory) -> None:
    sp = serve.start("--app", f"{TEST_APPS}:create_app", demo=False, warmup=None)
    sp.wait_ready()
    status, body = poll("/check", lambda: sp.admin("/check"), 5)
    assert status == 200, body
    assert (body["ok"], body["status"], body["pid"]) == (True, 200, sp.pid)
    assert '"pid"' in body["body"]
