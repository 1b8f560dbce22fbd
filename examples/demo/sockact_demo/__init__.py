"""The demo app: a Flask API with a warm-up, for trying sockact and for its tests.

Its own distribution (``sockact-demo``, examples/demo), not part of sockact. It reports
the version of its installed distribution, from its own metadata only (a release is what
is installed, nothing a deploy writes into the environment). Environment:
``DEMO_WARMUP`` (seconds the warm-up takes, default 1), ``DEMO_FAIL`` (``1``: the
warm-up raises; ``500``: the warm-up is fine but every request answers 500; broken
releases, for tests), and two faults that show only under load, for trying a canary:
``DEMO_ERROR_RATE`` (a fraction, e.g. ``0.05``: that share of the requests to ``/``
answer 500, evenly spaced and never the first ones, so the one request of a health gate
passes) and ``DEMO_DELAY_MS`` (milliseconds added to every request to ``/``)::

    sockact serve --app sockact_demo:create_app --warmup sockact_demo:warmup --instance 1
    curl localhost:8080/          # {"instance": 1, "pid": ..., "version": "1.0.0"}
    curl 'localhost:8080/slow?ms=2000'
"""

from __future__ import annotations

import itertools
import math
import os
import time
from importlib.metadata import PackageNotFoundError, version

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} = {raw!r} is not a number") from None


def fails(n: int, rate: float) -> bool:
    """Whether request ``n`` (1, 2, ...) fails at error rate ``rate``: one in every
    ``1 / rate``, evenly spaced, the first failure at request ``ceil(1 / rate)``."""
    return rate > 0 and math.floor(n * rate) > math.floor((n - 1) * rate)


def _installed_version() -> str:
    try:
        return version("sockact-demo")
    except PackageNotFoundError:
        return "dev"


def create_app() -> Flask:
    """Build the demo app (cheap); :func:`warmup` does the slow part."""
    app = Flask("sockact_demo")
    app.config["VERSION"] = _installed_version()
    app.config["INSTANCE"] = int(os.environ.get("SOCKACT_INSTANCE", "0") or 0)
    app.config["WARM"] = False
    error_rate = _env_float("DEMO_ERROR_RATE", 0.0)
    if not 0 <= error_rate <= 1:
        raise ValueError(f"DEMO_ERROR_RATE = {error_rate}: must be between 0 and 1")
    delay = _env_float("DEMO_DELAY_MS", 0.0) / 1000
    served = itertools.count(1)  # next() is atomic under the GIL: threads share it

    if os.environ.get("DEMO_FAIL") == "500":

        @app.before_request
        def broken() -> ResponseReturnValue:
            return jsonify(error="DEMO_FAIL=500: this release answers 500 on purpose"), 500

    @app.get("/")
    def index() -> ResponseReturnValue:
        if delay > 0:
            time.sleep(delay)
        if fails(next(served), error_rate):
            return jsonify(error="DEMO_ERROR_RATE: this request fails on purpose"), 500
        return jsonify(
            instance=app.config["INSTANCE"],
            pid=os.getpid(),
            version=app.config["VERSION"],
            warm=app.config["WARM"],
        )

    @app.get("/slow")
    def slow() -> ResponseReturnValue:
        try:
            ms = int(request.args.get("ms", "1000"))
        except ValueError:
            return jsonify(error="ms must be an integer"), 400
        if not 0 <= ms <= 600_000:
            return jsonify(error="ms must be between 0 and 600000"), 400
        time.sleep(ms / 1000)
        return jsonify(instance=app.config["INSTANCE"], pid=os.getpid(), slept_ms=ms)

    return app


def warmup(app: Flask) -> None:
    """Stands in for loading caches: sleeps DEMO_WARMUP seconds (default 1)."""
    seconds = _env_float("DEMO_WARMUP", 1.0)
    if os.environ.get("DEMO_FAIL") == "1":
        time.sleep(min(seconds, 1.0))
        raise RuntimeError("DEMO_FAIL=1: this release's warm-up fails on purpose")
    time.sleep(seconds)
    app.config["WARM"] = True
