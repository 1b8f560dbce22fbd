"""Handover and throughput benchmark: sockact against gunicorn, in a network namespace.

    sudo .venv/bin/python bench/handover.py                 # full run: open loop, 10 rounds
    sudo .venv/bin/python bench/handover.py --quick         # smoke run, about 2-3 minutes
    sudo .venv/bin/python bench/handover.py --load closed   # closed loop, as runs 1-4
    sudo .venv/bin/python bench/handover.py --json          # the results JSON on stdout

Prints tables, is not a test: nothing here asserts. See bench/README.md for what each
figure means. Everything runs in a fresh network namespace ``sockact-bench-<random>``
(loopback only; ``net.ipv4.tcp_migrate_req`` is per namespace and set there), which is
deleted at the end; every process is started here and stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
SOCKACT = str(VENV_BIN / "sockact")
GUNICORN = str(VENV_BIN / "gunicorn")
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")
HOST = "127.0.0.1"
#: every run gets a port of its own: the TIME_WAIT sockets a server without SO_REUSEPORT
#: leaves behind block a later SO_REUSEPORT bind of the same port (see README.md)
FIRST_PORT = 8100
#: sockact's default threads per instance; gunicorn gets as many per worker
THREADS = 8
GUNICORN_WORKERS = 2
KEEPALIVE_CLIENTS = 8
NEW_CONN_CLIENTS = 8
#: control-start-only: B listens on its run's port + this, where no client goes
CONTROL_PORT_OFFSET = 10000
#: after the old instance exited, the handover window goes on for this long
AFTER_EXIT = 1.0
#: open loop: the first second of the probe (its connections opening) is in no window
STEADY_SKIP = 1.0
#: open loop: the issue's targets, handover against steady of the same run
TARGET_P99_RATIO = 1.5
TARGET_MAX_RATIO = 2.0
#: the open-loop scenarios (by default): sockact both modes, gunicorn both ways, control
OPEN_SCENARIOS = (
    "sockact-reuseport-mr1",
    "sockact-socket",
    "gunicorn-reuseport-mr1",
    "gunicorn-hup",
    "control-start-only",
)

sys.path.insert(0, str(ROOT))
from sockact.controller.probe import (  # noqa: E402
    Probe,
    Report,
    Target,
    capacity_of,
    measure_capacity,
)

_ports = iter(range(FIRST_PORT, 65000))


def next_port() -> int:
    return next(_ports)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def child_env(**extra: str) -> dict[str, str]:
    drop = ("SOCKACT_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "JOURNAL_STREAM")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONUNBUFFERED="1", DEMO_WARMUP="1")
    env.update(extra)
    return env


# -- processes ----------------------------------------------------------------------------


class Proc:
    """A child in its own session; :meth:`kill` stops it (and its group) by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        logdir: Path,
        env: dict[str, str],
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGTERM, then SIGKILL to the process group it leads (its own workers)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if self.wait(10) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.wait(5)
        # gunicorn workers left behind by a killed master share its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Procs:
    """Every process a scenario started; :meth:`close` stops those still running."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], **kw: Any) -> Proc:
        p = Proc(name, argv, self.logdir, **kw)
        self.started.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.started):
            p.kill()


class Notify:
    """A NOTIFY_SOCKET we read: sockact sends READY=1 once it listens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.lines: list[str] = []

    def wait_for(self, line: str, timeout: float, proc: Proc) -> None:
        end = time.monotonic() + timeout
        while line not in self.lines:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited before {line}:\n{proc.tail()}")
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{proc.name}: no {line} in {timeout} s:\n{proc.tail()}")
            self.sock.settimeout(min(left, 0.2))
            with contextlib.suppress(TimeoutError):
                data = self.sock.recv(4096)
                self.lines += data.decode(errors="replace").splitlines()

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class GunicornEvents:
    """Reads the lines bench/gunicorn_conf.py appends: warm/exit per worker."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def events(self) -> list[tuple[str, int, int, float]]:
        out = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                out.append((parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
        return out

    def wait(
        self,
        what: Callable[[list[tuple[str, int, int, float]]], bool],
        timeout: float,
        proc: Proc,
        label: str,
    ) -> None:
        end = time.monotonic() + timeout
        while not what(self.events()):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while waiting for {label}:\n{proc.tail()}")
            if time.monotonic() > end:
                raise RuntimeError(f"{proc.name}: {label} not seen in {timeout} s:\n{proc.tail()}")
            time.sleep(0.02)

    def warm_workers(self, master: int, since: float = 0.0) -> set[int]:
        return {w for e, m, w, t in self.events() if e == "warm" and m == master and t >= since}

    def exited(self, master: int) -> set[int]:
        return {w for e, m, w, _ in self.events() if e == "exit" and m == master}


def set_migrate_req(value: int) -> None:
    MIGRATE_REQ.write_text(f"{value}\n")
    got = int(MIGRATE_REQ.read_text())
    if got != value:
        raise RuntimeError(f"tcp_migrate_req is {got}, wanted {value}")


def wait_port_free(port: int, timeout: float = 10.0) -> None:
    """Nothing listens on ``port`` any more (the previous scenario is gone)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                pass
        except OSError:
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} still answers after the scenario stopped")


# -- servers ------------------------------------------------------------------------------


#: further `sockact serve` flags for every sockact instance (--sockact-arg)
SOCKACT_EXTRA: list[str] = []


def sockact_argv(instance: int, listen: str, port: int) -> list[str]:
    return [
        SOCKACT,
        "serve",
        "--app",
        "sockact_demo:create_app",
        "--warmup",
        "sockact_demo:warmup",
        "--instance",
        str(instance),
        "--host",
        HOST,
        "--port",
        str(port),
        "--admin-port",
        str(9000 + instance),
        "--listen",
        listen,
        "--threads",
        str(THREADS),
        *SOCKACT_EXTRA,
    ]


def gunicorn_argv(port: int, reuse_port: bool) -> list[str]:
    argv = [
        GUNICORN,
        "--config",
        str(BENCH / "gunicorn_conf.py"),
        "--pythonpath",
        str(BENCH),
        "--worker-class",
        "gthread",
        "--workers",
        str(GUNICORN_WORKERS),
        "--threads",
        str(THREADS),
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
    ]
    if reuse_port:
        argv.append("--reuse-port")
    return [*argv, "gunicorn_wsgi:app"]


class SockactServer:
    """One ``sockact serve``; READY=1 over our NOTIFY_SOCKET says it listens."""

    def __init__(
        self, procs: Procs, instance: int, listen: str, port: int, fd: int | None = None
    ) -> None:
        self.notify = Notify(procs.logdir / f"notify-{instance}.sock")
        env = child_env(NOTIFY_SOCKET=str(self.notify.path))
        argv = sockact_argv(instance, listen, port)
        if fd is not None:
            argv = [PYTHON, str(BENCH / "fdexec.py"), str(fd), "http", "--", *argv]
        self.proc = procs.start(
            f"sockact-{instance}", argv, env=env, pass_fds=() if fd is None else (fd,)
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            self.notify.wait_for("READY=1", timeout, self.proc)
        finally:
            self.notify.close()

    def stop_gracefully(self) -> None:
        self.proc.signal(signal.SIGTERM)

    def wait_gone(self, timeout: float = 30.0) -> None:
        code = self.proc.wait(timeout)
        if code is None:
            raise RuntimeError(f"{self.proc.name} did not exit in {timeout} s")
        if code != 0:
            log(f"{self.proc.name} exited {code}:\n{self.proc.tail()}")


class GunicornMaster:
    """One gunicorn master; ready once all its workers imported (warmed) the app."""

    def __init__(
        self,
        procs: Procs,
        label: str,
        events: GunicornEvents,
        port: int,
        reuse_port: bool,
        instance: int,
    ) -> None:
        self.events = events
        env = child_env(
            BENCH_GUNICORN_EVENTS=str(events.path),
            SOCKACT_INSTANCE=str(instance),
        )
        self.proc = procs.start(f"gunicorn-{label}", gunicorn_argv(port, reuse_port), env=env)

    def wait_ready(self, timeout: float = 30.0, since: float = 0.0) -> None:
        pid = self.proc.pid
        self.events.wait(
            lambda _e: len(self.events.warm_workers(pid, since)) >= GUNICORN_WORKERS,
            timeout,
            self.proc,
            f"{GUNICORN_WORKERS} warm workers",
        )

    def stop_gracefully(self) -> None:
        self.proc.signal(signal.SIGTERM)  # gunicorn's graceful shutdown

    def wait_gone(self, timeout: float = 40.0) -> None:
        if self.proc.wait(timeout) is None:
            raise RuntimeError(f"{self.proc.name} did not exit in {timeout} s")


# -- handover -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    server: str  # sockact | gunicorn
    mode: str  # reuseport | socket | hup | start-only
    migrate_req: int


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "sockact-reuseport-mr1", "sockact reuseport, tcp_migrate_req=1", "sockact", "reuseport", 1
    ),
    Scenario(
        "sockact-reuseport-mr0", "sockact reuseport, tcp_migrate_req=0", "sockact", "reuseport", 0
    ),
    Scenario(
        "sockact-socket",
        "sockact shared socket (LISTEN_FDS), tcp_migrate_req=0",
        "sockact",
        "socket",
        0,
    ),
    Scenario(
        "gunicorn-reuseport-mr1",
        "gunicorn 2 masters --reuse-port, tcp_migrate_req=1",
        "gunicorn",
        "reuseport",
        1,
    ),
    Scenario(
        "gunicorn-reuseport-mr0",
        "gunicorn 2 masters --reuse-port, tcp_migrate_req=0",
        "gunicorn",
        "reuseport",
        0,
    ),
    Scenario("gunicorn-hup", "gunicorn HUP (one master keeps the socket)", "gunicorn", "hup", 0),
    # The control: the same windows and the same second process (start, warm-up, READY,
    # SIGTERM, exit), but on another port, so A keeps every request: what a process
    # start costs the clients of A on this machine, without any handover.
    Scenario(
        "control-start-only",
        "sockact A serves alone; B starts on another port, READY, stops",
        "sockact",
        "start-only",
        1,
    ),
)


def window(report: Report) -> dict[str, Any]:
    """The figures of one probe window."""
    return {
        "duration_s": round(report.duration_s, 3),
        "requests": report.total,
        "ok": report.ok,
        "failed": report.failed,
        "failures": {k: v for k, v in report.failures.items() if v},
        "p50_ms": round(report.p50_ms, 2),
        "p99_ms": round(report.p99_ms, 2),
        "max_ms": round(report.max_ms, 2),
        "rps": round(report.rps, 1),
        "served_by": {
            f"{inst}/{ver}": n for (inst, ver), n in sorted(report.samples.items(), key=str)
        },
        "series": [
            {"t": s.t, "ok": s.ok, "failed": s.failed, "max_ms": round(s.max_ms, 1)}
            for s in report.series
        ],
        "error_samples": list(report.error_samples[:6]),
    }


class Load:
    """The probe of the anchors in docs/design.md: 16 clients, a new :class:`Probe` per window."""

    def __init__(self, port: int) -> None:
        self.target = Target(HOST, port, "/")
        self.current: Probe | None = None

    def start(self) -> None:
        self.current = Probe(
            [self.target], keepalive_clients=KEEPALIVE_CLIENTS, new_conn_clients=NEW_CONN_CLIENTS
        ).start()

    def stop(self) -> Report:
        assert self.current is not None
        report = self.current.stop()
        self.current = None
        return report

    def cut(self) -> Report:
        """End this window and start the next one at once."""
        report = self.stop()
        self.start()
        return report


class OpenLoad:
    """One open-loop probe for the whole run; windows are cut from its buckets afterwards."""

    def __init__(self, port: int, rate: float) -> None:
        self.probe = Probe(
            [Target(HOST, port, "/")],
            keepalive_clients=KEEPALIVE_CLIENTS,
            new_conn_clients=NEW_CONN_CLIENTS,
            rate=rate,
        )
        self.report: Report | None = None

    def start(self) -> None:
        self.probe.start()

    def now(self) -> float:
        return self.probe.elapsed()

    def stop(self) -> Report:
        self.report = self.probe.stop()
        return self.report


#: (mark, host, label) of the timeline events, per scenario mode; mark "start" is 0
EVENTS = {
    "handover": (
        ("start", "B (new)", "started"),
        ("new_ready", "B (new)", "READY"),
        ("old_term", "A (old)", "SIGTERM (stopping)"),
        ("old_gone", "A (old)", "exited"),
    ),
    "start-only": (
        ("start", "B (other port)", "started"),
        ("new_ready", "B (other port)", "READY"),
        ("old_term", "B (other port)", "SIGTERM (stopping)"),
        ("old_gone", "B (other port)", "exited"),
    ),
    "hup": (
        ("start", "master", "SIGHUP"),
        ("new_ready", "master", "new workers warm"),
        ("old_gone", "master", "old workers exited"),
    ),
}


def timeline_events(sc: Scenario, at: float, marks: dict[str, float]) -> list[dict[str, Any]]:
    """The run's events on the probe's clock (``at`` = the probe time of mark 0)."""
    kind = sc.mode if sc.mode in ("start-only", "hup") else "handover"
    all_marks = {"start": 0.0, **marks}
    return [
        {"t": round(at + all_marks[m], 3), "host": host, "label": label}
        for m, host, label in EVENTS[kind]
        if m in all_marks
    ]


def draw(report: Report, events: list[dict[str, Any]], out: Path, title: str) -> str | None:
    """The run's timeline PNG, or None (logged) when matplotlib is missing."""
    from sockact.controller.timeline import events_from, render_timeline
    from sockact.errors import MissingExtra

    try:
        render_timeline(report.to_dict(), events_from(events, 0.0), out, title)
    except MissingExtra as exc:
        log(f"  no timeline: {exc.message}")
        return None
    return str(out)


def run_handover(
    sc: Scenario,
    steady: float,
    tail: float,
    logdir: Path,
    rate: float | None = None,
    png: Path | None = None,
) -> dict[str, Any]:
    """One handover under load: closed loop (``rate`` None, a new probe per window) or
    open loop at ``rate`` req/s (one probe for the run; equal steady and handover
    windows cut from its buckets). ``png``: draw the run's timeline there (open loop)."""
    set_migrate_req(sc.migrate_req)
    port = next_port()
    wait_port_free(port)
    procs = Procs(logdir)
    load: Load | OpenLoad = Load(port) if rate is None else OpenLoad(port, rate)
    shared: socket.socket | None = None
    marks: dict[str, float] = {}
    load_before = loadavg()
    at = ho_end = 0.0
    try:
        old: SockactServer | GunicornMaster
        new: SockactServer | GunicornMaster | None = None
        events = GunicornEvents(logdir / f"{sc.name}.events")
        if sc.server == "sockact":
            fd = None
            if sc.mode == "socket":
                # what api.socket does: one listening socket, held here for every instance
                shared = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                shared.bind((HOST, port))
                shared.listen(1024)
                fd = shared.fileno()
            listen = "inherit" if sc.mode == "socket" else "reuseport"
            old = SockactServer(procs, 1, listen, port, fd)
            old.wait_ready()
        else:
            old = GunicornMaster(procs, "1", events, port, sc.mode == "reuseport", 1)
            old.wait_ready()

        load.start()
        time.sleep(steady)
        if isinstance(load, Load):
            steady_report = load.cut()
        else:
            at = load.now()

        t0 = time.monotonic()
        if sc.mode == "hup":
            assert isinstance(old, GunicornMaster)
            master = old.proc.pid
            before = old.events.warm_workers(master)
            old.proc.signal(signal.SIGHUP)
            old.events.wait(
                lambda _e: len(old.events.warm_workers(master) - before) >= GUNICORN_WORKERS,
                30,
                old.proc,
                "new warm workers",
            )
            marks["new_ready"] = time.monotonic() - t0
            old.events.wait(
                lambda _e: before <= old.events.exited(master), 40, old.proc, "old workers exit"
            )
            marks["old_gone"] = time.monotonic() - t0
        else:
            started: SockactServer | GunicornMaster
            stopped: SockactServer | GunicornMaster
            if sc.mode == "start-only":
                # the control: B on a port no client uses starts and stops; A serves
                # throughout (and the tail), so "old_term"/"old_gone" mark B's own stop
                started = stopped = SockactServer(procs, 2, "reuseport", port + CONTROL_PORT_OFFSET)
                new = old
            else:
                if isinstance(old, SockactServer):
                    new = SockactServer(procs, 2, old_listen(sc), port, shared_fd(shared))
                else:
                    new = GunicornMaster(procs, "2", events, port, True, 2)
                started, stopped = new, old
            started.wait_ready()
            marks["new_ready"] = time.monotonic() - t0
            stopped.stop_gracefully()
            marks["old_term"] = time.monotonic() - t0
            stopped.wait_gone()
            marks["old_gone"] = time.monotonic() - t0
        time.sleep(AFTER_EXIT)
        if isinstance(load, Load):
            handover_report = load.cut()
        else:
            ho_end = load.now()
        time.sleep(tail)
        final = load.stop()
        if isinstance(load, Load):
            tail_report = final
        if new is not None and not new.proc.alive():
            raise RuntimeError(f"{new.proc.name} died:\n{new.proc.tail()}")
    finally:
        if isinstance(load, Load):
            if load.current is not None:
                load.stop()
        elif load.report is None and load.probe.started_at:
            load.stop()
        procs.close()
        if shared is not None:
            shared.close()
    extra: dict[str, Any] = {"load": "closed"}
    if isinstance(load, OpenLoad):
        # equal windows: the steady one is the handover's length, just before it
        p = load.probe
        a, b = round(at, 1), round(ho_end, 1)
        length = b - a
        sa = round(max(STEADY_SKIP, a - length), 1)
        end = round(final.duration_s, 1)
        steady_report = p.snapshot(window=(sa, a))
        handover_report = p.snapshot(window=(a, b))
        tail_report = p.snapshot(window=(b, end))
        ready_at = round(at + marks["new_ready"], 1)
        ev = timeline_events(sc, at, marks)
        st_r, ho_r = steady_report, handover_report
        extra = {
            "load": "open",
            "rate": rate,
            "windows_s": {"steady": [sa, a], "handover": [a, b], "tail": [b, end]},
            "equal_windows": abs((a - sa) - length) < 0.05,
            "p99_ratio": round(ho_r.p99_ms / st_r.p99_ms, 2) if st_r.p99_ms else None,
            "max_ratio": round(ho_r.max_ms / st_r.max_ms, 2) if st_r.max_ms else None,
            "max_from_ready_ms": round(p.snapshot(window=(ready_at, b)).max_ms, 2),
            "probe": {
                "requests": final.total,
                "failures": {k: v for k, v in final.failures.items() if v},
                "late": final.late,
                "lag_p99_ms": round(final.lag_p99_ms, 2),
                "lag_max_ms": round(final.lag_max_ms, 2),
                "pool_waits": final.pool_waits,
                "workers": dict(final.workers),
            },
            "events": ev,
        }
        # a failed request misses the target whatever the latency says
        extra["meets_target"] = (
            not extra["probe"]["failures"]
            and extra["p99_ratio"] is not None
            and extra["max_ratio"] is not None
            and extra["p99_ratio"] <= TARGET_P99_RATIO
            and extra["max_ratio"] <= TARGET_MAX_RATIO
        )
        if png is not None:
            extra["png"] = draw(
                final,
                ev,
                png,
                f"{sc.name} ({sc.what}), open loop {rate:,.0f} req/s, "
                f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load_before[0]:.1f}\n"
                f"handover p99 {ho_r.p99_ms:.1f} ms max {ho_r.max_ms:.0f} ms; "
                f"steady p99 {st_r.p99_ms:.1f} ms max {st_r.max_ms:.0f} ms; "
                f"{final.failed} failed of {final.total:,}",
            )
    ho, st, tl = window(handover_report), window(steady_report), window(tail_report)
    failures: dict[str, int] = {}
    if isinstance(load, OpenLoad):
        failures = dict(extra["probe"]["failures"])  # the whole run, skipped second too
        requests = extra["probe"]["requests"]
    else:
        for w in (st, ho, tl):
            for k, v in w["failures"].items():
                failures[k] = failures.get(k, 0) + v
        requests = st["requests"] + ho["requests"] + tl["requests"]
    return {
        "scenario": sc.name,
        "what": sc.what,
        "port": port,
        "migrate_req": sc.migrate_req,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "marks_s": {k: round(v, 3) for k, v in marks.items()},
        "requests": requests,
        "failed": sum(failures.values()),
        "failures": failures,
        "steady": st,
        "handover": ho,
        "tail": tl,
        "max_over_steady_p99": round(ho["max_ms"] / st["p99_ms"], 2) if st["p99_ms"] else None,
        **extra,
    }


def max_from_ready(r: dict[str, Any]) -> float | None:
    """Handover max latency from B's READY on.

    Open loop: exact to the 100 ms bucket READY falls in. Closed loop: the series has
    one-second buckets, so the bucket B's READY falls in counts whole (a few hundred ms
    before READY are included: this errs against sockact).
    """
    if "max_from_ready_ms" in r:  # open loop: exact, from 100 ms buckets
        return float(r["max_from_ready_ms"])
    ready = r["marks_s"].get("new_ready")
    series = r["handover"].get("series") or []
    if ready is None or not series:
        return None
    tail = [s["max_ms"] for s in series if s["t"] >= int(ready)]
    return max(tail) if tail else None


def old_listen(sc: Scenario) -> str:
    return "inherit" if sc.mode == "socket" else "reuseport"


def shared_fd(sock: socket.socket | None) -> int | None:
    return None if sock is None else sock.fileno()


# -- throughput ---------------------------------------------------------------------------


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/sec, latency avg and p50/p99 (``--latency``), errors, from wrk's output."""

    def ms(value: str) -> float:
        units = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
        for unit in ("us", "ms", "s", "m"):
            if value.endswith(unit):
                return float(value[: -len(unit)]) * units[unit]
        return float(value)

    out: dict[str, Any] = {"errors": 0, "non_2xx": 0}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "Latency" and len(parts) >= 2 and parts[1][0].isdigit():
            out["latency_avg_ms"] = ms(parts[1])
            out["latency_max_ms"] = ms(parts[3])
        elif parts[0] in ("50%", "99%") and len(parts) == 2:
            out[f"latency_p{parts[0][:-1]}_ms"] = ms(parts[1])
        elif line.startswith("Requests/sec:"):
            out["rps"] = float(parts[1])
        elif "requests in" in line:
            out["requests"] = int(parts[0])
        elif line.strip().startswith("Socket errors:"):
            out["errors"] = sum(int(p.strip(",")) for p in parts[3::2])
        elif line.strip().startswith("Non-2xx"):
            out["non_2xx"] = int(parts[-1])
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (gunicorn's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes so far (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def wrk(port: int, duration: float, pids: Sequence[int] = ()) -> dict[str, Any]:
    """One wrk run; with the servers' ``pids``, also their CPU time per request."""
    argv = ["wrk", "-t2", "-c16", f"-d{duration:g}s", "--latency", f"http://{HOST}:{port}/"]
    load_before = loadavg()
    cpu_before = cpu_seconds(pids)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    cpu = cpu_seconds(pids) - cpu_before
    if res.returncode != 0 or "Requests/sec" not in res.stdout:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stdout}\n{res.stderr}")
    out = {**parse_wrk(res.stdout), "loadavg_before": load_before, "command": " ".join(argv)}
    if pids and out.get("requests"):
        # CPU per request hardly depends on what else the machine runs, unlike req/s
        out["cpu_us_per_request"] = round(cpu / out["requests"] * 1e6, 1)
    return out


def wait_line(proc: Proc, line: str, timeout: float = 30.0) -> None:
    """Wait until ``proc``'s log has ``line`` (a child that prints when it listens)."""
    end = time.monotonic() + timeout
    while line not in proc.tail(50).splitlines():
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited before {line!r}:\n{proc.tail()}")
        if time.monotonic() > end:
            raise RuntimeError(f"{proc.name}: no {line!r} in {timeout} s:\n{proc.tail()}")
        time.sleep(0.05)


def run_throughput(runs: int, duration: float, logdir: Path) -> dict[str, Any]:
    set_migrate_req(1)
    ports = {"sockact": next_port(), "waitress": next_port(), "gunicorn": next_port()}
    procs = Procs(logdir)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
    try:
        a = SockactServer(procs, 1, "reuseport", ports["sockact"])
        b = SockactServer(procs, 2, "reuseport", ports["sockact"])
        plain = [
            procs.start(
                f"waitress-{i}",
                [
                    PYTHON,
                    str(BENCH / "plain_waitress.py"),
                    HOST,
                    str(ports["waitress"]),
                    str(THREADS),
                ],
                env=child_env(SOCKACT_INSTANCE=str(10 + i)),
            )
            for i in (1, 2)
        ]
        g = GunicornMaster(
            procs, "tput", GunicornEvents(logdir / "tput.events"), ports["gunicorn"], False, 3
        )
        a.wait_ready()
        b.wait_ready()
        for w in plain:
            wait_line(w, "listening")
        g.wait_ready()
        pids = {
            "sockact": [a.proc.pid, b.proc.pid],
            "waitress": [w.pid for w in plain],
            "gunicorn": process_tree(g.proc.pid),
        }
        for port in ports.values():  # one discarded warm-up run each
            wrk(port, min(2.0, duration))
        names = list(ports)
        for i in range(runs):
            # every server once per round, the order rotated each round
            k = i % len(names)
            order = names[k:] + names[:k]
            for name in order:
                r = wrk(ports[name], duration, pids[name])
                log(f"wrk {name} run {i + 1}: {r['rps']:.0f} req/s (load {r['loadavg_before']})")
                results[name].append(r)
    finally:
        procs.close()
    summary: dict[str, Any] = {}
    for name, rs in results.items():
        summary[name] = {
            "runs": rs,
            "median_rps": statistics.median(r["rps"] for r in rs),
            "median_latency_avg_ms": statistics.median(r["latency_avg_ms"] for r in rs),
            "median_latency_p99_ms": statistics.median(r.get("latency_p99_ms", 0.0) for r in rs),
            "errors": sum(r["errors"] + r["non_2xx"] for r in rs),
            "median_cpu_us_per_request": statistics.median(
                r.get("cpu_us_per_request", 0.0) for r in rs
            ),
        }
    # the limit row: sockact against the same waitress without sockact, round by round
    pairs = [
        s["rps"] / w["rps"]
        for s, w in zip(results["sockact"], results["waitress"], strict=True)
        if w.get("rps")
    ]
    cpu_pairs = [
        s["cpu_us_per_request"] / w["cpu_us_per_request"]
        for s, w in zip(results["sockact"], results["waitress"], strict=True)
        if s.get("cpu_us_per_request") and w.get("cpu_us_per_request")
    ]
    summary["sockact_over_waitress"] = {
        "cpu_per_request_median": round(statistics.median(cpu_pairs), 3) if cpu_pairs else None,
        "cpu_per_request_per_round": [round(x, 3) for x in cpu_pairs],
        "median_of_medians": round(
            summary["sockact"]["median_rps"] / summary["waitress"]["median_rps"], 3
        )
        if summary["waitress"]["median_rps"]
        else None,
        "per_round": [round(x, 3) for x in pairs],
    }
    summary["setup"] = {
        "sockact": f"2 instances (reuseport, same port), {THREADS} threads each",
        "waitress": f"2 plain waitress processes (bench/plain_waitress.py, SO_REUSEPORT, same "
        f"port), {THREADS} threads each, no sockact",
        "gunicorn": f"1 master, gthread, {GUNICORN_WORKERS} workers x {THREADS} threads",
        "wrk": f"wrk -t2 -c16 -d{duration:g}s --latency, interleaved (order rotated), "
        f"{runs} runs each",
    }
    return summary


# -- tables -------------------------------------------------------------------------------


def fmt_failures(failures: dict[str, int]) -> str:
    if not failures:
        return "0"
    return f"{sum(failures.values())} (" + ", ".join(f"{k} {v}" for k, v in failures.items()) + ")"


def fmt_from_ready(r: dict[str, Any]) -> str:
    worst = max_from_ready(r)
    st_p99 = r["steady"]["p99_ms"]
    if worst is None:
        return "-"
    return f"{worst:.0f} ({worst / st_p99:.1f}x)" if st_p99 else f"{worst:.0f}"


def handover_table(runs: list[dict[str, Any]]) -> str:
    head = (
        "handover",
        "run",
        "requests",
        "failed (by kind)",
        "ho p50",
        "ho p99",
        "ho max",
        "steady p99",
        "steady max",
        "max/st.p99",
        "max from READY",
        "load 1m",
    )
    rows = [head]
    for r in sorted(runs, key=lambda r: (SCENARIO_ORDER[r["scenario"]], r["round"])):
        ho, st = r["handover"], r["steady"]
        rows.append(
            (
                r["scenario"],
                str(r["round"]),
                f"{r['requests']:,}",
                fmt_failures(r["failures"]),
                f"{ho['p50_ms']:.1f}",
                f"{ho['p99_ms']:.1f}",
                f"{ho['max_ms']:.0f}",
                f"{st['p99_ms']:.1f}",
                f"{st['max_ms']:.0f}",
                "-" if r["max_over_steady_p99"] is None else f"{r['max_over_steady_p99']:.1f}x",
                fmt_from_ready(r),
                f"{r['loadavg_before'][0]:.2f}",
            )
        )
    return render(rows, right=range(1, len(head)))


def throughput_table(tp: dict[str, Any]) -> str:
    head = (
        "server",
        "setup",
        "runs",
        "req/s (median)",
        "CPU us/req",
        "avg ms",
        "p99 ms",
        "errors",
        "load 1m",
    )
    rows = [head]
    for name in ("sockact", "waitress", "gunicorn"):
        if name not in tp:
            continue
        s = tp[name]
        loads = ", ".join(f"{r['loadavg_before'][0]:.1f}" for r in s["runs"])
        rps = ", ".join(f"{r['rps']:.0f}" for r in s["runs"])
        rows.append(
            (
                name,
                tp["setup"][name],
                str(len(s["runs"])),
                f"{s['median_rps']:.0f} ({rps})",
                f"{s['median_cpu_us_per_request']:.0f}"
                if s.get("median_cpu_us_per_request")
                else "-",
                f"{s['median_latency_avg_ms']:.2f}",
                f"{s['median_latency_p99_ms']:.2f}",
                str(s["errors"]),
                loads,
            )
        )
    table = render(rows, right=(2, 3, 4, 5, 6, 7))
    limit = tp.get("sockact_over_waitress")
    if limit and limit.get("median_of_medians"):
        rounds = ", ".join(f"{x:.2f}" for x in limit["per_round"])
        table += (
            f"\n\nlimit row: sockact / plain waitress req/s = {limit['median_of_medians']:.2f} "
            f"(of the medians; per round {rounds})"
        )
        if limit.get("cpu_per_request_median"):
            cpu_rounds = ", ".join(f"{x:.2f}" for x in limit["cpu_per_request_per_round"])
            table += (
                f"\nlimit row: sockact / plain waitress CPU time per request = "
                f"{limit['cpu_per_request_median']:.2f} (median of rounds {cpu_rounds}): "
                f"sockact's own share of the time per request is about "
                f"{100 * (1 - 1 / limit['cpu_per_request_median']):.0f}%"
            )
    return table


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def open_table(runs: list[dict[str, Any]]) -> str:
    """One row per open-loop run: handover against the steady window of the same run."""
    head = (
        "handover (open loop)",
        "run",
        "requests",
        "failed (by kind)",
        "late",
        "window s",
        "ho p99",
        "steady p99",
        "p99 ratio",
        "ho max",
        "steady max",
        "max ratio",
        "max/st.p99",
        "max from READY",
        "load 1m",
    )
    rows = [head]
    for r in sorted(runs, key=lambda r: (SCENARIO_ORDER[r["scenario"]], r["round"])):
        ho, st = r["handover"], r["steady"]
        a, b = r["windows_s"]["handover"]
        rows.append(
            (
                r["scenario"],
                str(r["round"]),
                f"{r['requests']:,}",
                fmt_failures(r["failures"]),
                str(r["probe"]["late"]),
                f"{b - a:.1f}" + ("" if r["equal_windows"] else "*"),
                f"{ho['p99_ms']:.1f}",
                f"{st['p99_ms']:.1f}",
                fmt_ratio(r["p99_ratio"]),
                f"{ho['max_ms']:.0f}",
                f"{st['max_ms']:.0f}",
                fmt_ratio(r["max_ratio"]),
                fmt_ratio(r["max_over_steady_p99"]),
                fmt_from_ready(r),
                f"{r['loadavg_before'][0]:.2f}",
            )
        )
    return render(rows, right=range(1, len(head)))


def spread(values: Sequence[float | None]) -> str:
    """min / median / max of the values that exist."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def open_summary_table(runs: list[dict[str, Any]]) -> str:
    """Per scenario over its rounds: the ratios' min / median / max, and the target."""
    head = (
        "scenario",
        "rounds",
        "failed",
        "p99 ratio min/med/max",
        "max ratio min/med/max",
        "max/st.p99 min/med/max",
        f"rounds with p99 <= {TARGET_P99_RATIO:g}x and max <= {TARGET_MAX_RATIO:g}x",
    )
    rows = [head]
    names = sorted({r["scenario"] for r in runs}, key=lambda n: SCENARIO_ORDER[n])
    for name in names:
        rs = [r for r in runs if r["scenario"] == name]
        rows.append(
            (
                name,
                str(len(rs)),
                str(sum(r["failed"] for r in rs)),
                spread([r["p99_ratio"] for r in rs]),
                spread([r["max_ratio"] for r in rs]),
                spread([r["max_over_steady_p99"] for r in rs]),
                f"{sum(bool(r['meets_target']) for r in rs)} of {len(rs)}",
            )
        )
    return render(rows, right=range(1, len(head)))


def render(rows: Sequence[Sequence[str]], right: Any = ()) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = set(right)
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append(
                "|"
                + "|".join(
                    ("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                    for i, w in enumerate(widths)
                )
                + "|"
            )
    return "\n".join(lines)


SCENARIO_ORDER = {sc.name: i for i, sc in enumerate(SCENARIOS)}


# -- main ---------------------------------------------------------------------------------


def git_commit() -> str:
    res = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout.strip() or "unknown"


def measure_rate(args: argparse.Namespace, logdir: Path) -> tuple[float, dict[str, Any]]:
    """The open-loop rate: --rate, or --rate-fraction of one sockact instance's capacity
    under the probe (closed loop, the same 8 + 8 clients), measured here."""
    if args.rate is not None:
        return args.rate, {"measured": False, "rate": args.rate}
    set_migrate_req(1)
    port = next_port()
    procs = Procs(logdir)
    try:
        srv = SockactServer(procs, 1, "reuseport", port)
        srv.wait_ready()
        targets = [Target(HOST, port, "/")]
        measure_capacity(targets, 1.0, KEEPALIVE_CLIENTS, NEW_CONN_CLIENTS)  # warm-up
        runs = [
            measure_capacity(targets, args.capacity_seconds, KEEPALIVE_CLIENTS, NEW_CONN_CLIENTS)
            for _ in range(2)
        ]
    finally:
        procs.close()
    caps = [capacity_of(r) for r in runs]
    failed = sum(r.failed for r in runs)
    if failed:
        raise RuntimeError(f"capacity runs saw {failed} failed requests")
    capacity = statistics.median(caps)
    rate = round(capacity * args.rate_fraction, 1)
    log(
        f"capacity of one sockact instance: {capacity:,.0f} req/s "
        f"({', '.join(f'{c:,.0f}' for c in caps)}); open loop at {rate:,.0f} req/s"
    )
    return rate, {
        "measured": True,
        "what": f"one sockact instance (reuseport, {THREADS} threads, demo app), probe closed "
        f"loop {KEEPALIVE_CLIENTS} keep-alive + {NEW_CONN_CLIENTS} new-connection clients, "
        f"{args.capacity_seconds:g} s, median of 2 after a 1 s warm-up",
        "runs_rps": [round(c, 1) for c in caps],
        "capacity_rps": round(capacity, 1),
        "fraction": args.rate_fraction,
        "rate": rate,
    }


def inner(args: argparse.Namespace) -> int:
    """Runs inside the namespace (``ip netns exec``)."""
    if not MIGRATE_REQ.exists():
        log("kernel without net.ipv4.tcp_migrate_req (Linux < 5.14): cannot run")
        return 2
    open_loop = args.load == "open"
    if args.only:
        chosen = [sc for sc in SCENARIOS if sc.name in args.only]
    elif open_loop:
        chosen = [sc for sc in SCENARIOS if sc.name in OPEN_SCENARIOS]
    else:
        chosen = list(SCENARIOS)
    started = datetime.now(UTC)
    commit = git_commit()
    out = Path(args.out or BENCH / "results" / f"{started:%Y%m%dT%H%M%SZ}-{commit}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    probe_text = (
        f"sockact.controller.probe.Probe, open loop (fixed interval), keep-alive : "
        f"new-connection = {KEEPALIVE_CLIENTS} : {NEW_CONN_CLIENTS}, no retries, one probe "
        "per run, latency from each request's due time"
        if open_loop
        else f"sockact.controller.probe.Probe: {KEEPALIVE_CLIENTS} keep-alive + "
        f"{NEW_CONN_CLIENTS} new-connection clients, no retries, a new probe per window"
    )
    result: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "commit": commit,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
        "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "inner"
        },
        "load": args.load,
        "probe": probe_text,
        "handover": [],
    }
    with tempfile.TemporaryDirectory(prefix="sockact-bench-") as tmp:
        logdir = Path(tmp)
        rate: float | None = None
        if open_loop and not args.no_handover:
            try:
                rate, result["capacity"] = measure_rate(args, logdir)
            except Exception as exc:
                log(f"capacity: ERROR {exc}")
                result["capacity_error"] = str(exc)
                args.no_handover = True
        if not args.no_handover:
            for rnd in range(1, args.rounds + 1):
                # interleaved: every scenario once per round, order rotated each round
                k = (rnd - 1) % len(chosen)
                for sc in chosen[k:] + chosen[:k]:
                    log(f"handover {sc.name} round {rnd} (load {loadavg()})")
                    png = None
                    if open_loop and rnd == 1 and not args.no_png:
                        png = out.with_name(f"{out.stem}-{sc.name}.png")
                    try:
                        r = run_handover(sc, args.steady, args.tail, logdir, rate, png)
                    except Exception as exc:
                        log(f"  {sc.name} round {rnd}: ERROR {exc}")
                        result["handover"].append(
                            {"scenario": sc.name, "round": rnd, "error": str(exc)}
                        )
                        continue
                    r["round"] = rnd
                    ho = r["handover"]
                    log(
                        f"  failed {fmt_failures(r['failures'])}, handover p99 "
                        f"{ho['p99_ms']:.1f} max {ho['max_ms']:.0f} ms, steady p99 "
                        f"{r['steady']['p99_ms']:.1f} max {r['steady']['max_ms']:.0f} ms, "
                        f"marks {r['marks_s']}"
                    )
                    result["handover"].append(r)
        if not args.no_throughput:
            log("throughput (wrk)")
            try:
                result["throughput"] = run_throughput(args.wrk_runs, args.wrk_duration, logdir)
            except Exception as exc:
                log(f"  throughput: ERROR {exc}")
                result["throughput_error"] = str(exc)
    result["loadavg_end"] = loadavg()
    result["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(summary(result, out))
    return 0


def summary(result: dict[str, Any], out: Path) -> str:
    lines = [
        f"sockact bench {result['date']} commit {result['commit']} kernel {result['kernel']} "
        f"cpus {result['cpus']} load {result['loadavg_start']} -> {result['loadavg_end']} "
        f"({result['seconds']} s)",
        "",
    ]
    ok = [r for r in result["handover"] if "error" not in r]
    open_runs = [r for r in ok if r.get("load") == "open"]
    ok = [r for r in ok if r.get("load") != "open"]
    if open_runs:
        cap = result.get("capacity", {})
        lines += [
            f"Handover under open-loop load: {open_runs[0]['rate']:,.0f} req/s"
            + (
                f" ({cap['fraction']:.0%} of one sockact instance's measured capacity, "
                f"{cap['capacity_rps']:,.0f} req/s)"
                if cap.get("measured")
                else ""
            )
            + "; demo app, 1 s warm-up.",
            "Windows: handover = new server started .. old one exited + 1 s; steady = the "
            "same length just before it, same run (* = shorter: the run's steady phase was "
            "too short). Latency from each request's due time. Ratios: handover / steady.",
            "",
            open_summary_table(open_runs),
            "",
            open_table(open_runs),
            "",
        ]
        pngs = [r["png"] for r in open_runs if r.get("png")]
        if pngs:
            lines += ["timelines: " + ", ".join(pngs), ""]
    if ok:
        lines += [
            "Handover (16 clients: 8 keep-alive + 8 new-connection; demo app, 1 s warm-up).",
            "failed: every window (steady, handover, tail); ho p50/p99/max: handover window",
            "(new instance started .. old one exited + 1 s); steady p99/max: the window before.",
            "",
            handover_table(ok),
            "",
        ]
    for r in result["handover"]:
        if "error" in r:
            lines.append(f"ERROR {r['scenario']} round {r['round']}: {r['error'][:300]}")
    if "throughput" in result:
        lines += [
            "Steady-state throughput (wrk -t2 -c16, interleaved runs, medians).",
            "",
            throughput_table(result["throughput"]),
            "",
        ]
    if "throughput_error" in result:
        lines.append(f"ERROR throughput: {result['throughput_error'][:300]}")
    lines.append(f"raw results: {out}")
    return "\n".join(lines)


@contextlib.contextmanager
def netns() -> Iterator[str]:
    name = f"sockact-bench-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        # only what this benchmark started lives in its namespace: stop leftovers by PID
        res = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
        )
        for pid in res.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, short windows")
    p.add_argument("--json", action="store_true", help="print the results JSON, not tables")
    p.add_argument(
        "--rounds", type=int, help="handover runs per scenario (default: open 10, closed 2)"
    )
    p.add_argument(
        "--steady",
        type=float,
        help="steady phase before the handover, s (default: open 12, closed 5)",
    )
    p.add_argument("--tail", type=float, help="window after the handover, s (default 2)")
    p.add_argument("--wrk-runs", type=int, help="wrk runs per server (default: open 5, closed 3)")
    p.add_argument("--wrk-duration", type=float, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=[sc.name for sc in SCENARIOS],
        metavar="NAME",
        help="handover scenarios to run: " + ", ".join(sc.name for sc in SCENARIOS),
    )
    p.add_argument(
        "--load",
        choices=("open", "closed"),
        default="open",
        help="open: a fixed request rate, one probe per run (default); closed: 16 clients "
        "as fast as they can, a new probe per window (runs 1-4 of README.md)",
    )
    p.add_argument("--rate", type=float, help="open loop: req/s instead of measuring")
    p.add_argument(
        "--rate-fraction",
        type=float,
        default=0.5,
        help="open loop: fraction of the measured capacity (default 0.5)",
    )
    p.add_argument("--capacity-seconds", type=float, default=3.0)
    p.add_argument("--no-png", action="store_true", help="open loop: no timeline PNGs")
    p.add_argument(
        "--sockact-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="a further flag for every sockact serve, e.g. --sockact-arg=--warmup-nice=0",
    )
    p.add_argument("--no-handover", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/<date>-<commit>.json)"
    )
    p.add_argument(
        "--from-json", type=Path, metavar="FILE", help="print the tables of a saved results JSON"
    )
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.load == "open":
        quick = {"rounds": 1, "steady": 8.0, "tail": 1.0, "wrk_runs": 1, "wrk_duration": 3.0}
        full = {"rounds": 10, "steady": 12.0, "tail": 2.0, "wrk_runs": 5, "wrk_duration": 10.0}
    else:
        quick = {"rounds": 1, "steady": 2.0, "tail": 1.0, "wrk_runs": 1, "wrk_duration": 3.0}
        full = {"rounds": 2, "steady": 5.0, "tail": 2.0, "wrk_runs": 3, "wrk_duration": 10.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        print(summary(json.loads(args.from_json.read_text()), args.from_json))
        return 0
    SOCKACT_EXTRA[:] = args.sockact_arg
    if args.inner:
        return inner(args)
    if os.geteuid() != 0:
        print("bench/handover.py: needs root (ip netns)", file=sys.stderr)
        return 2
    raw = list(sys.argv[1:] if argv is None else argv)
    with netns() as name:
        log(f"network namespace {name}, load {loadavg()}")
        cmd = ["ip", "netns", "exec", name, PYTHON, str(Path(__file__).resolve()), *raw, "--inner"]
        return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
