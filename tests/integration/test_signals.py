"""What each signal does to an instance with a request in flight (README, "Signals").

Stop signals (SIGTERM, SIGINT, SIGQUIT) drain; a second stop signal during the drain
exits 130 at once. SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.support import (
    TEST_APPS,
    RawConn,
    ServeFactory,
    ServeProc,
    in_flight,
    json_of,
    poll,
)

APP = ["--app", f"{TEST_APPS}:create_app"]


def _start_with_request_in_flight(serve: ServeFactory, ms: int) -> tuple[ServeProc, RawConn]:
    sp = serve.start(*APP, demo=False, warmup=None)
    sp.wait_ready()
    conn = RawConn(sp.port)
    conn.send_get(f"/slow?ms={ms}")
    poll("the request in flight", lambda: in_flight(sp), 5)
    return sp, conn


@pytest.mark.parametrize(
    "sig", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name
)
def test_ignored_signals_are_logged_and_change_nothing(
    serve: ServeFactory, sig: signal.Signals
) -> None:
    sp, conn = _start_with_request_in_flight(serve, 1500)
    sp.signal(sig)
    poll(f"{sig.name} logged", lambda: sp.log_lines(f"{sig.name} ignored"), 5)

    status, headers, body = conn.read_response()
    assert status == 200 and json_of(body.decode())["slept_ms"] == 1500
    assert "connection" not in headers, headers  # no drain: the connection stays usable
    assert conn.get("/")[0] == 200
    assert sp.proc.poll() is None, sp.output()
    assert sp.admin("/ready")[0] == 200
    assert len(sp.log_lines(f"{sig.name} ignored")) == 1, sp.output()

    sp.signal(signal.SIGTERM)
    assert sp.wait_exit(10) == 0, sp.output()


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name
)
def test_stop_signals_drain_the_request_in_flight(serve: ServeFactory, sig: signal.Signals) -> None:
    sp, conn = _start_with_request_in_flight(serve, 2000)
    sp.signal(sig)
    sp.wait_phase("draining", timeout=3)
    assert sp.admin("/ready")[0] == 503

    status, headers, body = conn.read_response()
    assert status == 200 and json_of(body.decode())["slept_ms"] == 2000
    assert headers.get("connection", "").lower() == "close", headers
    assert conn.wait_close(3) == "eof"
    assert sp.wait_exit(10) == 0, sp.output()
    assert sp.log_lines(f"{sig.name}: draining"), sp.output()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGINT, signal.SIGINT),
        (signal.SIGTERM, signal.SIGINT),
        (signal.SIGQUIT, signal.SIGTERM),
    ],
    ids=lambda s: s.name,
)
def test_second_stop_signal_during_drain_exits_130(
    serve: ServeFactory, first: signal.Signals, second: signal.Signals
) -> None:
    sp, conn = _start_with_request_in_flight(serve, 30000)
    sp.signal(first)
    sp.wait_phase("draining", timeout=3)
    assert sp.proc.poll() is None, sp.output()  # the 30 s request holds the drain
    began = time.monotonic()
    sp.signal(second)
    assert sp.wait_exit(5) == 130, sp.output()
    assert time.monotonic() - began < 3.0
    assert f"second stop signal ({second.name})" in sp.stderr(), sp.output()
    assert "Traceback" not in sp.stderr(), sp.output()
    conn.close()


def test_ignored_signal_during_drain_is_not_a_second_signal(serve: ServeFactory) -> None:
    sp, conn = _start_with_request_in_flight(serve, 1500)
    sp.signal(signal.SIGTERM)
    sp.wait_phase("draining", timeout=3)
    sp.signal(signal.SIGHUP)
    assert conn.read_response()[0] == 200
    assert sp.wait_exit(10) == 0, sp.output()
    assert sp.log_lines("SIGHUP ignored"), sp.output()
