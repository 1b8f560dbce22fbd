"""``sockact serve`` as a real process: phases, drain, exit codes, metrics, sd_notify."""

from __future__ import annotations

import itertools
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from tests.integration.support import (
    SOCKACT,
    NotifySocket,
    PortWatch,
    RawConn,
    ServeFactory,
    clean_env,
    connect_state,
    free_port_pair,
    http_json,
    in_flight,
    json_of,
    listening_inodes,
    poll,
    socket_fds,
)
from tests.needs import need_tool

MakeNotify = Callable[..., NotifySocket]


# -- 1. admin first, main port only when warm --------------------------------------------


def test_admin_answers_while_main_port_refuses_during_warmup(serve: ServeFactory) -> None:
    sp = serve.start(warmup=2)
    sp.wait_live()
    status, body = sp.admin("/ready")
    assert status == 503, body
    assert body["phase"] == "warming"
    assert connect_state(sp.port) == "refused"
    assert sp.admin("/live")[0] == 200

    sp.wait_ready(timeout=15)
    status, body = http_json(sp.port, "/")
    assert status == 200
    assert body["instance"] == 1
    assert body["pid"] == sp.pid
    assert body["version"] == version("sockact-demo")  # its own metadata, nothing else
    status, ready = sp.admin("/ready")
    assert (status, ready["phase"]) == (200, "ready")


# -- 2. warm-up failure ------------------------------------------------------------------


def test_warmup_failure_exits_3_and_never_opens_main_port(serve: ServeFactory) -> None:
    port, admin_port = free_port_pair()
    with PortWatch(port) as watch:
        sp = serve.start(port=port, admin_port=admin_port, warmup=1, env={"DEMO_FAIL": "1"})
        code = sp.wait_exit(20)
    seen = watch.results
    assert code == 3, sp.output()
    errors = [line for line in sp.stderr().splitlines() if line.startswith("sockact: error:")]
    assert len(errors) == 1, sp.output()
    assert "warm-up" in errors[0] and "DEMO_FAIL" in errors[0]
    assert "Traceback" not in sp.stderr()
    assert len(seen) > 10  # the watcher really ran during the process's life
    assert set(seen) == {"refused"}, sorted(set(seen))
    assert connect_state(sp.admin_port) == "refused"


# -- 3. drain ---------------------------------------------------------------------------


def test_sigterm_drains_inflight_idle_and_new_requests(serve: ServeFactory) -> None:
    idle_grace = 1.0
    sp = serve.start("--idle-grace", str(idle_grace), warmup=0.2)
    sp.wait_ready()

    active = RawConn(sp.port)  # keep-alive, will send a request during the drain
    assert active.get("/")[0] == 200
    idle = RawConn(sp.port)  # keep-alive, idle when SIGTERM arrives
    assert idle.get("/")[0] == 200
    slow = RawConn(sp.port)
    slow.send_get("/slow?ms=2000")
    poll("/slow in flight", lambda: in_flight(sp), 5)

    sp.signal(signal.SIGTERM)
    sp.wait_phase("draining", timeout=3)
    drain_seen = time.monotonic()

    status, headers, _ = active.get("/")
    assert status == 200
    assert headers.get("connection", "").lower() == "close", headers
    assert active.wait_eof(2), "server kept the connection open after Connection: close"

    assert idle.wait_eof(idle_grace + 1.5), "idle keep-alive connection not closed"
    idle_closed_after = time.monotonic() - drain_seen
    assert idle_closed_after >= idle_grace - 0.3, idle_closed_after

    status, headers, body = slow.read_response()
    assert status == 200, body
    assert headers.get("connection", "").lower() == "close", headers
    assert json_of(body.decode())["slept_ms"] == 2000

    assert sp.wait_exit(10) == 0, sp.output()
    assert connect_state(sp.port) == "refused"
    assert connect_state(sp.admin_port) == "refused"


# -- 4. second signal ------------------------------------------------------------------


def test_second_sigterm_during_drain_exits_130_at_once(serve: ServeFactory) -> None:
    sp = serve.start(warmup=0.2)
    sp.wait_ready()
    slow = RawConn(sp.port)
    slow.send_get("/slow?ms=30000")
    poll("/slow in flight", lambda: in_flight(sp), 5)
    sp.signal(signal.SIGTERM)
    sp.wait_phase("draining", timeout=3)
    time.sleep(0.2)  # still draining: the /slow request holds it (checked below)
    assert sp.proc.poll() is None, sp.output()
    began = time.monotonic()
    sp.signal(signal.SIGTERM)
    assert sp.wait_exit(5) == 130, sp.output()
    assert time.monotonic() - began < 2.0
    slow.close()


# -- 5. socket activation ---------------------------------------------------------------


def test_inherit_mode_under_systemd_socket_activate(serve: ServeFactory) -> None:
    activate = need_tool("systemd-socket-activate", "systemd")
    ss = need_tool("ss", "iproute2")
    port, admin_port = free_port_pair()
    sp = serve.start(
        "--listen",
        "inherit",
        port=port,
        admin_port=admin_port,
        warmup=2,
        prefix=[activate, "-l", f"127.0.0.1:{port}", "--fdname=http"],
    )
    # systemd-socket-activate listens first and execs sockact on the first connection.
    inodes = poll("the activation socket", lambda: listening_inodes(port), 10)
    assert len(inodes) == 1
    (inode,) = inodes

    first = RawConn(port)  # triggers the exec; waits in the queue during the warm-up
    first.send_get("/")
    sp.wait_live()
    status, body = sp.admin("/ready")
    assert (status, body["phase"]) == (503, "warming")
    second = RawConn(port)  # made during the warm-up: queued, not refused
    second.send_get("/")
    readable, _, _ = select.select([first.sock, second.sock], [], [], 0.3)
    assert readable == [], "answered before READY"
    assert sp.admin("/ready")[0] == 503

    for conn in (first, second):
        status, _headers, body = conn.read_response()
        assert status == 200
        assert json_of(body.decode())["pid"] == sp.pid
    assert sp.admin("/ready")[0] == 200

    # The listener is the inherited one: same socket inode, held by sockact as fd 3,
    # and no second listener on the port.
    assert listening_inodes(port) == {inode}
    assert socket_fds(sp.pid).get(3) == inode
    shown = subprocess.run(
        [ss, "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("\n") == 1, shown.stdout
    assert f"pid={sp.pid},fd=3" in shown.stdout, shown.stdout

    sp.signal(signal.SIGTERM)
    assert sp.wait_exit(10) == 0, sp.output()


def test_inherit_without_systemd_exits_4(serve: ServeFactory) -> None:
    sp = serve.start("--listen", "inherit", warmup=5)
    began = time.monotonic()
    assert sp.wait_exit(10) == 4, sp.output()
    assert time.monotonic() - began < 4, "failed only after the warm-up"
    err = sp.stderr()
    assert "sockact: error:" in err and "inherit" in err and "LISTEN_FDS" in err, err
    assert connect_state(sp.port) == "refused"
    assert connect_state(sp.admin_port) == "refused"


# -- 6. errors and exit codes -----------------------------------------------------------


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 15
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOCKACT, *args],
        capture_output=True,
        text=True,
        env=clean_env(**(env or {})),
        timeout=timeout,
        check=False,
    )


def test_bad_config_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    port, admin_port = free_port_pair()
    cfg = tmp_path / "api.toml"
    cfg.write_text(
        f'app = "sockact_demo:create_app"\ninstance = 1\nadmin_port = {admin_port}\n'
        'host = "127.0.0.1"\nthreds = 4\n'
    )
    began = time.monotonic()
    res = _run(["serve", "--config", str(cfg)], env={"SOCKACT_PORT": "8o80"})
    assert res.returncode == 2, res.stderr
    assert time.monotonic() - began < 10
    lines = res.stderr.splitlines()
    assert all(line.startswith("sockact: error:") for line in lines), res.stderr
    assert any("unknown key 'threds'" in line and "threads" in line for line in lines)
    assert any("SOCKACT_PORT" in line and "'8o80'" in line for line in lines)
    assert "2 problems" in lines[0]
    assert connect_state(admin_port) == "refused"
    assert connect_state(port) == "refused"


def test_main_port_held_without_reuseport_exits_4_before_warmup(serve: ServeFactory) -> None:
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)
        port = holder.getsockname()[1]
        sp = serve.start(port=port, warmup=10)
        began = time.monotonic()
        assert sp.wait_exit(8) == 4, sp.output()
        assert time.monotonic() - began < 5
        err = sp.stderr()
        assert "SO_REUSEPORT" in err and str(port) in err, err
        assert "warming up" not in err  # failed in the pre-flight, not after the warm-up
        assert connect_state(sp.admin_port) == "refused"
        assert listening_inodes(port) == {os.fstat(holder.fileno()).st_ino}
    finally:
        holder.close()


def test_admin_port_taken_second_instance_does_not_start(serve: ServeFactory) -> None:
    first = serve.start(instance=1, warmup=0.2)
    first.wait_ready()
    second = serve.start(instance=2, port=first.port, admin_port=first.admin_port, warmup=0.2)
    assert second.wait_exit(10) == 4, second.output()
    assert "admin port" in second.stderr() and str(first.admin_port) in second.stderr()
    # the first instance is untouched and still the only one serving
    assert first.admin("/ready")[1]["pid"] == first.pid
    for _ in range(5):
        assert http_json(first.port, "/")[1]["pid"] == first.pid
    assert len(listening_inodes(first.port)) == 1


def test_app_import_failure_exits_3(serve: ServeFactory) -> None:
    sp = serve.start(
        "--app", "sockact_no_such_module:create_app", instance=1, demo=False, warmup=None
    )
    assert sp.wait_exit(15) == 3, sp.output()
    err = sp.stderr()
    assert "sockact: error:" in err and "sockact_no_such_module" in err, err
    assert connect_state(sp.port) == "refused"
    assert connect_state(sp.admin_port) == "refused"


def test_check_config_and_print_config(tmp_path: Path) -> None:
    cfg = tmp_path / "api.toml"
    cfg.write_text('app = "sockact_demo:create_app"\ninstance = 3\nthreads = 4\n')
    ok = _run(["check-config", "--config", str(cfg)])
    assert ok.returncode == 0, ok.stderr
    assert "instance 3" in ok.stdout

    bad = _run(["check-config", "--config", str(cfg), "--port", "99999"])
    assert bad.returncode == 2
    assert "port = '99999' (flag --port)" in bad.stderr

    shown = _run(
        ["print-config", "--config", str(cfg), "--idle-grace", "0.5"],
        env={"SOCKACT_PORT": "8181"},
    )
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert re.search(r"^threads = 4 +# file .*api\.toml$", out, re.M), out
    assert re.search(r"^port = 8181 +# env SOCKACT_PORT$", out, re.M), out
    assert re.search(r"^idle_grace = 0\.5 +# flag --idle-grace$", out, re.M), out
    assert re.search(r"^admin_port = 9003 +# default \(9000 \+ instance\)$", out, re.M), out
    assert re.search(r"^backlog = 1024 +# default$", out, re.M), out


# -- 7. metrics: tests/integration/test_metrics.py ------------------------------------


# -- 8. sd_notify with a real NOTIFY_SOCKET -------------------------------------------------


def test_notify_order(notify_socket: MakeNotify, serve: ServeFactory) -> None:
    port, admin_port = free_port_pair()
    ns = notify_socket("n.sock", watch_port=port)
    sp = serve.start(
        port=port, admin_port=admin_port, warmup=1.5, env={"NOTIFY_SOCKET": str(ns.path)}
    )
    ready = ns.wait_for("READY", "1", timeout=20)
    assert ready.port_state == "open", "READY=1 sent before the main port accepted"
    sp.signal(signal.SIGTERM)
    ns.wait_for("STOPPING", "1", timeout=5)
    assert sp.wait_exit(10) == 0, sp.output()

    msgs = ns.snapshot()
    keys = [next(iter(m.fields)) for m in msgs]
    first = msgs[0]
    assert "STATUS" in first.fields and "admin" in first.fields["STATUS"], keys
    i_ready = next(i for i, m in enumerate(msgs) if m.fields.get("READY") == "1")
    i_stop = next(i for i, m in enumerate(msgs) if m.fields.get("STOPPING") == "1")
    extends = [i for i, m in enumerate(msgs) if "EXTEND_TIMEOUT_USEC" in m.fields]
    assert extends and 0 < extends[0] < i_ready, keys
    assert all(i < i_ready for i in extends), keys
    assert int(msgs[extends[0]].fields["EXTEND_TIMEOUT_USEC"]) > 1_000_000
    assert i_ready < i_stop, keys
    assert sum(1 for m in msgs if m.fields.get("READY") == "1") == 1
    assert "serving" in msgs[i_ready].fields.get("STATUS", ""), msgs[i_ready].raw
    assert all("WATCHDOG" not in m.fields for m in msgs)  # not asked for


def _watchdog_times(ns: NotifySocket) -> list[float]:
    return [m.t for m in ns.snapshot() if m.fields.get("WATCHDOG") == "1"]


def test_watchdog_pings_and_stop_when_frozen(
    notify_socket: MakeNotify, serve: ServeFactory
) -> None:
    ns = notify_socket("w.sock")
    sp = serve.start(warmup=0.2, env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000"})
    ns.wait_for("READY", "1")
    ready_at = time.monotonic()
    poll("4 s of watchdog pings", lambda: time.monotonic() - ready_at >= 3, 5)
    pings = [t for t in _watchdog_times(ns) if t >= ready_at]
    assert len(pings) >= 5, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # WATCHDOG_USEC=1 s: systemd kills after 1 s without a ping; sd_watchdog says ping at half.
    assert max(gaps) < 0.95, gaps
    assert 0.4 <= statistics.median(gaps) <= 0.7, gaps

    sp.signal(signal.SIGSTOP)
    time.sleep(0.1)
    frozen_at = time.monotonic()
    time.sleep(1.5)  # a frozen process must stay silent for a while: nothing to poll for
    assert [t for t in _watchdog_times(ns) if t > frozen_at] == []
    sp.signal(signal.SIGCONT)
    resumed = time.monotonic()
    poll("pings again after SIGCONT", lambda: any(t > resumed for t in _watchdog_times(ns)), 3)
    sp.signal(signal.SIGTERM)
    assert sp.wait_exit(10) == 0, sp.output()


def test_watchdog_pid_of_another_process_means_no_pings(
    notify_socket: MakeNotify, serve: ServeFactory
) -> None:
    ns = notify_socket("wp.sock")
    serve.start(
        warmup=0.2,
        env={
            "NOTIFY_SOCKET": str(ns.path),
            "WATCHDOG_USEC": "1000000",
            "WATCHDOG_PID": str(os.getpid()),
        },
    )
    ns.wait_for("READY", "1")
    time.sleep(1.2)
    assert _watchdog_times(ns) == []
