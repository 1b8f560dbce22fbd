"""The admin server: ``/live``, ``/ready`` and ``/metrics`` on a loopback port of its own.

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
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from wsgiref.util import setup_testing_defaults

from sockact.errors import AddressError
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
        elif path == "/metrics":
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", metrics.render().encode())
        else:
            self._json(
                404, {"error": "not found", "paths": ["/live", "/ready", "/check", "/metrics"]}
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
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("admin: " + format, *args)


class _AdminHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Metrics
    check: Callable[[], CheckResult] | None = None


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


def wsgi_check(app: WSGIApp, path: str) -> Callable[[], CheckResult]:
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
        self.address = f"{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="admin",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def set_check(self, check: Callable[[], CheckResult]) -> None:
        """Enable ``/check`` once the app is warm."""
        self._httpd.check = check

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
