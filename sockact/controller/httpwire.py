"""HTTP/1.1 on raw sockets for the probe: one GET, one response, every failure by kind.

Stdlib only, so that nothing between the probe and the server can retry, reconnect or
swallow an error behind its back. :class:`Conn` is one TCP connection and its receive
buffer; :func:`read_response` reads exactly one response from it (Content-Length,
chunked, or close-delimited) and raises :class:`WireFailure` with a failure kind when the
response is broken; :func:`classify` maps any exception of a request to its kind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import select
import socket
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from sockact.errors import BadInput

_MAX_LINE: Final = 8192
_MAX_HEADER_BYTES: Final = 65536
_MAX_BODY: Final = 16 * 1024 * 1024
_MAX_JSON_BODY: Final = 65536
_RECV_SIZE: Final = 65536

#: (instance, version) of the JSON body that answered; a missing key is None
SampleKey = tuple[str | None, str | None]


@dataclass(frozen=True)
class Target:
    """One HTTP endpoint: where to connect and what to GET."""

    host: str
    port: int
    path: str = "/"

    @classmethod
    def from_url(cls, url: str) -> Target:
        """Parse ``http://HOST:PORT/PATH?QUERY`` (port defaults to 80; https is refused)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise BadInput(f"bad probe URL {url!r}: {exc}") from None
        if parts.scheme != "http":
            raise BadInput(f"bad probe URL {url!r}: only http:// is supported")
        if not parts.hostname:
            raise BadInput(f"bad probe URL {url!r}: no host")
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return cls(parts.hostname, 80 if port is None else port, path)

    @property
    def url(self) -> str:
        return f"http://{self._hostport}{self.path}"

    @property
    def _hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def request(self, keepalive: bool) -> bytes:
        """The exact bytes of one GET request."""
        conn = "" if keepalive else "Connection: close\r\n"
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self._hostport}\r\n"
            f"User-Agent: sockact-probe\r\nAccept: */*\r\n{conn}\r\n"
        ).encode("latin-1")


def connect(target: Target, deadline: float) -> Conn:
    """A new TCP connection to ``target`` (TCP_NODELAY), or the OSError of the attempt."""
    family, type_, proto, _, addr = socket.getaddrinfo(
        target.host, target.port, type=socket.SOCK_STREAM
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return Conn(sock)


class WireFailure(Exception):
    """A request failed in a way the parser or the client decided (not an OSError)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def classify(exc: BaseException, stage: str) -> tuple[str, str]:
    """Map an exception of one request to (failure kind, detail)."""
    if isinstance(exc, WireFailure):
        return exc.kind, f"{stage}: {exc.detail}"
    text = f"{stage}: {type(exc).__name__}: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", text
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset", text
    if isinstance(exc, TimeoutError):  # socket.timeout and ETIMEDOUT
        return "timeout", text
    if isinstance(exc, OSError):
        if exc.errno == errno.ECONNREFUSED:
            return "refused", text
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return "reset", text
    return "other", text


class Conn:
    """One TCP connection and its receive buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.got_any = False
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def closed_while_idle(self) -> bool:
        """True when the server closed this idle connection cleanly (FIN already here).

        Raises on a reset, and WireFailure on bytes nobody asked for.
        """
        if self.buf:
            raise WireFailure("bad_response", "unsolicited bytes after a response")
        if not self._poll.poll(0):
            return False
        data = self.sock.recv(1, socket.MSG_PEEK)
        if data:
            raise WireFailure("bad_response", "unsolicited bytes on an idle connection")
        return True

    def _eof(self, what: str) -> WireFailure:
        if self.got_any:
            return WireFailure("truncated", f"connection closed in the {what}")
        return WireFailure("empty_reply", "connection closed before any response byte")

    def _recv(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WireFailure("timeout", "no complete response in time")
        self.sock.settimeout(remaining)
        data = self.sock.recv(_RECV_SIZE)
        if not data:
            return False
        self.buf += data
        self.got_any = True
        return True

    def line(self, deadline: float, what: str) -> bytes:
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return out
            if len(self.buf) > _MAX_LINE:
                raise WireFailure("bad_response", f"{what} line too long")
            start = max(0, len(self.buf) - 1)
            if not self._recv(deadline):
                raise self._eof(what)

    def exact(self, n: int, deadline: float, what: str) -> bytes:
        while len(self.buf) < n:
            if not self._recv(deadline):
                raise self._eof(what)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def until_close(self, deadline: float) -> bytes:
        while self._recv(deadline):
            if len(self.buf) > _MAX_BODY:
                raise WireFailure("bad_response", "close-delimited body too large")
        out = bytes(self.buf)
        self.buf.clear()
        return out


def read_response(conn: Conn, deadline: float) -> tuple[int, bytes, bool]:
    """Read one response: (status, body, connection must close)."""
    conn.got_any = bool(conn.buf)
    while True:
        status_line = conn.line(deadline, "status")
        parts = status_line.split(b" ", 2)
        version = parts[0]
        if (
            len(parts) < 2
            or version not in (b"HTTP/1.1", b"HTTP/1.0")
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            raise WireFailure("bad_response", f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[bytes, list[bytes]] = {}
        size = 0
        while True:
            line = conn.line(deadline, "headers")
            if not line:
                break
            size += len(line)
            if size > _MAX_HEADER_BYTES:
                raise WireFailure("bad_response", "headers too large")
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise WireFailure("bad_response", f"bad header line {line[:80]!r}")
            headers.setdefault(name.lower(), []).append(value.strip())
        if 100 <= status < 200 and status != 101:
            continue  # interim response: the real one follows
        break
    tokens = {t.strip().lower() for v in headers.get(b"connection", []) for t in v.split(b",")}
    must_close = b"close" in tokens or (version == b"HTTP/1.0" and b"keep-alive" not in tokens)
    if status == 101:
        return status, b"", True
    if status in (204, 304):
        return status, b"", must_close
    codings = [
        t.strip().lower() for v in headers.get(b"transfer-encoding", []) for t in v.split(b",")
    ]
    if codings:
        if codings[-1] != b"chunked":
            return status, conn.until_close(deadline), True
        return status, _read_chunked(conn, deadline), must_close
    lengths = {v for v in headers.get(b"content-length", [])}
    if lengths:
        if len(lengths) != 1:
            raise WireFailure("bad_response", "conflicting Content-Length headers")
        raw = lengths.pop()
        if not raw.isdigit():
            raise WireFailure("bad_response", f"bad Content-Length {raw[:40]!r}")
        n = int(raw)
        if n > _MAX_BODY:
            raise WireFailure("bad_response", "body too large")
        return status, conn.exact(n, deadline, "body"), must_close
    return status, conn.until_close(deadline), True


def _read_chunked(conn: Conn, deadline: float) -> bytes:
    body = bytearray()
    while True:
        line = conn.line(deadline, "chunk size")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise WireFailure("bad_response", f"bad chunk size {line[:40]!r}") from None
        if size < 0 or len(body) + size > _MAX_BODY:
            raise WireFailure("bad_response", "bad or too large chunk")
        if size == 0:
            while conn.line(deadline, "trailers"):
                pass
            return bytes(body)
        body += conn.exact(size, deadline, "chunk")
        if conn.exact(2, deadline, "chunk") != b"\r\n":
            raise WireFailure("bad_response", "chunk not followed by CRLF")


def sample_of(body: bytes) -> SampleKey | None:
    """(instance, version) of a JSON object body that has either key, else None.

    A body that is not such an object is simply not sampled: never an error (a deeply
    nested body makes json raise RecursionError, not ValueError).
    """
    if not body.startswith(b"{") or len(body) > _MAX_JSON_BODY:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or ("instance" not in doc and "version" not in doc):
        return None
    inst, ver = doc.get("instance"), doc.get("version")
    return (None if inst is None else str(inst), None if ver is None else str(ver))
