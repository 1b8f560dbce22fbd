"""The admin server: ``/live``, ``/ready``, ``/check``, ``/release`` and ``/metrics`` on a
loopback port of its own.

It starts before anything else so that an operator (or Ansible) can watch the warm-up:
``/ready`` answers 503 with the phase until the instance serves, then 200.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from wsgiref.util import setup_testing_defaults

from sockact.errors import AddressError
from sockact.runtime import release
from sockact.runtime.metrics import Metrics

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]

log = logging.getLogger("sockact.runtime.admin")


class _Handler(BaseHTTPRequestHandler):
    server: _AdminHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        metrics = self.server.metrics
        path = self.path.split("?", 1)[0]
        if path == "/live":
            self._json(200, {"live": True, "phase": metrics.phase, **self._who()})
        elif path == "/ready":
            ready = metrics.phase == "ready"
            self._json(
                200 if ready else 503, {"ready": ready, "phase": metrics.phase, **self._who()}
            )
        elif path == "/check":
            self._check()
        elif path == "/release":
            self._json(200, {**self.server.release, **self._who()})
        elif path == "/metrics":
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", metrics.render().encode())
        else:
            self._json(
                404,
                {
                    "error": "not found",
                    "paths": ["/live", "/ready", "/check", "/release", "/metrics"],
                },
            )

    def _check(self) -> None:
        """One request to this instance's app, in-process: proves *this* instance answers.

        A request to the main port cannot say which instance will take it (the kernel or
        whoever accepts first picks), so a deploy verifies each new instance here.
        """
        check = self.server.check
        if check is None or self.server.metrics.phase != "ready":
            self._json(503, {"ok": False, "phase": self.server.metrics.phase, **self._who()})
            return
        status, body = check()
        ok = 200 <= status < 400
        excerpt = body[:512].decode("utf-8", "replace")
        self._json(200 if ok else 502, {"ok": ok, "status": status, "body": excerpt, **self._who()})

    def _who(self) -> dict[str, int]:
        return {"instance": self.server.metrics.instance, "pid": os.getpid()}

    def _json(self, status: int, body: dict[str, object]) -> None:
        self._send(status, "application/json", json.dumps(body).encode() + b"\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("admin: " + format, *args)


class _AdminHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Metrics
    check: Callable[[], tuple[int, bytes]] | None = None
    release: dict[str, Any]


def wsgi_check(app: WSGIApp, path: str) -> Callable[[], tuple[int, bytes]]:
    """A callable that sends ``GET path`` to ``app`` in-process; returns (status, body)."""

    def check() -> tuple[int, bytes]:
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
        except Exception as exc:  # the check reports it; the instance keeps serving
            return 500, f"{type(exc).__name__}: {exc}".encode()
        return (got[0] if got else 500), body

    return check


class AdminServer:
    """Binds at construction (so a taken port fails early), serves in a daemon thread."""

    def __init__(self, host: str, port: int, metrics: Metrics) -> None:
        try:
            self._httpd = _AdminHTTPServer((host, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressError(
                    f"admin port {host}:{port} is already in use (another instance with the "
                    "same admin_port?)"
                ) from exc
            raise AddressError(f"admin server cannot bind {host}:{port}: {exc.strerror}") from exc
        self._httpd.metrics = metrics
        # what this process runs, from its own installed distributions, read once at start
        self._httpd.release = release.identify()
        self.address = f"{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="admin",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def set_check(self, check: Callable[[], tuple[int, bytes]]) -> None:
        """Enable ``/check`` once the app is warm."""
        self._httpd.check = check

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
