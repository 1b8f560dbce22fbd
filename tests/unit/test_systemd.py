"""The systemd edge with a real AF_UNIX datagram NOTIFY_SOCKET bound by the test."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

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
