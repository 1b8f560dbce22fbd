"""Small WSGI app factories for integration tests: good ones, and releases that are broken
in the ways a health gate must catch.

sockact imports them as ``tests.integration.apps:<factory>`` (the test processes get
PYTHONPATH set to the checkout). Plain WSGI, no framework, so a test sees sockact's own
behaviour and nothing else.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication
from wsgiref.types import WSGIEnvironment as Environ

#: files the ``holds_files`` app keeps open, like a pool of database connections
_held: list[Any] = []


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def create_app() -> WSGIApplication:
    """``GET /`` (instance and pid), ``GET /slow?ms=N``, ``POST /echo`` (the body back),
    ``GET /raise`` (raises before answering: waitress answers 500), ``GET /cut`` (raises
    after its response began: the client gets a 200 cut off), ``GET /short`` (5 of the 100
    bytes its Content-Length announces: waitress closes the connection), ``GET /file``
    (its body through ``wsgi.file_wrapper``, which waitress sends after the task); 404
    otherwise."""
    instance = int(os.environ.get("SOCKACT_INSTANCE", "0") or 0)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        who = {"instance": instance, "pid": os.getpid()}
        if path == "/" and method == "GET":
            return _json(start_response, "200 OK", who)
        if path == "/slow" and method == "GET":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            ms = int(query.get("ms", ["1000"])[0])
            time.sleep(ms / 1000)
            return _json(start_response, "200 OK", {**who, "slept_ms": ms})
        if path == "/echo" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            return _json(start_response, "200 OK", {**who, "echo": body.decode("latin-1")})
        if path == "/raise":
            raise RuntimeError("this route raises")
        if path == "/cut":
            return _cut(start_response)
        if path == "/short":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
            return [b"short"]
        if path == "/file":
            body = json.dumps(who).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            wrapper: Any = environ["wsgi.file_wrapper"]
            return wrapper(io.BytesIO(body))  # type: ignore[no-any-return]
        return _json(start_response, "404 Not Found", {"error": "not found"})

    return app


def _cut(start_response: StartResponse) -> Iterable[bytes]:
    """A 200 of 100 bytes that raises after the first 7 were sent."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
    yield b"partial"
    raise RuntimeError("this route fails after its response began")


def not_callable() -> object:
    """A broken release: the factory returns something that is not a WSGI app."""
    return {"app": "this is a dict, not a WSGI callable"}


def answers_500() -> WSGIApplication:
    """A broken release: builds fine, then answers 500 to every request."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return _json(start_response, "500 Internal Server Error", {"error": "broken release"})

    return app


def raises() -> WSGIApplication:
    """A broken release: builds fine, then raises on every request."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise RuntimeError("broken release: every request raises")

    return app


def answers_404() -> WSGIApplication:
    """Answers 404 everywhere: fine for the default check_status, not for 200-399."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return _json(start_response, "404 Not Found", {"error": "no such page"})

    return app


def holds_files() -> WSGIApplication:
    """:func:`create_app`, holding ``HOLD_FILES`` open files for its whole life."""
    for _ in range(int(os.environ.get("HOLD_FILES", "20"))):
        _held.append(open(os.devnull, "rb"))  # noqa: SIM115 - held on purpose
    return create_app()


def warmup(app: object) -> None:
    """A warm-up that succeeds whatever the app is: sleeps ``WARMUP`` seconds (default 0)."""
    time.sleep(float(os.environ.get("WARMUP", "0")))
