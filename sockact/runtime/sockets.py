"""The main listener: inherited from systemd by name, or bound here with SO_REUSEPORT."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from sockact.errors import AddressError
from sockact.runtime.systemd import inherited_sockets

MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@dataclass(frozen=True, kw_only=True)
class Listener:
    """The main listener and where it came from."""

    sock: socket.socket
    #: True: systemd passed it (it already listens, and stays open in systemd when we
    #: close ours); False: bound here with SO_REUSEPORT
    inherited: bool
    #: human-readable origin, for logs and STATUS=
    origin: str


def find_inherited(name: str) -> socket.socket | None:
    """The socket systemd passed under ``name``, or the only one it passed; else None."""
    found = inherited_sockets()
    if not found:
        return None
    if name in found:
        chosen = found.pop(name)
    elif len(found) == 1:
        chosen = found.popitem()[1]
    else:
        names = ", ".join(sorted(found))
        for sock in found.values():
            sock.close()
        raise AddressError(
            f"systemd passed {len(found)} sockets ({names}) and none is named {name!r}; "
            "set socket_name or FileDescriptorName="
        )
    for sock in found.values():
        sock.close()
    if chosen.type != socket.SOCK_STREAM:
        raise AddressError(f"inherited socket {name!r} is not a stream socket")
    if chosen.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        raise AddressError(f"inherited socket {name!r} is neither TCP nor a unix socket")
    if not chosen.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise AddressError(
            f"inherited socket {name!r} ({describe(chosen)}) is bound but not listening: "
            "systemd's socket units listen; check what passed it (LISTEN_FDS)"
        )
    return chosen


def describe(sock: socket.socket) -> str:
    """``127.0.0.1:8080``, ``[::1]:8080`` or ``unix:/run/api.sock``, for logs."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):  # abstract namespace
            name = "@" + name[1:].decode(errors="replace")
        return f"unix:{name or '(unnamed)'}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def migrate_req() -> int | None:
    """net.ipv4.tcp_migrate_req of this network namespace; None when the kernel lacks it."""
    try:
        return int(MIGRATE_REQ.read_text().strip())
    except (OSError, ValueError):
        return None


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def check_shareable(host: str, port: int) -> None:
    """Fail now if ``host:port`` cannot be shared with SO_REUSEPORT; a dry run that binds
    a socket, never listens on it (so it receives no connections), and closes it.

    Used before the warm-up, so a taken port fails in a second and not after a long
    warm-up. Raises :class:`AddressError` as :func:`bind_reuseport` does.
    """
    _bind_shared(host, port).close()


def bind_reuseport(host: str, port: int, backlog: int) -> socket.socket:
    """The main listener: ``host:port`` bound with SO_REUSEPORT, listening, non-blocking."""
    sock = _bind_shared(host, port)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _address_error(host, port, exc) from exc
    return sock


def _bind_shared(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT (not listening yet)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR too: without it, TIME_WAIT connections left on the port by a server
        # that did not set SO_REUSEPORT (waitress, gunicorn, a socket unit) fail this bind
        # for up to 60 s. A live listener without SO_REUSEPORT is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            # "::" takes IPv4 clients too (dual-stack) whatever net.ipv6.bindv6only says;
            # a specific IPv6 address is IPv6 only anyway.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _address_error(host, port, exc) from exc
    sock.setblocking(False)
    return sock


def _address_error(host: str, port: int, exc: OSError) -> AddressError:
    if exc.errno == errno.EADDRINUSE:
        return AddressError(
            f"port {host}:{port} is held by a socket without SO_REUSEPORT or by another "
            "user: instances must share one UID and all set SO_REUSEPORT"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return AddressError(f"cannot bind {host}:{port}: no such local address")
    if exc.errno == errno.EACCES:
        return AddressError(f"cannot bind {host}:{port}: permission denied")
    return AddressError(f"cannot bind {host}:{port}: {exc.strerror}")
