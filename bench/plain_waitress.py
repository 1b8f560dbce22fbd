"""The demo app on plain waitress, no sockact: the "limit" row of the benchmark.

    python bench/plain_waitress.py HOST PORT THREADS

Builds and warms the demo app, binds HOST:PORT with SO_REUSEPORT (two of these share the
port, as two sockact instances do), prints ``listening`` and serves with the same waitress
adjustments sockact uses (threads, connection_limit 1000, backlog 1024, poll()): what is
left between this and ``sockact serve`` is sockact's own per-request cost.
"""

from __future__ import annotations

import logging
import socket
import sys

from waitress import serve

from sockact_demo import create_app, warmup


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        sys.exit("usage: plain_waitress.py HOST PORT THREADS")
    host, port, threads = argv[0], int(argv[1]), int(argv[2])
    # as sockact does: waitress warns of every queued task under load
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    app = create_app()
    warmup(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    print("listening", flush=True)
    serve(
        app,
        sockets=[sock],
        threads=threads,
        connection_limit=1000,
        backlog=1024,
        asyncore_use_poll=True,
        ident="waitress",
        _quiet=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
