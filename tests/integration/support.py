"""Helpers for integration tests that run real ``sockact serve`` processes.

The fixtures that use them are in ``conftest.py``. Every process is started in a session
of its own and stopped by its PID (its process group, which it leads) at teardown,
whatever the test did. Its stdout and stderr go to files in ``tmp_path`` and are printed
at teardown, so a failing test shows them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
SOCKACT = str(VENV_BIN / "sockact")
PYTHON = str(VENV_BIN / "python")
DEMO_APP = ["--app", "sockact_demo:create_app", "--warmup", "sockact_demo:warmup"]
#: the small WSGI apps of tests/integration/apps.py (importable with PYTHONPATH=ROOT)
TEST_APPS = "tests.integration.apps"


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_pair() -> tuple[int, int]:
    """Two distinct free loopback ports: (main, admin)."""
    while True:
        main, admin = free_port(), free_port()
        if main != admin:
            return main, admin


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without sockact and systemd variables, plus ``extra``."""
    drop = ("SOCKACT_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "JOURNAL_STREAM")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def connect_state(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> str:
    """'open' when a TCP connect succeeds, 'refused' on ECONNREFUSED, else the error."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {errno.errorcode.get(exc.errno or 0, exc)}"


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def http_get(
    port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One GET (urllib, new connection): (status, lower-cased headers, body)."""
    url = f"http://{url_host(host)}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return resp.status, headers, resp.read()
    except urllib.error.HTTPError as exc:
        headers = {k.lower(): v for k, v in exc.headers.items()}
        return exc.code, headers, exc.read()


def http_json(
    port: int, path: str = "/", timeout: float = 5.0, host: str = "127.0.0.1"
) -> tuple[int, Any]:
    status, _headers, body = http_get(port, path, host=host, timeout=timeout)
    return status, json.loads(body)


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Call ``check`` until it returns a truthy value (returned); fail after ``timeout``."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= end:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# -- raw HTTP/1.1 on a socket we control (keep-alive, Connection headers) ---------------


class RawConn:
    """A keep-alive HTTP/1.1 client connection that shows every header.

    TCP to ``host:port``, or a unix stream socket when ``unix`` is a path.
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        timeout: float = 10.0,
        unix: Path | str | None = None,
    ) -> None:
        if unix is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(unix))
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send_get(self, path: str = "/") -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())

    def send_post(self, path: str, body: bytes) -> None:
        head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def get(self, path: str = "/") -> tuple[int, dict[str, str], bytes]:
        self.send_get(path)
        return self.read_response()

    def wait_close(self, timeout: float) -> str:
        """How the server ended the connection within ``timeout``.

        ``"eof"`` for an orderly close (FIN), ``"reset"`` for an RST (a reset is not a
        clean close: the client may have lost a response), ``"open"`` when it is still
        open, ``"data"`` when unexpected bytes arrived instead.
        """
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "open"
        return "eof" if data == b"" else "data"

    def wait_eof(self, timeout: float) -> bool:
        """True once the server closed the connection cleanly (EOF, not a reset)."""
        return self.wait_close(timeout) == "eof"

    def close(self) -> None:
        self.sock.close()


# -- processes -------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """``pid`` runs (exists and is not a zombie: /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- sd_notify receiver ----------------------------------------------------------------


@dataclass
class Notification:
    t: float
    fields: dict[str, str]
    raw: str
    #: connect_state of the watched port at the moment this datagram arrived
    port_state: str | None = None


class NotifySocket:
    """An AF_UNIX datagram socket to pass as NOTIFY_SOCKET; collects what arrives.

    With ``watch_port``, a connect() to that port is tried the moment READY=1 arrives.
    Unix path sockets work across network namespaces, so this also watches processes
    started with ``ip netns exec``.
    """

    def __init__(self, path: Path, watch_port: int | None = None) -> None:
        self.path = path
        self.watch_port = watch_port
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[Notification] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            raw = data.decode(errors="replace")
            fields = {}
            for line in raw.splitlines():
                k, _, v = line.partition("=")
                fields[k] = v
            msg = Notification(now, fields, raw)
            if "READY" in fields and self.watch_port is not None:
                msg.port_state = connect_state(self.watch_port)
            with self._lock:
                self.messages.append(msg)

    def snapshot(self) -> list[Notification]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15.0) -> Notification:
        def found() -> Notification | None:
            for m in self.snapshot():
                if key in m.fields and (value is None or m.fields[key] == value):
                    return m
            return None

        result: Notification = poll(f"{key}={value or '*'} on NOTIFY_SOCKET", found, timeout)
        return result

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


# -- sockact serve processes ----------------------------------------------------------


@dataclass
class ServeProc:
    """A running ``sockact serve`` (or anything wrapping it that execs in place)."""

    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    out_path: Path
    err_path: Path
    argv: list[str]
    admin_host: str = "127.0.0.1"
    reported: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        out = self.out_path.read_text(errors="replace")
        err = self.err_path.read_text(errors="replace")
        return f"--- argv: {self.argv}\n--- stdout:\n{out}--- stderr:\n{err}"

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def admin(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        return http_json(self.admin_port, path, timeout=timeout, host=self.admin_host)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (/proc/<pid>/stat)."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def threads(self) -> int:
        """How many threads the process has now."""
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def nofile(self) -> tuple[int, int]:
        """The process's (soft, hard) RLIMIT_NOFILE now."""
        return resource.prlimit(self.pid, resource.RLIMIT_NOFILE)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_lines(self, needle: str) -> list[str]:
        """Lines of stderr that contain ``needle``."""
        return [line for line in self.stderr().splitlines() if needle in line]

    def _alive_or_fail(self, what: str) -> None:
        if self.proc.poll() is not None:
            pytest.fail(
                f"sockact exited with {self.proc.returncode} while waiting for {what}\n"
                + self.output()
            )

    def wait_live(self, timeout: float = 15.0) -> None:
        def live() -> bool:
            self._alive_or_fail("/live")
            try:
                return self.admin("/live", timeout=0.5)[0] == 200
            except (OSError, ValueError):
                return False

        poll(f"admin /live on {self.admin_port}", live, timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            self._alive_or_fail("/ready")
            try:
                return self.admin("/ready", timeout=0.5)[0] == 200
            except (OSError, ValueError):
                return False

        poll(f"admin /ready 200 on {self.admin_port}", ready, timeout)

    def wait_phase(self, phase: str, timeout: float = 10.0) -> None:
        def in_phase() -> bool:
            self._alive_or_fail(f"phase {phase}")
            try:
                return bool(self.admin("/ready", timeout=0.5)[1].get("phase") == phase)
            except (OSError, ValueError):
                return False

        poll(f"phase {phase!r}", in_phase, timeout, interval=0.02)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"sockact (pid {self.pid}) still running after {timeout:g} s\n" + self.output()
            )

    def kill(self) -> None:
        """Stop the process (and its group) by PID: SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


class ServeFactory:
    """Starts ``sockact serve`` processes; ``close()`` stops them all by PID."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[ServeProc] = []

    def start(
        self,
        *args: str,
        instance: int = 1,
        port: int | None = None,
        admin_port: int | None = None,
        warmup: float | None = 0.5,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        demo: bool = True,
        command: Sequence[str] | None = None,
        admin_host: str = "127.0.0.1",
        pass_fds: Sequence[int] = (),
        nofile: tuple[int, int] | None = None,
    ) -> ServeProc:
        """Start ``prefix... sockact serve --instance I --host 127.0.0.1 --port P ...``.

        ``warmup`` sets DEMO_WARMUP; ``command`` replaces the whole sockact part;
        ``nofile`` sets the (soft, hard) RLIMIT_NOFILE (equal: sockact cannot raise it);
        ``pass_fds`` are inherited. PYTHONPATH holds the checkout, so the test apps
        (``TEST_APPS``) import.
        """
        if port is None or admin_port is None:
            p, a = free_port_pair()
            port = p if port is None else port
            admin_port = a if admin_port is None else admin_port
        extra_env = {"PYTHONPATH": str(ROOT), **(env or {})}
        if warmup is not None:
            extra_env.setdefault("DEMO_WARMUP", str(warmup))
        if command is None:
            command = [
                SOCKACT,
                "serve",
                *(DEMO_APP if demo else []),
                "--instance",
                str(instance),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--admin-port",
                str(admin_port),
                "--admin-host",
                admin_host,
                *args,
            ]
        argv = [*prefix, *command]
        n = len(self.procs)
        out_path = self.tmp_path / f"serve{n}.out"
        err_path = self.tmp_path / f"serve{n}.err"

        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=clean_env(**extra_env),
                cwd=ROOT,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
                preexec_fn=limit_files if nofile is not None else None,
            )
        sp = ServeProc(proc, port, admin_port, out_path, err_path, argv, admin_host)
        self.procs.append(sp)
        return sp

    def close(self) -> None:
        for sp in self.procs:
            sp.kill()
        for sp in self.procs:
            sys.stdout.write(f"\n=== sockact pid {sp.pid} exit {sp.proc.returncode}\n")
            sys.stdout.write(sp.output())


def listening_inodes(port: int) -> set[int]:
    """Inodes of TCP sockets in LISTEN state on local ``port`` (this netns, /proc/net/tcp*)."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as fh:
            next(fh)
            for line in fh:
                cols = line.split()
                local, state, inode = cols[1], cols[3], int(cols[9])
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(inode)
    return found


def socket_fds(pid: int) -> dict[int, int]:
    """fd -> socket inode for the sockets process ``pid`` holds."""
    fds = {}
    for entry in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
            if target.startswith("socket:["):
                fds[int(entry)] = int(target[8:-1])
    return fds


def json_of(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text)
    return result


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels`` in a /metrics text, or
    None when there is none (read with prometheus_client's parser, as Prometheus would)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def scrape(sp: ServeProc, timeout: float = 2.0) -> str:
    """The instance's /metrics text."""
    _status, _headers, body = http_get(
        sp.admin_port, "/metrics", host=sp.admin_host, timeout=timeout
    )
    return body.decode()


def in_flight(sp: ServeProc, count: int = 1) -> bool:
    """True when the instance's /metrics shows ``count`` requests in flight."""
    return metric(scrape(sp, timeout=1), "sockact_http_requests_in_flight") == count


class PortWatch:
    """Tries connect() to a port every 20 ms in a thread, recording each result.

    ``with PortWatch(port) as seen: ...``; afterwards ``seen.results`` holds every
    connect_state, in order.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.results: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append(connect_state(self.port, self.host, timeout=0.5))
            time.sleep(0.02)

    def __enter__(self) -> PortWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


@dataclass
class Netns:
    """A network namespace of the test's own (``ip netns``); processes run in it by prefix."""

    name: str

    @classmethod
    def create(cls, prefix: str = "sockact-t") -> Netns:
        ns = cls(f"{prefix}-{secrets.token_hex(4)}")
        subprocess.run(["ip", "netns", "add", ns.name], check=True)
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        return ns

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def set_migrate_req(self, value: int) -> None:
        path = "/proc/sys/net/ipv4/tcp_migrate_req"
        res = self.run("sh", "-c", f"echo {value} > {path} && cat {path}")
        if res.returncode != 0 and "No such file" in res.stderr:
            pytest.skip("kernel without net.ipv4.tcp_migrate_req (Linux < 5.14)")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == str(value)

    def pids(self) -> list[int]:
        res = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(p) for p in res.stdout.split()]

    def delete(self) -> None:
        """Kill what still runs in the namespace (only this test's processes), by PID."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], check=False)
