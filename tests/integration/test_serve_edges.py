"""Edges of the lifecycle: a drain that runs out, a stop during warm-up, a warm-up that
runs out of time, the sysctl guard."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.integration.support import (
    Netns,
    NotifySocket,
    PortWatch,
    RawConn,
    ServeFactory,
    connect_state,
    free_port_pair,
    in_flight,
    poll,
)

MakeNotify = Callable[..., NotifySocket]


def test_drain_timeout_cuts_and_says_how_many(serve: ServeFactory) -> None:
    sp = serve.start("--drain-timeout", "1", "--idle-grace", "0.2", warmup=0.2)
    sp.wait_ready()
    slow = RawConn(sp.port)
    slow.send_get("/slow?ms=8000")
    poll("/slow in flight", lambda: in_flight(sp), 5)
    began = time.monotonic()
    sp.signal(signal.SIGTERM)
    code = sp.wait_exit(timeout=6)
    took = time.monotonic() - began
    assert code == 0, sp.output()
    assert took < 4, f"drain_timeout=1 but exit took {took:.1f} s"
    assert "cut 1 connection(s)" in sp.output()
    assert slow.wait_eof(1), "the cut connection was left open"


def test_sigterm_during_warmup_exits_0_without_listening(serve: ServeFactory) -> None:
    sp = serve.start(warmup=5)
    sp.wait_live()
    sp.wait_phase("warming")
    sp.signal(signal.SIGTERM)
    assert sp.wait_exit(timeout=3) == 0, sp.output()
    assert "stopped during warm-up" in sp.output()
    assert connect_state(sp.port) == "refused"


def test_warmup_timeout_exits_3_and_never_opens_the_port(serve: ServeFactory) -> None:
    port, admin_port = free_port_pair()
    with PortWatch(port) as watch:
        sp = serve.start("--warmup-timeout", "1", port=port, admin_port=admin_port, warmup=30)
        sp.wait_live()
        assert sp.wait_exit(timeout=15) == 3, sp.output()
    (line,) = sp.log_lines("sockact: error:")
    assert "warm-up did not finish within warmup_timeout = 1 s" in line, line
    assert "Traceback" not in sp.stderr(), sp.output()
    assert len(watch.results) > 10
    assert set(watch.results) == {"refused"}, sorted(set(watch.results))


@pytest.mark.root
@pytest.mark.parametrize("value", [0, 1])
def test_require_migrate_req_follows_the_sysctl(
    serve: ServeFactory, netns: Netns, notify_socket: MakeNotify, value: int
) -> None:
    """In a namespace of the test's own, whatever the root namespace's sysctl says."""
    netns.set_migrate_req(value)
    ns = notify_socket(f"mr{value}.sock")
    sp = serve.start(
        "--require-migrate-req",
        "true",
        port=8080,
        admin_port=9001,
        warmup=0.2,
        prefix=netns.prefix,
        env={"NOTIFY_SOCKET": str(ns.path)},
    )
    if value == 0:
        assert sp.wait_exit(timeout=10) == 4, sp.output()
        (line,) = sp.log_lines("sockact: error:")
        assert "tcp_migrate_req is 0" in line and "require_migrate_req" in line, line
        assert "warming up" not in sp.stderr()  # refused before the warm-up
    else:
        ns.wait_for("READY", "1")
        assert "tcp_migrate_req" not in sp.stderr(), sp.output()
        sp.signal(signal.SIGTERM)
        assert sp.wait_exit(timeout=10) == 0, sp.output()
