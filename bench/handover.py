"""Handover and throughput benchmark: sockact against gunicorn, in a network namespace.

    sudo .venv/bin/python bench/handover.py            # full run, < 5 minutes
    sudo .venv/bin/python bench/handover.py --quick    # smoke run, about a minute
    sudo .venv/bin/python bench/handover.py --json     # the results JSON on stdout

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

sys.path.insert(0, str(ROOT))
from sockact.controller.probe import Probe, Report, Target  # noqa: E402

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
        env = child_env(NOTIFY_SOCKET=str(self.notify.path), DEMO_VERSION=f"i{instance}")
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
            DEMO_VERSION=f"g{instance}",
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


def run_handover(sc: Scenario, steady: float, tail: float, logdir: Path) -> dict[str, Any]:
    set_migrate_req(sc.migrate_req)
    port = next_port()
    wait_port_free(port)
    procs = Procs(logdir)
    load = Load(port)
    shared: socket.socket | None = None
    marks: dict[str, float] = {}
    load_before = loadavg()
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
        steady_report = load.cut()

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
        handover_report = load.cut()
        time.sleep(tail)
        tail_report = load.stop()
        if new is not None and not new.proc.alive():
            raise RuntimeError(f"{new.proc.name} died:\n{new.proc.tail()}")
    finally:
        if load.current is not None:
            load.stop()
        procs.close()
        if shared is not None:
            shared.close()
    ho, st, tl = window(handover_report), window(steady_report), window(tail_report)
    failures: dict[str, int] = {}
    for w in (st, ho, tl):
        for k, v in w["failures"].items():
            failures[k] = failures.get(k, 0) + v
    return {
        "scenario": sc.name,
        "what": sc.what,
        "port": port,
        "migrate_req": sc.migrate_req,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "marks_s": {k: round(v, 3) for k, v in marks.items()},
        "requests": st["requests"] + ho["requests"] + tl["requests"],
        "failed": sum(failures.values()),
        "failures": failures,
        "steady": st,
        "handover": ho,
        "tail": tl,
        "max_over_steady_p99": round(ho["max_ms"] / st["p99_ms"], 2) if st["p99_ms"] else None,
    }


def max_from_ready(r: dict[str, Any]) -> float | None:
    """Handover max latency over the one-second buckets from the one B got ready in.

    The series has one-second buckets, so the bucket B's READY falls in counts whole
    (a few hundred ms before READY are included: this errs against sockact).
    """
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


def wrk(port: int, duration: float) -> dict[str, Any]:
    argv = ["wrk", "-t2", "-c16", f"-d{duration:g}s", "--latency", f"http://{HOST}:{port}/"]
    load_before = loadavg()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    if res.returncode != 0 or "Requests/sec" not in res.stdout:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stdout}\n{res.stderr}")
    return {**parse_wrk(res.stdout), "loadavg_before": load_before, "command": " ".join(argv)}


def run_throughput(runs: int, duration: float, logdir: Path) -> dict[str, Any]:
    set_migrate_req(1)
    ports = {"sockact": next_port(), "gunicorn": next_port()}
    procs = Procs(logdir)
    results: dict[str, list[dict[str, Any]]] = {"sockact": [], "gunicorn": []}
    try:
        a = SockactServer(procs, 1, "reuseport", ports["sockact"])
        b = SockactServer(procs, 2, "reuseport", ports["sockact"])
        g = GunicornMaster(
            procs, "tput", GunicornEvents(logdir / "tput.events"), ports["gunicorn"], False, 3
        )
        a.wait_ready()
        b.wait_ready()
        g.wait_ready()
        for port in ports.values():  # one discarded warm-up run each
            wrk(port, min(2.0, duration))
        for i in range(runs):
            # A B A B ..., and which goes first alternates (A B B A A B ...)
            order = list(ports) if i % 2 == 0 else list(reversed(ports))
            for name in order:
                r = wrk(ports[name], duration)
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
        }
    summary["setup"] = {
        "sockact": f"2 instances (reuseport, same port), {THREADS} threads each",
        "gunicorn": f"1 master, gthread, {GUNICORN_WORKERS} workers x {THREADS} threads",
        "wrk": f"wrk -t2 -c16 -d{duration:g}s --latency, interleaved, {runs} runs each",
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
    head = ("server", "setup", "runs", "req/s (median)", "avg ms", "p99 ms", "errors", "load 1m")
    rows = [head]
    for name in ("sockact", "gunicorn"):
        s = tp[name]
        loads = ", ".join(f"{r['loadavg_before'][0]:.1f}" for r in s["runs"])
        rps = ", ".join(f"{r['rps']:.0f}" for r in s["runs"])
        rows.append(
            (
                name,
                tp["setup"][name],
                str(len(s["runs"])),
                f"{s['median_rps']:.0f} ({rps})",
                f"{s['median_latency_avg_ms']:.2f}",
                f"{s['median_latency_p99_ms']:.2f}",
                str(s["errors"]),
                loads,
            )
        )
    return render(rows, right=(2, 3, 4, 5, 6))


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


def inner(args: argparse.Namespace) -> int:
    """Runs inside the namespace (``ip netns exec``)."""
    if not MIGRATE_REQ.exists():
        log("kernel without net.ipv4.tcp_migrate_req (Linux < 5.14): cannot run")
        return 2
    chosen = [sc for sc in SCENARIOS if not args.only or sc.name in args.only]
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
        "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "inner"
        },
        "probe": f"sockact.controller.probe.Probe: {KEEPALIVE_CLIENTS} keep-alive + "
        f"{NEW_CONN_CLIENTS} "
        "new-connection clients, no retries, a new probe per window",
        "handover": [],
    }
    with tempfile.TemporaryDirectory(prefix="sockact-bench-") as tmp:
        logdir = Path(tmp)
        if not args.no_handover:
            for rnd in range(1, args.rounds + 1):
                # interleaved: every scenario once per round, order rotated each round
                k = (rnd - 1) % len(chosen)
                for sc in chosen[k:] + chosen[:k]:
                    log(f"handover {sc.name} round {rnd} (load {loadavg()})")
                    try:
                        r = run_handover(sc, args.steady, args.tail, logdir)
                    except Exception as exc:
                        log(f"  {sc.name} round {rnd}: ERROR {exc}")
                        result["handover"].append(
                            {"scenario": sc.name, "round": rnd, "error": str(exc)}
                        )
                        continue
                    r["round"] = rnd
                    ho = r["handover"]
                    log(
                        f"  failed {fmt_failures(r['failures'])}, handover max "
                        f"{ho['max_ms']:.0f} ms, steady p99 {r['steady']['p99_ms']:.1f} ms, "
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

    out = args.out or BENCH / "results" / f"{started:%Y%m%dT%H%M%SZ}-{result['commit']}.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
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
    p.add_argument("--rounds", type=int, help="handover runs per scenario (default 2)")
    p.add_argument("--steady", type=float, help="steady-state window, s (default 5)")
    p.add_argument("--tail", type=float, help="window after the handover, s (default 2)")
    p.add_argument("--wrk-runs", type=int, help="wrk runs per server (default 3)")
    p.add_argument("--wrk-duration", type=float, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=[sc.name for sc in SCENARIOS],
        metavar="NAME",
        help="handover scenarios to run: " + ", ".join(sc.name for sc in SCENARIOS),
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
