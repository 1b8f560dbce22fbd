"""The systemd edge with a real AF_UNIX datagram NOTIFY_SOCKET bound by the test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockact.errors import AddressError
from sockact.runtime import systemd


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_sends_one_datagram_per_call_in_order(notify_socket: socket.socket) -> None:
    assert systemd.notify("STATUS=warming up")
    assert systemd.notify("READY=1", "STATUS=serving")
    assert systemd.notify("STOPPING=1")
    got = [notify_socket.recv(4096).decode() for _ in range(3)]
    assert got == ["STATUS=warming up", "READY=1\nSTATUS=serving", "STOPPING=1"]


def test_notify_is_silent_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # somebody else's watchdog
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert systemd.watchdog_interval() is None


def test_inherited_sockets_require_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    dup = os.dup(listener.fileno())
    # sd_listen_fds expects the fds at 3..; move the dup there for a faithful test
    target = 3
    saved = os.dup(target)
    try:
        os.dup2(dup, target)
        monkeypatch.setenv("LISTEN_FDS", "1")
        monkeypatch.setenv("LISTEN_FDNAMES", "http")
        monkeypatch.setenv("LISTEN_PID", "1")
        assert systemd.inherited_sockets() == {}
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        found = systemd.inherited_sockets()
        assert list(found) == ["http"]
        assert found["http"].getsockname() == listener.getsockname()
        assert "LISTEN_PID" not in os.environ
        found["http"].detach()
    finally:
        os.dup2(saved, target)
        os.close(saved)
        os.close(dup)
        listener.close()


def test_unit_name_from_cgroup(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.write_text("0::/system.slice/system-api.slice/api@101.service\n")
    assert systemd.unit_name(str(v2)) == "api@101.service"
    v1 = tmp_path / "v1"
    v1.write_text("12:pids:/\n1:name=systemd:/system.slice/api@2.service\n0::/\n")
    assert systemd.unit_name(str(v1)) == "api@2.service"
    none = tmp_path / "none"
    none.write_text("0::/user.slice/session-1.scope\n")
    assert systemd.unit_name(str(none)) is None
    assert systemd.unit_name(str(tmp_path / "missing")) is None


def test_notify_works_when_no_descriptor_is_free(notify_socket: socket.socket) -> None:
    """WATCHDOG=1 must go out while an instance waits for descriptors (sd_notify would
    open a socket per call, and fail with EMFILE)."""
    import resource

    assert systemd.notify("STATUS=before")  # the first call opens the socket it keeps
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    try:
        with pytest.raises(OSError, match="Too many open files"):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        assert systemd.notify("WATCHDOG=1")
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [notify_socket.recv(4096) for _ in range(2)] == [b"STATUS=before", b"WATCHDOG=1"]


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sockact-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_inherited_fd_that_is_not_a_socket_is_an_address_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a socket\n")
    fd = os.open(plain, os.O_RDONLY)
    target = 3
    saved = os.dup(target)
    try:
        os.dup2(fd, target)
        monkeypatch.setenv("LISTEN_FDS", "1")
        monkeypatch.setenv("LISTEN_FDNAMES", "http")
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        with pytest.raises(AddressError) as err:
            systemd.inherited_sockets()
        assert err.value.exit_code == 4
        assert err.value.message.startswith("LISTEN_FDS: fd 3 (http) is a regular file")
        assert "LISTEN_PID" not in os.environ
    finally:
        os.dup2(saved, target)
        os.close(saved)
        os.close(fd)


def test_malformed_listen_fds_is_an_address_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "many")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    with pytest.raises(AddressError, match="LISTEN_FDS='many'"):
        systemd.inherited_sockets()
    assert "LISTEN_FDS" not in os.environ


def test_what_an_fd_is(tmp_path: Path) -> None:
    read, write = os.pipe()
    fd = os.open(tmp_path, os.O_RDONLY)
    sock = socket.socket()
    try:
        assert systemd._not_a_socket(read) == "is a pipe"
        assert systemd._not_a_socket(fd) == "is a directory"
        assert systemd._not_a_socket(sock.fileno()) is None
        os.close(write)
        assert systemd._not_a_socket(write) == "is not open"
    finally:
        os.close(read)
        os.close(fd)
        sock.close()


# LISTEN_FDS must be set by the process that becomes sockact (LISTEN_PID is its own pid)
EXEC_WITH_FD3 = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
if fd != 3:
    os.dup2(fd, 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="http")
os.execv(sys.executable, [sys.executable, "-m", "sockact.cli", *sys.argv[2:]])
"""


def test_serve_with_a_regular_file_as_listener_exits_4(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a socket\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOCKACT_", "NOTIFY_"))}
    with socket.socket() as probe:  # a free port for the admin server
        probe.bind(("127.0.0.1", 0))
        admin_port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-c", EXEC_WITH_FD3, str(plain), "serve", "--instance", "1",
         "--app", "sockact_demo:create_app", "--listen", "inherit",
         "--admin-port", str(admin_port)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 4, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "sockact: error: LISTEN_FDS: fd 3 (http) is a regular file" in result.stderr
