"""File descriptors: the soft limit raised at start, connection_limit checked against it,
and an instance that runs out of them anyway (an app holding many files) pausing accept()
instead of spinning, with one log line per episode, and serving again once clients leave."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable

from tests.integration.support import (
    TEST_APPS,
    NotifySocket,
    ServeFactory,
    ServeProc,
    http_get,
    poll,
)

MakeNotify = Callable[..., NotifySocket]
#: systemd's default soft limit for services; the test sets the hard limit equal to it
LIMIT = 1024
PAUSED = "accept paused"


def test_soft_limit_is_raised_to_the_hard_limit(serve: ServeFactory) -> None:
    sp = serve.start(
        "--app", f"{TEST_APPS}:create_app", demo=False, warmup=None, nofile=(LIMIT, 4096)
    )
    sp.wait_ready()
    assert sp.nofile() == (4096, 4096)
    assert sp.log_lines("soft limit 4096 (raised from 1024)"), sp.output()


def test_connection_limit_that_cannot_fit_the_fd_limit_exits_2(serve: ServeFactory) -> None:
    # connection_limit defaults to 1000: with 1024 descriptors that cannot work
    sp = serve.start(
        "--app", f"{TEST_APPS}:create_app", demo=False, warmup=None, nofile=(LIMIT, LIMIT)
    )
    assert sp.wait_exit(10) == 2, sp.output()
    (line,) = sp.log_lines("sockact: error:")
    assert "connection_limit = 1000 (default)" in line and "RLIMIT_NOFILE" in line, line
    assert "at most 960" in line, line


def _flood(port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return clients


def _episode(sp: ServeProc, episodes: int) -> tuple[float, float]:
    """Fill every descriptor with idle clients; the instance must pause, not spin.

    Returns the (monotonic) window during which no descriptor was free.
    """
    clients = _flood(sp.port, 1000)
    try:
        poll(f"{PAUSED} line {episodes}", lambda: len(sp.log_lines(PAUSED)) >= episodes, 10)
        cpu_before, began = sp.cpu_seconds(), time.monotonic()
        time.sleep(3)
        cpu = sp.cpu_seconds() - cpu_before
        wall = time.monotonic() - began
        sys.stdout.write(f"\nepisode {episodes}: {cpu:.2f} s of CPU in {wall:.2f} s\n")
        # a spinning accept loop burns a whole core (measured: 2.99 s of 3 s)
        assert cpu < 0.3 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s while out of descriptors"
        assert len(sp.log_lines(PAUSED)) == episodes, sp.output()
        window = (began, time.monotonic())
    finally:
        for c in clients:
            c.close()
    # clients gone, descriptors free: it serves again (queued connections included)
    poll("a request served after the clients left", lambda: _served(sp), 15)
    return window


def _served(sp: ServeProc) -> bool:
    return http_get(sp.port, "/", timeout=2)[0] == 200


def test_out_of_descriptors_pauses_accept_without_spinning(
    serve: ServeFactory, notify_socket: MakeNotify
) -> None:
    ns = notify_socket("fd.sock")
    sp = serve.start(
        "--app",
        f"{TEST_APPS}:holds_files",
        "--connection-limit",
        "900",  # fits 1024 with sockact's reserve; the app's 300 files do not
        demo=False,
        warmup=None,
        nofile=(LIMIT, LIMIT),
        env={"HOLD_FILES": "300", "NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "2000000"},
    )
    ns.wait_for("READY", "1")
    began, ended = _episode(sp, 1)
    # the watchdog kept pinging while no descriptor was free (systemd would kill otherwise)
    pings = [m.t for m in ns.snapshot() if m.fields.get("WATCHDOG") == "1"]
    assert len([t for t in pings if began <= t <= ended]) >= 2, (began, ended, pings)
    time.sleep(2.5)  # a quiet gap (EPISODE_GAP = 2 s) so that the next flood is a new episode
    _episode(sp, 2)  # one line per episode, not one per failed accept()
    assert "Traceback" not in sp.stderr(), sp.output()
    assert sp.proc.poll() is None, sp.output()
