"""Listeners beyond TCP on 127.0.0.1: an inherited unix socket (nginx in front), IPv6 and
dual-stack in reuseport mode, and what an instance does when its listener breaks."""

from __future__ import annotations

import json
import signal
import socket
import textwrap
from collections.abc import Callable
from pathlib import Path

from sockact import errors
from tests.integration.support import (
    PYTHON,
    ROOT,
    TEST_APPS,
    Netns,
    NotifySocket,
    RawConn,
    ServeFactory,
    connect_state,
    free_port,
    http_json,
    in_flight,
    json_of,
    listening_inodes,
    poll,
)
from tests.needs import need_tool

MakeNotify = Callable[..., NotifySocket]
APP = ["--app", f"{TEST_APPS}:create_app"]
FDEXEC = [PYTHON, str(ROOT / "bench" / "fdexec.py")]


def _inherit(sock: socket.socket) -> list[str]:
    """The prefix that hands ``sock`` to sockact as systemd would (LISTEN_FDS, name http)."""
    return [*FDEXEC, str(sock.fileno()), "http", "--"]


# -- a listener that breaks while serving ------------------------------------------------


def test_listener_error_leaves_ready_drains_and_exits_8(serve: ServeFactory) -> None:
    shared = socket.create_server(("127.0.0.1", 0))  # we keep a handle on the same socket
    port = shared.getsockname()[1]
    sp = serve.start(
        *APP,
        "--listen",
        "inherit",
        port=port,
        demo=False,
        warmup=None,
        prefix=_inherit(shared),
        pass_fds=[shared.fileno()],
    )
    sp.wait_ready()
    conn = RawConn(port)
    conn.send_get("/slow?ms=1500")
    poll("the request in flight", lambda: in_flight(sp), 5)

    shared.shutdown(socket.SHUT_RDWR)  # the listener stops listening under the instance
    sp.wait_phase("failed", timeout=5)
    status, body = sp.admin("/ready")
    assert (status, body["ready"]) == (503, False)
    assert connect_state(port) == "refused"

    status, headers, body = conn.read_response()  # what it had is still answered
    assert status == 200 and json_of(body.decode())["slept_ms"] == 1500
    assert headers.get("connection", "").lower() == "close", headers
    assert sp.wait_exit(10) == errors.EXIT_LISTENER_FAILED == 8, sp.output()
    (line,) = sp.log_lines("sockact: error:")
    assert "listener" in line, line
    assert "Traceback" not in sp.stderr(), sp.output()
    shared.close()


def test_sigterm_after_a_listener_error_ends_without_traceback(serve: ServeFactory) -> None:
    shared = socket.create_server(("127.0.0.1", 0))
    port = shared.getsockname()[1]
    sp = serve.start(
        *APP,
        "--listen",
        "inherit",
        port=port,
        demo=False,
        warmup=None,
        prefix=_inherit(shared),
        pass_fds=[shared.fileno()],
    )
    sp.wait_ready()
    conn = RawConn(port)
    conn.send_get("/slow?ms=3000")
    poll("the request in flight", lambda: in_flight(sp), 5)
    shared.shutdown(socket.SHUT_RDWR)
    sp.wait_phase("failed", timeout=5)
    sp.signal(signal.SIGTERM)  # systemd stops it while it drains what it had
    assert conn.read_response()[0] == 200
    assert sp.wait_exit(10) == errors.EXIT_LISTENER_FAILED == 8, sp.output()
    assert "Traceback" not in sp.stderr(), sp.output()
    shared.close()


def test_inherited_socket_that_does_not_listen_exits_4_before_warmup(
    serve: ServeFactory,
) -> None:
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))  # bound, never listen()
    port = bound.getsockname()[1]
    sp = serve.start(
        "--listen",
        "inherit",
        port=port,
        warmup=10,
        prefix=_inherit(bound),
        pass_fds=[bound.fileno()],
    )
    assert sp.wait_exit(10) == 4, sp.output()
    (line,) = sp.log_lines("sockact: error:")
    assert "not listening" in line, line
    assert "warming up" not in sp.stderr()
    bound.close()


# -- an inherited unix socket --------------------------------------------------------------


def test_inherited_unix_socket_serves_and_drains(serve: ServeFactory, tmp_path: Path) -> None:
    activate = need_tool("systemd-socket-activate", "systemd")
    path = tmp_path / "api.sock"
    sp = serve.start(
        *APP,
        "--listen",
        "inherit",
        demo=False,
        warmup=None,
        # systemd-socket-activate passes on only the environment it is told to
        prefix=[activate, "-l", str(path), "--fdname=http", "-E", "PYTHONPATH"],
    )
    poll("the unix socket", path.exists, 10)
    first = RawConn(unix=path)  # systemd-socket-activate execs sockact on this one
    status, _headers, body = first.get("/")
    assert status == 200 and json_of(body.decode())["pid"] == sp.pid
    assert sp.admin("/ready")[0] == 200
    assert sp.log_lines(f"serving on inherited from systemd unix:{path}"), sp.output()

    slow = RawConn(unix=path)
    slow.send_get("/slow?ms=1500")
    poll("the request in flight", lambda: in_flight(sp), 5)
    sp.signal(signal.SIGTERM)
    status, headers, body = slow.read_response()
    assert status == 200 and json_of(body.decode())["slept_ms"] == 1500
    assert headers.get("connection", "").lower() == "close", headers
    assert first.wait_close(5) == "eof"  # the idle keep-alive one, after idle_grace
    assert sp.wait_exit(10) == 0, sp.output()


# -- IPv6 ------------------------------------------------------------------------------------


def test_reuseport_on_ipv6_loopback(serve: ServeFactory) -> None:
    port = free_port("::1")
    a = serve.start(*APP, "--host", "::1", port=port, demo=False, warmup=None)
    a.wait_ready()
    b = serve.start(*APP, "--host", "::1", instance=2, port=port, demo=False, warmup=None)
    b.wait_ready()
    assert len(listening_inodes(port)) == 2  # two SO_REUSEPORT listeners on [::1]:port
    assert http_json(port, "/", host="::1")[0] == 200
    a.signal(signal.SIGTERM)
    assert a.wait_exit(10) == 0, a.output()
    for _ in range(5):
        status, body = http_json(port, "/", host="::1")
        assert (status, body["pid"]) == (200, b.pid)
    assert connect_state(port, "127.0.0.1") == "refused"  # ::1 is IPv6 only


_DUAL_STACK_CLIENT = textwrap.dedent(
    """
    import json, sys, urllib.request
    port = int(sys.argv[1])
    out = {}
    for host in ("127.0.0.1", "[::1]"):
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as resp:
            out[host] = [resp.status, json.loads(resp.read())["pid"]]
    print(json.dumps(out))
    """
)


def test_dual_stack_wildcard_takes_ipv4_clients(
    serve: ServeFactory, netns: Netns, notify_socket: MakeNotify
) -> None:
    """``host = "::"`` in a namespace of the test's own: v4 and v6 clients both reach it."""
    ns = notify_socket("dual.sock")
    sp = serve.start(
        *APP,
        "--host",
        "::",
        port=8080,
        admin_port=9001,
        demo=False,
        warmup=None,
        prefix=netns.prefix,
        env={"NOTIFY_SOCKET": str(ns.path)},
    )
    ns.wait_for("READY", "1")
    res = netns.run(PYTHON, "-c", _DUAL_STACK_CLIENT, "8080")
    assert res.returncode == 0, res.stderr + sp.output()
    answers = json.loads(res.stdout)
    assert answers == {"127.0.0.1": [200, sp.pid], "[::1]": [200, sp.pid]}, answers


def test_listen_fds_naming_a_regular_file_exits_4(serve: ServeFactory, tmp_path: Path) -> None:
    with (tmp_path / "not-a-socket").open("w") as regular:
        sp = serve.start(
            "--listen",
            "inherit",
            warmup=10,
            prefix=[*FDEXEC, str(regular.fileno()), "http", "--"],
            pass_fds=[regular.fileno()],
        )
        assert sp.wait_exit(10) == 4, sp.output()
    (line,) = sp.log_lines("sockact: error:")
    assert "is a regular file, not a socket" in line, line
    assert "Traceback" not in sp.stderr(), sp.output()
