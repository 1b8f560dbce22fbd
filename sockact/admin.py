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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sockact.errors import AddressError
from sockact.metrics import Metrics

log = logging.getLogger("sockact.admin")


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
        elif path == "/metrics":
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", metrics.render().encode())
        else:
            self._json(404, {"error": "not found", "paths": ["/live", "/ready", "/metrics"]})

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

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
