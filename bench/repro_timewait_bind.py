"""Reproduce: sockact's SO_REUSEPORT bind fails after a non-reuseport server's TIME_WAIT.

    sudo .venv/bin/python bench/repro_timewait_bind.py

In a fresh network namespace: a listener without SO_REUSEPORT (like gunicorn without
--reuse-port, waitress, or a systemd socket unit) serves one connection and closes it
first (server-side TIME_WAIT), then stops listening. ``sockets.bind_reuseport`` on the
same port then fails although nothing listens; with SO_REUSEADDR set as well it works,
and a live listener without SO_REUSEPORT is still refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PORT = 8200


def inner() -> int:
    from sockact.errors import AddressError
    from sockact.runtime import sockets

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(8)
    client = socket.create_connection(("127.0.0.1", PORT))
    conn, _ = srv.accept()
    conn.close()  # the server closes first: its side goes to TIME_WAIT
    time.sleep(0.1)
    client.close()
    srv.close()
    ss = subprocess.run(["ss", "-Htan", f"sport = :{PORT}"], capture_output=True, text=True)
    print("sockets on the port after the server stopped:", ss.stdout.strip() or "none")
    failed = False
    try:
        sockets.bind_reuseport("127.0.0.1", PORT, backlog=16).close()
        print("sockets.bind_reuseport: OK")
    except AddressError as exc:
        failed = True
        print(f"sockets.bind_reuseport: AddressError: {exc}")

    both = socket.socket()
    both.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    both.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    both.bind(("127.0.0.1", PORT))
    both.listen(16)
    both.close()
    print("SO_REUSEADDR + SO_REUSEPORT bind: OK")

    live = socket.socket()
    live.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    live.bind(("127.0.0.1", PORT + 1))
    live.listen(8)
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        other.bind(("127.0.0.1", PORT + 1))
        print("next to a live listener without SO_REUSEPORT: bound (unexpected)")
    except OSError as exc:
        print(f"next to a live listener without SO_REUSEPORT: still refused ({exc.strerror})")
    return 1 if failed else 0


def main() -> int:
    if sys.argv[1:] == ["--inner"]:
        return inner()
    name = f"sockact-bench-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        cmd = ["ip", "netns", "exec", name, sys.executable, __file__, "--inner"]
        return subprocess.run(cmd, check=False).returncode
    finally:
        res = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in res.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    sys.exit(main())
