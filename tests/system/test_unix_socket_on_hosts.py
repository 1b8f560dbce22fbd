"""Socket mode with a unix-socket listener on a real systemd host (issue 11.12).

On the socket-mode host (see conftest.py) a second deploy, unit name ``uapi``, listens on
``/run/uapi/api.sock`` instead of a TCP port: ``sockact units render --listen socket
--unix-socket /run/uapi/api.sock --socket-group api``, with the same releases and config
directory as ``api`` (its instances are 11..14, admin ports 9011..9014). A front end such
as nginx would connect to that path; here a small HTTP/1.1 client inside the host does,
through a swap of instances under load.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sockact_lab.lab import Host
from tests.system import hostsetup as hs
from tests.system.conftest import DRAIN_TIMEOUT, WARMUP, Deployed

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.slow]

NAME = "uapi"
SOCKET_PATH = f"/run/{NAME}/api.sock"
#: instance -> release
INSTANCES = {11: "1.0", 12: "1.0", 13: "2.0", 14: "2.0"}
SETTLE = 1.0

# An HTTP/1.1 client over the unix socket, run inside the host: keep-alive clients reuse
# their connection (a new one only after "Connection: close", or when the server closed the
# idle connection cleanly BEFORE the next request: that is seen with a zero-timeout peek
# and counted apart, like sockact probe does); new-connection clients open one per request.
# Nothing is retried. It runs until a line arrives on stdin, then prints a JSON summary.
UNIX_LOAD = r"""
import json, select, socket, sys, threading, time
path, n_keepalive, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop, lock = threading.Event(), threading.Lock()
counts = {"ok": 0, "failed": 0, "connections": 0, "server_closes": 0}
failures, versions = {}, {}
KA = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n"
NEW = b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"

def add(table, key):
    with lock:
        table[key] = table.get(key, 0) + 1

def closed_while_idle(s):
    if not select.select([s], [], [], 0)[0]:
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return False

def response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("truncated" if buf else "empty_reply")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("truncated")
        body += chunk
    return int(lines[0].split()[1]), body, headers.get("connection", "").lower() == "close"

def client(keepalive):
    s = None
    while not stop.is_set():
        try:
            if s is not None and closed_while_idle(s):
                add(counts, "server_closes")
                s.close()
                s = None
            if s is None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(15)
                s.connect(path)
                add(counts, "connections")
            s.sendall(KA if keepalive else NEW)
            status, body, close = response(s)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            add(counts, "ok")
            add(versions, json.loads(body).get("version"))
            if close or not keepalive:
                s.close()
                s = None
        except Exception as exc:
            add(counts, "failed")
            add(failures, f"{type(exc).__name__}: {exc}"[:120])
            if s is not None:
                s.close()
                s = None
            time.sleep(0.05)
    if s is not None:
        s.close()

threads = [threading.Thread(target=client, args=(i < n_keepalive,))
           for i in range(n_keepalive + n_new)]
for t in threads:
    t.start()
print("started", flush=True)
sys.stdin.readline()
stop.set()
for t in threads:
    t.join(30)
print(json.dumps({**counts, "failures": failures, "versions": versions}), flush=True)
"""


@dataclass
class UnixLoad:
    proc: subprocess.Popen[str]

    def stop(self) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=60)
        assert line, "the load client printed no summary"
        result: dict[str, object] = json.loads(line)
        return result


def start_load(host: Host, keepalive: int = 6, new: int = 6) -> UnixLoad:
    proc = subprocess.Popen(
        host.nsenter_args("/usr/bin/python3", "-c", UNIX_LOAD, SOCKET_PATH, str(keepalive),
                          str(new)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    first = proc.stdout.readline() if ready else ""
    if first != "started\n":
        proc.kill()  # our own child, by its PID
        proc.wait(timeout=10)
        raise AssertionError(f"load client did not start: {first!r}")
    return UnixLoad(proc)


def uapi_units(host: Host) -> dict[str, str]:
    out = host.run(
        "systemctl", "list-units", "--all", "--plain", "--no-legend", f"{NAME}@*", check=False
    ).stdout
    return {p[0]: p[2] for p in (line.split() for line in out.splitlines()) if len(p) >= 3}


def active_uapi(host: Host) -> list[str]:
    return sorted(u for u, s in uapi_units(host).items() if s in ("active", "activating"))


@pytest.fixture(scope="module")
def unix_mode(socket_mode: Deployed) -> Iterator[Deployed]:
    """``uapi`` on the socket-mode host: units, instances 11..14, socket file."""
    host = socket_mode.host
    for i, version in INSTANCES.items():
        hs.write_instance(
            host, i, version, warmup=WARMUP, drain_timeout=DRAIN_TIMEOUT,
            extra_toml={"listen": "inherit"},
        )  # fmt: skip
    names = hs.install_units(
        host,
        socket_mode.releases["2.0"],
        "socket",
        drain_timeout=DRAIN_TIMEOUT,
        extra_args=[
            *("--name", NAME, "--config-dir", hs.LAYOUT.config_dir),
            *("--release-root", hs.LAYOUT.release_root),
            *("--unix-socket", SOCKET_PATH, "--socket-group", hs.USER),
        ],
    )
    assert names == [f"{NAME}.service", f"{NAME}.socket", f"{NAME}@.service"], names
    hs.daemon_reload(host)
    yield Deployed(host, "socket (unix)", socket_mode.releases)
    for unit in [*active_uapi(host), f"{NAME}.service", f"{NAME}.socket"]:
        host.run("systemctl", "stop", unit, check=False, timeout=120)


def report(host: Host) -> str:
    return hs.host_report(host, [f"{NAME}@*", f"{NAME}.socket", f"{NAME}.service"])


def test_unix_socket_file_owner_mode_and_lifetime(unix_mode: Deployed) -> None:
    host = unix_mode.host
    host.run("systemctl", "start", f"{NAME}.socket", f"{NAME}.service")
    shown = host.run("stat", "-c", "%F %a %U %G", SOCKET_PATH, check=False)
    assert shown.stdout.strip() == "socket 660 root api", f"{shown}\n{report(host)}"
    props = hs.unit_props(host, f"{NAME}.socket", "Listen", "ActiveState")
    assert props == {"Listen": f"{SOCKET_PATH} (Stream)", "ActiveState": "active"}, props
    # the instance template, the socket and the holder pass systemd's own checks
    proc = host.run(
        "systemd-analyze", "verify", "--man=no", f"{NAME}@11.service", f"{NAME}.socket",
        f"{NAME}.service", check=False,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (0, "", ""), proc
    out = host.run("systemd-analyze", "security", "--no-pager", f"{NAME}@11.service").stdout
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert m and float(m.group(1)) <= 1.1 + 1e-9, out
    print(f"FIGURES unix socket mode: systemd-analyze security {NAME}@11 = {m.group(1)}")
    # RemoveOnStop=yes: no stale socket file once the socket unit is stopped
    host.run("systemctl", "stop", f"{NAME}.service", f"{NAME}.socket")
    assert host.run("test", "-e", SOCKET_PATH, check=False).returncode == 1, report(host)


def test_unix_socket_swap_under_load_loses_nothing(unix_mode: Deployed) -> None:
    host = unix_mode.host
    for i in (11, 12):
        host.run("systemctl", "start", f"{NAME}@{i}", timeout=120)
    assert active_uapi(host) == [f"{NAME}@11.service", f"{NAME}@12.service"], report(host)
    since = hs.host_now(host)
    load = start_load(host)
    steps: dict[str, float] = {}
    try:
        time.sleep(SETTLE)
        for verb, i in (("start", 13), ("stop", 11), ("start", 14), ("stop", 12)):
            began = time.monotonic()
            host.run("systemctl", verb, f"{NAME}@{i}", timeout=120)
            steps[f"{verb} {i}"] = round(time.monotonic() - began, 2)
            time.sleep(SETTLE)
    finally:
        result = load.stop()
    line = f"FIGURES unix socket swap 11,12 -> 13,14: {result} steps={steps}"
    print(line, flush=True)
    assert result["failed"] == 0, f"{line}\n{report(host)}"
    # each old instance drained and exited 0: a drain that exits 1 or 130 fails here
    assert hs.stop_problems(host, [11, 12], since, name=NAME) == [], report(host)
    assert isinstance(result["ok"], int) and result["ok"] > 500, line
    versions = result["versions"]
    assert isinstance(versions, dict) and {"1.0", "2.0"} <= versions.keys(), line
    assert active_uapi(host) == [f"{NAME}@13.service", f"{NAME}@14.service"], report(host)
    # nobody asked for another instance, and systemd started none by itself
    unasked = sorted(u for u in uapi_units(host) if int(u.split("@")[1].split(".")[0]) < 11)
    assert not unasked, report(host)
    log = host.run("journalctl", "--no-pager", "-u", f"{NAME}.socket", "-n", "50").stdout
    assert "Triggering" not in log and "refusing" not in log, log
