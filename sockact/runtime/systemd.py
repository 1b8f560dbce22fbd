"""The systemd edge: sd_notify, inherited sockets, watchdog and journald, via systemd-python.

Everything here is silent outside systemd: with no NOTIFY_SOCKET, :func:`notify` does
nothing, so ``sockact serve`` runs the same by hand, under systemd, or under
``systemd-socket-activate``::

    systemd-socket-activate -l 8080 --fdname=http sockact serve --app sockact_demo:create_app \
        --instance 1 --listen inherit
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
import threading

from systemd import daemon

from sockact.errors import AddressError

_notify_lock = threading.Lock()
_notify_sock: socket.socket | None = None


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) to systemd in one datagram.

    Returns False when there is no NOTIFY_SOCKET (not under systemd) or sending failed.
    Sent from one socket kept open for the process's life, where sd_notify() opens one
    per call: when every file descriptor is taken (an app holding files, a flood of
    clients), WATCHDOG=1 must still go out, or systemd kills an instance that only waits
    for descriptors to free up.
    """
    global _notify_sock
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    data = "\n".join(lines).encode()
    if target[0] not in "/@":  # e.g. vsock: leave it to libsystemd
        try:
            return bool(daemon.notify(data.decode()))
        except OSError:
            return False
    address = "\0" + target[1:] if target[0] == "@" else target
    with _notify_lock:
        try:
            if _notify_sock is None:
                _notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _notify_sock.sendto(data, address)
        except OSError:
            # A lost notification must not crash the server (e.g. in the middle of a drain).
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked.

    Like sd_watchdog_enabled(), WATCHDOG_PID must be ours when it is set.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


def inherited_sockets() -> dict[str, socket.socket]:
    """Listening sockets passed by systemd (LISTEN_FDS), by FileDescriptorName.

    Trusted only when LISTEN_PID is ours (as gunicorn and sd_listen_fds do). Unnamed fds
    are called ``unknown``. The LISTEN_* variables are removed so children do not inherit
    them. Raises :class:`AddressError` when LISTEN_FDS is not a count or names an fd that
    is not an open socket (a regular file, a pipe...): that is no listener to serve on.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    count = os.environ.get("LISTEN_FDS", "")
    try:
        pairs = daemon.listen_fds_with_names(unset_environment=False)
    except OSError as exc:
        raise AddressError(
            f"LISTEN_FDS={count!r} is not what systemd passes ({exc.strerror})"
        ) from None
    finally:
        # libsystemd's own unsetenv() would leave Python's os.environ stale; do it here.
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    found: dict[str, socket.socket] = {}
    for fd, name in pairs.items():
        problem = _not_a_socket(fd)
        if problem:
            for sock in found.values():
                sock.close()
            raise AddressError(
                f"LISTEN_FDS: fd {fd} ({name or 'unnamed'}) {problem}, not a socket; "
                "check the unit's Sockets= and the socket unit"
            )
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        found[name or "unknown"] = sock
    return found


_FD_KINDS = (
    (stat.S_ISREG, "is a regular file"),
    (stat.S_ISDIR, "is a directory"),
    (stat.S_ISFIFO, "is a pipe"),
    (stat.S_ISCHR, "is a character device"),
    (stat.S_ISBLK, "is a block device"),
)


def _not_a_socket(fd: int) -> str | None:
    """What ``fd`` is when it is not a socket ("is a regular file"), or None."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "is not open"
    if stat.S_ISSOCK(mode):
        return None
    return next((what for test, what in _FD_KINDS if test(mode)), "is something else")


def journal_is_stderr() -> bool:
    """True when stderr is connected to journald (JOURNAL_STREAM names its dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def unit_name(cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """The systemd service we run in (``api@1.service``), read from our cgroup path."""
    try:
        with open(cgroup_file) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last.endswith(".service"):
            return last
    return None


def journal_handler(**fields: str) -> logging.Handler:
    """A logging handler writing structured entries to journald, with extra ``fields``.

    Its SYSLOG_IDENTIFIER is the unit name without ``.service`` (what the units set with
    ``SyslogIdentifier=%N``), so ``journalctl -t api@1`` shows these entries and the
    stderr lines alike.
    """
    from systemd.journal import JournalHandler

    unit = unit_name()
    ident = unit.removesuffix(".service") if unit else "sockact"
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=ident, **fields)
    return handler
