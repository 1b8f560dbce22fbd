"""gunicorn hooks that tell the benchmark when a worker is warm and when it has gone.

Each event is one line ``<event> <master pid> <worker pid> <monotonic time>`` appended to
the file named by BENCH_GUNICORN_EVENTS (no file: no events).
"""

from __future__ import annotations

import os
import time
from typing import Any


def _event(name: str, master: int, worker: int) -> None:
    path = os.environ.get("BENCH_GUNICORN_EVENTS")
    if not path:
        return
    with open(path, "a", encoding="ascii") as fh:
        fh.write(f"{name} {master} {worker} {time.monotonic():.6f}\n")


def post_worker_init(worker: Any) -> None:
    """In the worker, once the app is imported (and warm): it accepts from now on."""
    _event("warm", worker.ppid, worker.pid)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, once a worker process has exited."""
    _event("exit", server.pid, worker.pid)
