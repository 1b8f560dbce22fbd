"""A load probe that never retries and counts every failed request by kind.

Every handover test and benchmark uses it to prove "zero failed requests of any kind".
It speaks HTTP/1.1 over raw sockets (stdlib only) so that nothing between the probe and
the server can retry, reconnect or swallow an error behind its back.

Two kinds of clients, spread over the targets round-robin (client ``i`` of a kind uses
``targets[i % len(targets)]``):

* keep-alive clients reuse one connection. They open a new one only when the server
  said ``Connection: close`` (or answered HTTP/1.0 without keep-alive, or ended the body
  by closing), or when the server had already closed the idle connection cleanly (FIN)
  *before* the next request was sent: that close is seen with a zero-timeout poll just
  before sending, is not a failure, and is counted in :attr:`Report.server_closes`.
  A close that crosses the next request on the wire shows up as ``empty_reply`` or
  ``reset`` and IS a failure: the request is never retried.
* new-connection clients open one connection per request and send ``Connection: close``.

Latency is measured per request, from the moment the client starts it (the connect, when
the request needs a new connection, then the send) to the last byte of the response:
a SYN dropped by a full accept queue (a 1 s stall) must show up, so connect time is in.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import select
import socket
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

from sockact.errors import EXIT_PROBE_FAILED, BadInput

#: exit code of ``sockact probe`` when any request failed (or none was made)

#: every failure kind, in report order
FAILURE_KINDS: Final[tuple[str, ...]] = (
    "refused",
    "reset",
    "empty_reply",
    "truncated",
    "timeout",
    "http_5xx",
    "http_other",
    "bad_response",
    "other",
)

DEFAULT_MAX_DURATION: Final = 600.0
_MAX_LINE: Final = 8192
_MAX_HEADER_BYTES: Final = 65536
_MAX_BODY: Final = 16 * 1024 * 1024
_MAX_JSON_BODY: Final = 65536
_MAX_ERROR_SAMPLES: Final = 20
_RECV_SIZE: Final = 65536

SampleKey = tuple[str | None, str | None]


@dataclass(frozen=True)
class Target:
    """One HTTP endpoint: where to connect and what to GET."""

    host: str
    port: int
    path: str = "/"

    @classmethod
    def from_url(cls, url: str) -> Target:
        """Parse ``http://HOST:PORT/PATH?QUERY`` (port defaults to 80; https is refused)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise BadInput(f"bad probe URL {url!r}: {exc}") from None
        if parts.scheme != "http":
            raise BadInput(f"bad probe URL {url!r}: only http:// is supported")
        if not parts.hostname:
            raise BadInput(f"bad probe URL {url!r}: no host")
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return cls(parts.hostname, 80 if port is None else port, path)

    @property
    def url(self) -> str:
        return f"http://{self._hostport}{self.path}"

    @property
    def _hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def request(self, keepalive: bool) -> bytes:
        """The exact bytes of one GET request."""
        conn = "" if keepalive else "Connection: close\r\n"
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self._hostport}\r\n"
            f"User-Agent: sockact-probe\r\nAccept: */*\r\n{conn}\r\n"
        ).encode("latin-1")


@dataclass(frozen=True)
class Second:
    """One second of the run (``t`` seconds after start): for plots."""

    t: int
    ok: int
    failed: int
    max_ms: float


@dataclass(frozen=True)
class Report:
    """What the probe saw. ``failures`` always has every kind of FAILURE_KINDS."""

    ok: int
    failures: Mapping[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    duration_s: float
    rps: float
    #: (instance, version) -> count, for ok responses whose body is a JSON object with
    #: an "instance" or "version" key (a missing key is None)
    samples: Counter[SampleKey]
    series: tuple[Second, ...]
    #: texts of the first "other" errors (and a few details of the rest)
    error_samples: tuple[str, ...]
    #: TCP connections opened
    connections: int
    #: idle keep-alive connections found closed cleanly before a request (not failures)
    server_closes: int
    targets: tuple[str, ...] = ()
    keepalive_clients: int = 0
    new_conn_clients: int = 0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": list(self.targets),
            "keepalive_clients": self.keepalive_clients,
            "new_conn_clients": self.new_conn_clients,
            "duration_s": round(self.duration_s, 3),
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "failures": dict(self.failures),
            "rps": round(self.rps, 1),
            "latency_ms": {
                "p50": round(self.p50_ms, 3),
                "p90": round(self.p90_ms, 3),
                "p99": round(self.p99_ms, 3),
                "max": round(self.max_ms, 3),
            },
            "connections": self.connections,
            "server_closes": self.server_closes,
            "samples": [
                {"instance": inst, "version": ver, "count": n}
                for (inst, ver), n in self.samples.most_common()
            ],
            "series": [
                {"t": s.t, "ok": s.ok, "failed": s.failed, "max_ms": round(s.max_ms, 3)}
                for s in self.series
            ],
            "error_samples": list(self.error_samples),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def format_table(self) -> str:
        lines = [
            f"targets    {' '.join(self.targets)}",
            f"clients    {self.keepalive_clients} keep-alive + "
            f"{self.new_conn_clients} new-connection, {self.duration_s:.1f} s",
            f"requests   {self.total:>10,}  ({self.rps:,.0f}/s)",
            f"ok         {self.ok:>10,}",
            f"FAILED     {self.failed:>10,}" if self.failed else f"failed     {self.failed:>10,}",
        ]
        lines += [f"  {kind:<12} {self.failures.get(kind, 0):>8,}" for kind in FAILURE_KINDS]
        lines.append(
            f"latency ms p50 {self.p50_ms:.2f}  p90 {self.p90_ms:.2f}  "
            f"p99 {self.p99_ms:.2f}  max {self.max_ms:.2f}"
        )
        lines.append(
            f"connections {self.connections:,} opened, {self.server_closes:,} idle ones "
            "closed cleanly by the server"
        )
        if self.samples:
            lines.append("served by (instance, version):")
            lines += [
                f"  {inst!s:<20} {ver!s:<12} {n:>8,}"
                for (inst, ver), n in self.samples.most_common()
            ]
        if self.error_samples:
            lines.append("error samples:")
            lines += [f"  {e}" for e in self.error_samples]
        return "\n".join(lines)


class _Failure(Exception):
    """A request failed in a way the parser or the client decided (not an OSError)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _classify(exc: BaseException, stage: str) -> tuple[str, str]:
    """Map an exception of one request to (failure kind, detail)."""
    if isinstance(exc, _Failure):
        return exc.kind, f"{stage}: {exc.detail}"
    text = f"{stage}: {type(exc).__name__}: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", text
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset", text
    if isinstance(exc, TimeoutError):  # socket.timeout and ETIMEDOUT
        return "timeout", text
    if isinstance(exc, OSError):
        if exc.errno == errno.ECONNREFUSED:
            return "refused", text
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return "reset", text
    return "other", text


class _Conn:
    """One TCP connection and its receive buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.got_any = False
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def closed_while_idle(self) -> bool:
        """True when the server closed this idle connection cleanly (FIN already here).

        Raises on a reset, and _Failure on bytes nobody asked for.
        """
        if self.buf:
            raise _Failure("bad_response", "unsolicited bytes after a response")
        if not self._poll.poll(0):
            return False
        data = self.sock.recv(1, socket.MSG_PEEK)
        if data:
            raise _Failure("bad_response", "unsolicited bytes on an idle connection")
        return True

    def _eof(self, what: str) -> _Failure:
        if self.got_any:
            return _Failure("truncated", f"connection closed in the {what}")
        return _Failure("empty_reply", "connection closed before any response byte")

    def _recv(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failure("timeout", "no complete response in time")
        self.sock.settimeout(remaining)
        data = self.sock.recv(_RECV_SIZE)
        if not data:
            return False
        self.buf += data
        self.got_any = True
        return True

    def line(self, deadline: float, what: str) -> bytes:
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return out
            if len(self.buf) > _MAX_LINE:
                raise _Failure("bad_response", f"{what} line too long")
            start = max(0, len(self.buf) - 1)
            if not self._recv(deadline):
                raise self._eof(what)

    def exact(self, n: int, deadline: float, what: str) -> bytes:
        while len(self.buf) < n:
            if not self._recv(deadline):
                raise self._eof(what)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def until_close(self, deadline: float) -> bytes:
        while self._recv(deadline):
            if len(self.buf) > _MAX_BODY:
                raise _Failure("bad_response", "close-delimited body too large")
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _read_response(conn: _Conn, deadline: float) -> tuple[int, bytes, bool]:
    """Read one response: (status, body, connection must close)."""
    conn.got_any = bool(conn.buf)
    while True:
        status_line = conn.line(deadline, "status")
        parts = status_line.split(b" ", 2)
        version = parts[0]
        if (
            len(parts) < 2
            or version not in (b"HTTP/1.1", b"HTTP/1.0")
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            raise _Failure("bad_response", f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[bytes, list[bytes]] = {}
        size = 0
        while True:
            line = conn.line(deadline, "headers")
            if not line:
                break
            size += len(line)
            if size > _MAX_HEADER_BYTES:
                raise _Failure("bad_response", "headers too large")
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise _Failure("bad_response", f"bad header line {line[:80]!r}")
            headers.setdefault(name.lower(), []).append(value.strip())
        if 100 <= status < 200 and status != 101:
            continue  # interim response: the real one follows
        break
    tokens = {t.strip().lower() for v in headers.get(b"connection", []) for t in v.split(b",")}
    must_close = b"close" in tokens or (version == b"HTTP/1.0" and b"keep-alive" not in tokens)
    if status == 101:
        return status, b"", True
    if status in (204, 304):
        return status, b"", must_close
    codings = [
        t.strip().lower() for v in headers.get(b"transfer-encoding", []) for t in v.split(b",")
    ]
    if codings:
        if codings[-1] != b"chunked":
            return status, conn.until_close(deadline), True
        return status, _read_chunked(conn, deadline), must_close
    lengths = {v for v in headers.get(b"content-length", [])}
    if lengths:
        if len(lengths) != 1:
            raise _Failure("bad_response", "conflicting Content-Length headers")
        raw = lengths.pop()
        if not raw.isdigit():
            raise _Failure("bad_response", f"bad Content-Length {raw[:40]!r}")
        n = int(raw)
        if n > _MAX_BODY:
            raise _Failure("bad_response", "body too large")
        return status, conn.exact(n, deadline, "body"), must_close
    return status, conn.until_close(deadline), True


def _read_chunked(conn: _Conn, deadline: float) -> bytes:
    body = bytearray()
    while True:
        line = conn.line(deadline, "chunk size")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Failure("bad_response", f"bad chunk size {line[:40]!r}") from None
        if size < 0 or len(body) + size > _MAX_BODY:
            raise _Failure("bad_response", "bad or too large chunk")
        if size == 0:
            while conn.line(deadline, "trailers"):
                pass
            return bytes(body)
        body += conn.exact(size, deadline, "chunk")
        if conn.exact(2, deadline, "chunk") != b"\r\n":
            raise _Failure("bad_response", "chunk not followed by CRLF")


def _sample_of(body: bytes) -> SampleKey | None:
    if not body.startswith(b"{") or len(body) > _MAX_JSON_BODY:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or ("instance" not in doc and "version" not in doc):
        return None
    inst, ver = doc.get("instance"), doc.get("version")
    return (None if inst is None else str(inst), None if ver is None else str(ver))


class _Stats:
    """One client's counters; written by its thread, read by snapshot()."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.latencies = array("d")
        self.samples: Counter[SampleKey] = Counter()
        self.series: dict[int, list[float]] = {}
        self.errors: list[str] = []
        self.connections = 0
        self.server_closes = 0

    def _bucket(self, now: float) -> list[float]:
        sec = max(0, int(now - self.t0))
        b = self.series.get(sec)
        if b is None:
            b = self.series[sec] = [0, 0, 0.0]
        return b

    def record_ok(self, now: float, ms: float, sample: SampleKey | None) -> None:
        with self.lock:
            self.ok += 1
            self.latencies.append(ms)
            if sample is not None:
                self.samples[sample] += 1
            b = self._bucket(now)
            b[0] += 1
            if ms > b[2]:
                b[2] = ms

    def record_failure(self, now: float, kind: str, detail: str) -> None:
        with self.lock:
            self.failures[kind] += 1
            self._bucket(now)[1] += 1
            if len(self.errors) < _MAX_ERROR_SAMPLES and (
                kind == "other" or self.failures[kind] <= 2
            ):
                self.errors.append(f"{kind}: {detail}")


def _percentile(sorted_ms: Sequence[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]


class Probe:
    """Load on one or more targets from threads; :meth:`stop` returns the :class:`Report`.

    Never retries. Clients stop by themselves after ``max_duration`` seconds or once
    ``max_requests`` requests (over all clients) were started. :meth:`stop` waits for
    requests in flight, which end within ``timeout`` (a request's whole budget:
    connect, send and response), so it returns within about ``timeout`` + 1 s.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        keepalive_clients: int = 6,
        new_conn_clients: int = 6,
        timeout: float = 5.0,
        pause: float = 0.0,
        max_requests: int | None = None,
        max_duration: float = DEFAULT_MAX_DURATION,
    ) -> None:
        if not targets:
            raise BadInput("probe: no target")
        if (
            keepalive_clients < 0
            or new_conn_clients < 0
            or (keepalive_clients + new_conn_clients == 0)
        ):
            raise BadInput("probe: need at least one client, and no negative counts")
        if timeout <= 0 or pause < 0 or max_duration <= 0:
            raise BadInput("probe: timeout and max_duration must be > 0, pause >= 0")
        if max_requests is not None and max_requests < 0:
            raise BadInput("probe: max_requests must be >= 0")
        self.targets = tuple(targets)
        self.keepalive_clients = keepalive_clients
        self.new_conn_clients = new_conn_clients
        self.timeout = timeout
        self.pause = pause
        self.max_requests = max_requests
        self.max_duration = max_duration
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self._started = 0
        self._threads: list[threading.Thread] = []
        self._stats: list[_Stats] = []
        self._t0 = 0.0
        self._hard_end = 0.0
        self._end: float | None = None
        self._alive = 0
        self._report: Report | None = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> Probe:
        if self._threads:
            raise RuntimeError("probe already started")
        self._t0 = time.monotonic()
        self._hard_end = self._t0 + self.max_duration
        clients = [(True, i) for i in range(self.keepalive_clients)]
        clients += [(False, i) for i in range(self.new_conn_clients)]
        self._alive = len(clients)
        for n, (keepalive, i) in enumerate(clients):
            stats = _Stats(self._t0)
            self._stats.append(stats)
            target = self.targets[i % len(self.targets)]
            kind = "ka" if keepalive else "new"
            t = threading.Thread(
                target=self._client,
                args=(stats, target, keepalive),
                name=f"probe-{kind}-{n}",
                daemon=True,
            )
            self._threads.append(t)
        for t in self._threads:
            t.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every client stopped by itself; True if they did."""
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            while t.is_alive():
                left = 0.2 if end is None else min(0.2, end - time.monotonic())
                if left <= 0:
                    return False
                t.join(left)
        return True

    def stop(self) -> Report:
        """Stop the clients, wait for requests in flight, return the final report."""
        if self._report is not None:
            return self._report
        now = time.monotonic()
        with self._lock:
            if self._end is None:
                self._end = now
        self._stop_evt.set()
        self.wait(self.timeout + 1.0)
        report = self.snapshot()
        self._report = report
        return report

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def report(self) -> Report | None:
        """The final report once :meth:`stop` ran."""
        return self._report

    def snapshot(self) -> Report:
        """A report of everything counted so far (the clients keep running)."""
        ok = 0
        failures: Counter[str] = Counter()
        lat = array("d")
        samples: Counter[SampleKey] = Counter()
        series: dict[int, list[float]] = {}
        errors: list[str] = []
        connections = server_closes = 0
        for s in self._stats:
            with s.lock:
                ok += s.ok
                failures.update(s.failures)
                lat.extend(s.latencies)
                samples.update(s.samples)
                for sec, (b_ok, b_fail, b_max) in s.series.items():
                    m = series.setdefault(sec, [0, 0, 0.0])
                    m[0] += b_ok
                    m[1] += b_fail
                    m[2] = max(m[2], b_max)
                errors.extend(s.errors)
                connections += s.connections
                server_closes += s.server_closes
        with self._lock:
            end = self._end
        if not self._threads:
            duration = 0.0
        else:
            duration = (time.monotonic() if end is None else end) - self._t0
        ordered = sorted(lat)
        return Report(
            ok=ok,
            failures={k: failures.get(k, 0) for k in FAILURE_KINDS},
            p50_ms=_percentile(ordered, 0.50),
            p90_ms=_percentile(ordered, 0.90),
            p99_ms=_percentile(ordered, 0.99),
            max_ms=ordered[-1] if ordered else 0.0,
            duration_s=duration,
            rps=(ok + sum(failures.values())) / duration if duration > 0 else 0.0,
            samples=samples,
            series=tuple(
                Second(sec, int(b[0]), int(b[1]), b[2]) for sec, b in sorted(series.items())
            ),
            error_samples=tuple(errors[:_MAX_ERROR_SAMPLES]),
            connections=connections,
            server_closes=server_closes,
            targets=tuple(t.url for t in self.targets),
            keepalive_clients=self.keepalive_clients,
            new_conn_clients=self.new_conn_clients,
        )

    # -- clients ------------------------------------------------------------------

    def _claim(self) -> bool:
        """May this client start one more request?"""
        if self._stop_evt.is_set() or time.monotonic() >= self._hard_end:
            return False
        with self._lock:
            if self.max_requests is not None and self._started >= self.max_requests:
                return False
            self._started += 1
            return True

    def _connect(self, target: Target, deadline: float) -> _Conn:
        family, type_, proto, _, addr = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return _Conn(sock)

    def _client(self, stats: _Stats, target: Target, keepalive: bool) -> None:
        request = target.request(keepalive)
        conn: _Conn | None = None
        try:
            while self._claim():
                start = time.perf_counter()
                deadline = time.monotonic() + self.timeout
                stage = "connect"
                try:
                    if conn is not None:
                        stage = "reuse"
                        if conn.closed_while_idle():
                            with stats.lock:
                                stats.server_closes += 1
                            conn.close()
                            conn = None
                    if conn is None:
                        stage = "connect"
                        conn = self._connect(target, deadline)
                        with stats.lock:
                            stats.connections += 1
                    stage = "send"
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise _Failure("timeout", "no time left to send")
                    conn.sock.settimeout(remaining)
                    conn.sock.sendall(request)
                    stage = "response"
                    status, body, must_close = _read_response(conn, deadline)
                except Exception as exc:  # every failure is counted, none is retried
                    kind, detail = _classify(exc, stage)
                    stats.record_failure(time.monotonic(), kind, detail)
                    if conn is not None:
                        conn.close()
                        conn = None
                else:
                    ms = (time.perf_counter() - start) * 1000.0
                    now = time.monotonic()
                    if 200 <= status < 300:
                        stats.record_ok(now, ms, _sample_of(body))
                    elif status >= 500:
                        stats.record_failure(now, "http_5xx", f"HTTP {status}")
                    else:
                        stats.record_failure(now, "http_other", f"HTTP {status}")
                    if must_close or not keepalive:
                        conn.close()
                        conn = None
                if self.pause and self._stop_evt.wait(self.pause):
                    break
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                self._alive -= 1
                if self._alive == 0 and self._end is None:
                    self._end = time.monotonic()


# -- command line -----------------------------------------------------------------


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact probe URL [URL ...]``."""
    p = sub.add_parser(
        "probe",
        help="load one or more URLs, count every failed request by kind (never retries)",
        description=(
            "Send GET requests from keep-alive and new-connection clients for a while, "
            "never retrying, and report every failure by kind: refused, reset, "
            "empty_reply, truncated, timeout, http_5xx, http_other, bad_response, other."
        ),
        epilog=(
            f"Exit codes: 0 every request succeeded (2xx); {EXIT_PROBE_FAILED} any request "
            "failed, or no request was made; 2 bad input. Ctrl-C stops early and still "
            "prints the report."
        ),
    )
    p.add_argument("urls", nargs="+", metavar="URL", help="http://HOST:PORT/PATH")
    p.add_argument("--keepalive", type=int, default=6, metavar="N", help="keep-alive clients")
    p.add_argument(
        "--new", type=int, default=6, metavar="N", help="clients with a new connection each"
    )
    p.add_argument("--duration", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="budget of one request")
    p.add_argument(
        "--pause", type=float, default=0.0, metavar="S", help="sleep between a client's requests"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    """Handler of ``sockact probe``: run, print the report, return 0 or 6."""
    targets = [Target.from_url(u) for u in args.urls]
    if args.duration <= 0:
        raise BadInput("probe: --duration must be > 0")
    probe = Probe(
        targets,
        keepalive_clients=args.keepalive,
        new_conn_clients=args.new,
        timeout=args.timeout,
        pause=args.pause,
        max_duration=args.duration,
    )
    probe.start()
    try:
        probe.wait()
    except KeyboardInterrupt:
        print("probe: interrupted, stopping", file=sys.stderr)
    finally:
        report = probe.stop()
    print(report.to_json() if args.json else report.format_table())
    return 0 if report.failed == 0 and report.total > 0 else EXIT_PROBE_FAILED
