"""The admin server: ``/live``, ``/ready``, ``/check``, ``/release`` and ``/metrics`` on a
port of its own.

It starts before anything else so that an operator (or Ansible) can watch the warm-up.
Every endpoint answers ``GET``; the JSON ones carry ``phase``, ``instance`` and ``pid``:

- ``/live``: 200 ``{"live": true, ...}`` while the process runs;
- ``/ready``: 200 ``{"ready": true, ...}`` while serving, 503 in every other phase;
- ``/check``: one in-process request (``check_path``) to *this* instance's app: 200 with
  the app's status and the start of its body when it answered 200-399, 502 when not
  (or when it raised), 503 before ready;
- ``/release``: 200 with the release this process runs, read once at start from its own
  installed distributions (:mod:`sockact.runtime.release`): ``digest``, ``distributions``,
  ``prefix``;
- ``/metrics``: :mod:`sockact.runtime.metrics` in Prometheus' text format, or in
  OpenMetrics when the ``Accept`` header asks for it;
- anything else: 404 with the list of paths.

Bounded, so that clients of the admin port cannot starve the instance: one thread
waits for requests on every connection at once (a selector) and hands only complete
request heads to a few worker threads; a connection that has not sent its request within
``TIMEOUT`` is closed; at most ``MAX_CONNECTIONS`` are open, and past that the oldest
one still waiting for its request is closed to make room, so ``/live`` answers even
while hundreds of idle connections are open. One request per connection
(``Connection: close``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from wsgiref.types import WSGIApplication
from wsgiref.util import setup_testing_defaults

from sockact.errors import AddressError
from sockact.runtime import release
from sockact.runtime.metrics import Metrics
from sockact.runtime.phase import Phase

log = logging.getLogger("sockact.runtime.admin")

#: what the admin server answers (see the module docstring)
PATHS = ("/live", "/ready", "/check", "/release", "/metrics")
#: open admin connections at most (waiting for their request, queued or being answered)
MAX_CONNECTIONS = 64
#: threads that answer requests (a /check runs the app, so it may take a while)
WORKERS = 4
#: seconds a connection has to send its request head, and a worker to send the answer
TIMEOUT = 5.0
#: request heads larger than this are refused (the admin endpoints take no body)
MAX_HEAD = 8192
#: after EMFILE/ENFILE on accept(), the listener rests this long before trying again
ACCEPT_PAUSE = 0.5


class _Handler(BaseHTTPRequestHandler):
    """Answers the one request whose head the selector loop has already read."""

    server: _State  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def __init__(self, conn: socket.socket, addr: Any, state: _State, head: bytes) -> None:
        self.head = head
        super().__init__(conn, addr, state)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(TIMEOUT)
        self.rfile = io.BytesIO(self.head)
        self.wfile = self.connection.makefile("wb", buffering=0)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.close()

    def do_GET(self) -> None:
        metrics = self.server.metrics
        path = self.path.split("?", 1)[0]
        if path == "/live":
            self._json(200, {"live": True, "phase": metrics.phase, **self._who()})
        elif path == "/ready":
            ready = metrics.phase == Phase.READY
            self._json(
                200 if ready else 503, {"ready": ready, "phase": metrics.phase, **self._who()}
            )
        elif path == "/check":
            self._check()
        elif path == "/release":
            self._json(200, {**self.server.release, **self._who()})
        elif path == "/metrics":
            body, content_type = metrics.exposition(self.headers.get("Accept"))
            self._send(200, content_type, body)
        else:
            self._json(404, {"error": "not found", "paths": list(PATHS)})

    def _check(self) -> None:
        """One request to this instance's app, in-process: proves *this* instance answers.

        A request to the main port cannot say which instance will take it (the kernel or
        whoever accepts first picks), so a deploy verifies each new instance here.
        """
        check = self.server.check
        if check is None or self.server.metrics.phase != Phase.READY:
            self._json(503, {"ok": False, "phase": self.server.metrics.phase, **self._who()})
            return
        result = check()
        ok = 200 <= result.status < 400
        body = {"ok": ok, "status": result.status, "body": result.excerpt(), **self._who()}
        self._json(200 if ok else 502, body)

    def _who(self) -> dict[str, int]:
        return {"instance": self.server.metrics.instance, "pid": os.getpid()}

    def _json(self, status: int, body: dict[str, object]) -> None:
        self._send(status, "application/json", json.dumps(body).encode() + b"\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("admin: " + format, *args)


@dataclass
class _State:
    """What the handlers read: shared by the loop and the worker threads."""

    metrics: Metrics
    check: Callable[[], CheckResult] | None = None
    release: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Waiting:
    """A connection whose request head is still coming."""

    conn: socket.socket
    addr: Any
    since: float
    head: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class CheckResult:
    """What one in-process request to the app gave: its status and body, or its error."""

    status: int
    body: bytes
    #: ``"RuntimeError: ..."`` when the app raised (status is then 500)
    error: str | None = None

    def excerpt(self, limit: int = 512) -> str:
        """The start of the body (or the error) as text."""
        return self.error or self.body[:limit].decode("utf-8", "replace")


def wsgi_check(app: WSGIApplication, path: str) -> Callable[[], CheckResult]:
    """A callable that sends ``GET path`` to ``app`` in-process and says what it answered."""

    def check() -> CheckResult:
        environ: dict[str, Any] = {}
        setup_testing_defaults(environ)
        environ.update(PATH_INFO=path.split("?", 1)[0], QUERY_STRING=path.partition("?")[2])
        environ["HTTP_USER_AGENT"] = "sockact-admin-check"
        got: list[int] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            got.append(int(status.split(" ", 1)[0]))
            return lambda data: None

        try:
            chunks = app(environ, start_response)
            try:
                body = b"".join(chunks)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        except Exception as exc:  # reported by the caller; the instance goes on
            return CheckResult(500, b"", f"{type(exc).__name__}: {exc}")
        if not got:
            return CheckResult(500, body, "the app returned without calling start_response")
        return CheckResult(got[-1], body)

    return check


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``: IPv4, IPv6 (``::`` is dual-stack), or a name."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise AddressError(f"admin server cannot bind {host}:{port}: {exc.strerror}") from exc
    try:
        sock = socket.create_server(addr, family=family, backlog=128, dualstack_ipv6=(host == "::"))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressError(
                f"admin port {host}:{port} is already in use (another instance with the "
                "same admin_port?)"
            ) from exc
        raise AddressError(f"admin server cannot bind {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


class AdminServer:
    """Binds at construction (so a taken port fails early), serves in a thread of its own.

    ``/live`` answers from the first moment; see the module docstring for the bounds.
    """

    def __init__(self, host: str, port: int, metrics: Metrics) -> None:
        self._listener = _bind(host, port)
        self._state = _State(metrics)
        # what this process runs, from its own installed distributions, read once at start
        self._state.release = release.identify()
        bound_port = self._listener.getsockname()[1]
        self.address = f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
        self._waiting: collections.OrderedDict[int, _Waiting] = collections.OrderedDict()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._paused_until = 0.0
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="admin-worker")
        self._thread = threading.Thread(target=self._loop, name="admin", daemon=True)

    def start(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()

    @property
    def release_digest(self) -> str:
        """The digest ``/release`` reports (empty when it could not be computed)."""
        digest = self._state.release.get("digest")
        return digest if isinstance(digest, str) else ""

    def set_check(self, check: Callable[[], CheckResult]) -> None:
        """Enable ``/check`` once the app is warm."""
        self._state.check = check

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(2)
        self._workers.shutdown(wait=False, cancel_futures=True)
        for waiting in self._waiting.values():
            waiting.conn.close()
        self._waiting.clear()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    # -- the loop thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            if self._paused_until and now >= self._paused_until:
                self._paused_until = 0.0
                self._selector.register(self._listener, selectors.EVENT_READ)
            for key, _events in self._selector.select(timeout=0.5):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    self._read(key.fd)
            self._expire(time.monotonic() - TIMEOUT)

    def _accept(self) -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                conn, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # No spin on a listener that stays readable: rest, then try again.
                    log.warning("admin server: accept() failed (%s); pausing", exc.strerror)
                    self._selector.unregister(self._listener)
                    self._paused_until = time.monotonic() + ACCEPT_PAUSE
                    return
                raise
            with self._busy_lock:
                busy = self._busy
            if len(self._waiting) + busy >= MAX_CONNECTIONS:
                if not self._waiting:
                    conn.close()  # every slot is answering a request: try later
                    continue
                _fd, oldest = self._waiting.popitem(last=False)
                self._drop(oldest)
            conn.setblocking(False)
            self._waiting[conn.fileno()] = _Waiting(conn, addr, time.monotonic())
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, fd: int) -> None:
        waiting = self._waiting.get(fd)
        if waiting is None:
            return
        try:
            data = waiting.conn.recv(MAX_HEAD)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(self._waiting.pop(fd))
            return
        waiting.head += data
        if b"\r\n\r\n" not in waiting.head:
            if len(waiting.head) > MAX_HEAD:
                self._drop(self._waiting.pop(fd))
            return
        del self._waiting[fd]
        self._selector.unregister(waiting.conn)
        with self._busy_lock:
            self._busy += 1
        self._workers.submit(self._answer, waiting)

    def _expire(self, cutoff: float) -> None:
        while self._waiting:
            fd, oldest = next(iter(self._waiting.items()))
            if oldest.since > cutoff:
                return
            del self._waiting[fd]
            self._drop(oldest)

    def _drop(self, waiting: _Waiting) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(waiting.conn)
        waiting.conn.close()

    # -- worker threads ----------------------------------------------------------------

    def _answer(self, waiting: _Waiting) -> None:
        conn = waiting.conn
        try:
            conn.setblocking(True)
            _Handler(conn, waiting.addr, self._state, bytes(waiting.head))
        except Exception:  # one bad request must not take the worker down
            log.exception("admin server: answering %s failed", waiting.addr)
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            with self._busy_lock:
                self._busy -= 1
