"""A caching HTTP forward proxy for apt, so that lab hosts reach Debian's mirror and nothing else.

Lab hosts have no route out and no DNS. Their apt goes through this proxy
(``Acquire::http::Proxy "http://<gateway>:3142/"``), which listens on the lab's gateway
addresses only (reachable from the hosts, not from elsewhere) and:

* forwards only ``GET``/``HEAD`` of ``http://<allowed host>/...`` (the image recipe's
  mirror hosts, ``deb.debian.org``): anything else is refused (400, 403 for other hosts
  and ``CONNECT``, 405 for other methods), so a host cannot ``pip install`` from PyPI and
  hide a wheelhouse that misses a wheel;
* caches what never changes once published (``.deb`` and other pool files, ``by-hash``
  indexes, checked against their hash) under ``/var/cache/sockact-lab/apt``, shared by
  every lab on the machine, and relays the rest (``InRelease``) unchanged;
* downloads a file once when several hosts ask for it at the same time (the followers
  stream the leader's partial file as it grows).

It runs as its own process (:func:`start_proxy_process`: ``sockact-lab up`` exits while
its hosts live on), found again by PID and by its owner (the lab directory) on its command
line, and ended with :func:`stop_proxy_process` by ``sockact-lab down``, also after a
killed run. ``python -m sockact_lab.aptproxy --listen ADDR ...`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, BinaryIO

from sockact_lab.errors import LabError
from sockact_lab.system import Progress, alive, all_pids, cmdline, kill_until_gone, last_line, quiet

APT_CACHE_DIR = Path("/var/cache/sockact-lab/apt")
PROXY_PORT = 3142
MODULE = "sockact_lab.aptproxy"
CHUNK = 64 * 1024
#: seconds a proxy has to leave after SIGTERM before it is killed
STOP_TIMEOUT = 5.0

_CACHEABLE_SUFFIXES = (".deb", ".udeb", ".dsc", ".tar.gz", ".tar.xz", ".tar.bz2", ".diff.gz")
_HASHES = {"SHA256": "sha256", "SHA512": "sha512", "MD5Sum": "md5"}
_REQUEST_HEADERS = (
    "User-Agent",
    "Accept",
    "Cache-Control",
    "Pragma",
    "Range",
    "If-Range",
    "If-Modified-Since",
    "If-None-Match",
)
_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Last-Modified",
    "ETag",
    "Accept-Ranges",
    "Cache-Control",
    "Expires",
    "Location",
)


class _Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class _Download:
    """One upstream download of a cacheable file, in progress: the first client (leader)
    writes ``tmp``; clients asking for the same file meanwhile (followers) read ``tmp``
    as it grows instead of downloading again."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cond = threading.Condition()
        self.status: int | None = None  # upstream status, once known
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None
        self.written = 0
        self.done = False
        self.ok = False


@dataclass
class ProxyStats:
    requests: int = 0
    hits: int = 0  # served from the cache
    misses: int = 0  # downloaded into the cache
    coalesced: int = 0  # served from a download another client started
    passthrough: int = 0  # not cacheable (InRelease, 404, ...): relayed
    refused: int = 0
    errors: int = 0
    upstream_bytes: int = 0
    client_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {
                name: int(getattr(self, name))
                for name in (
                    "requests",
                    "hits",
                    "misses",
                    "coalesced",
                    "passthrough",
                    "refused",
                    "errors",
                    "upstream_bytes",
                    "client_bytes",
                )
            }


class AptProxy:
    """Caching forward proxy for apt (``Acquire::http::Proxy``), one listening socket per
    address in ``listen`` (the lab's gateway addresses: reachable from the hosts only).

    Only ``http://<allowed host>/...`` requests are forwarded (GET, HEAD); anything else
    gets 403 (CONNECT, other hosts) or 405. ``.deb`` and other pool files and
    ``by-hash`` indexes never change once published, so they are cached (by-hash ones
    checked against their hash); ``InRelease`` and the like are always relayed.
    """

    def __init__(
        self,
        cache_dir: Path,
        listen: Sequence[str],
        port: int = PROXY_PORT,
        *,
        allowed_hosts: Iterable[str] = ("deb.debian.org",),
        upstream_timeout: float = 30.0,
        client_timeout: float = 120.0,
        log: Progress | None = None,
    ) -> None:
        if not listen:
            raise LabError("proxy: no address to listen on")
        self.cache_dir = Path(cache_dir)
        self.listen = tuple(listen)
        self.port = port
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self.log = log or quiet
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}
        self._servers: list[_ProxyServer] = []
        self._threads: list[threading.Thread] = []

    # ---- lifecycle

    def start(self) -> list[tuple[str, int]]:
        """Bind every address and serve in background threads; returns (address, port)
        pairs (the real port when ``port`` is 0)."""
        if self._servers:
            raise LabError("proxy: already started")
        (self.cache_dir / ".tmp").mkdir(parents=True, exist_ok=True)
        for path in (self.cache_dir / ".tmp").iterdir():  # left by a killed proxy
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > 3600:
                    path.unlink()
        try:
            for address in self.listen:
                try:
                    server = _ProxyServer((address, self.port), self)
                except OSError as exc:
                    raise LabError(
                        f"proxy: cannot listen on {address}:{self.port}: {exc.strerror}"
                    ) from exc
                self._servers.append(server)
            for server in self._servers:
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.2},
                    name=f"apt-proxy-{server.bound[0]}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise
        return self.addresses

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.bound for s in self._servers]

    def url(self, address: str) -> str:
        """``Acquire::http::Proxy`` value for hosts reaching the proxy at ``address``."""
        for host, port in self.addresses:
            if host == address:
                return f"http://{host}:{port}/"
        raise LabError(f"proxy: not listening on {address}")

    def stop(self) -> None:
        """Stop accepting; requests in progress finish in their (daemon) threads."""
        for i, server in enumerate(self._servers):
            if i < len(self._threads) and self._threads[i].is_alive():
                server.shutdown()  # blocks until serve_forever returns: only if it runs
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> AptProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request logic (called from handler threads)

    def parse_target(self, target: str) -> urllib.parse.SplitResult:
        """The absolute URI of a proxy request, checked against the allowed hosts."""
        parts = urllib.parse.urlsplit(target)
        if parts.scheme != "http" or not parts.netloc:
            raise _Refused(400, f"not an absolute http:// URI: {target[:200]!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise _Refused(400, f"bad port in {target[:200]!r}") from exc
        host = (parts.hostname or "").lower()
        if host not in self.allowed_hosts or port not in (None, 80) or "@" in parts.netloc:
            raise _Refused(403, f"host not allowed: {parts.netloc[:100]}")
        if not parts.path.startswith("/"):
            raise _Refused(400, f"bad path in {target[:200]!r}")
        return parts

    def cache_path(self, parts: urllib.parse.SplitResult) -> Path | None:
        """Where the file is cached, or None when it is not cacheable."""
        if parts.query or parts.fragment:
            return None
        path = urllib.parse.unquote(parts.path)
        if not (path.endswith(_CACHEABLE_SUFFIXES) or "/by-hash/" in path):
            return None
        segments = path.strip("/").split("/")
        if any(s in ("", ".", "..") or "\0" in s for s in segments):
            return None
        return self.cache_dir / (parts.hostname or "").lower() / Path(*segments)

    def upstream(
        self, method: str, parts: urllib.parse.SplitResult, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(
            parts.hostname or "", parts.port or 80, timeout=self.upstream_timeout
        )
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, headers=headers)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def claim(self, key: str, final: Path) -> tuple[str, _Download | None, BinaryIO | None]:
        """("hit", None, file) | ("follow", download, partial file) | ("lead", download,
        None): under the lock, so a follower's open() never races the leader's rename."""
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                return "hit", None, open(final, "rb")
            running = self._downloads.get(key)
            if running is not None:
                return "follow", running, open(running.tmp, "rb")
            tmp = self.cache_dir / ".tmp" / f"{uuid.uuid4().hex}.part"
            tmp.touch()
            download = _Download(tmp)
            self._downloads[key] = download
            return "lead", download, None

    def finish(self, key: str, download: _Download, final: Path, ok: bool) -> None:
        with self._lock:
            if ok:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(download.tmp, final)
            else:
                download.tmp.unlink(missing_ok=True)
            del self._downloads[key]
        with download.cond:
            download.ok = ok
            download.done = True
            download.cond.notify_all()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], proxy: AptProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _ProxyHandler)
        host, port = self.socket.getsockname()[:2]
        self.bound: tuple[str, int] = (str(host), int(port))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of a traceback on stderr; a client that resets its
        keep-alive connection between requests is normal."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return
        self.proxy.stats.add(errors=1)
        self.proxy.log(f"{client_address[0]} handler error: {exc!r}")


class _ClientGone(Exception):
    pass


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sockact-lab-apt-proxy"
    sys_version = ""
    timeout = 120.0  # the proxy's client_timeout replaces it in setup()
    _head_sent = False

    @property
    def proxy(self) -> AptProxy:
        server = self.server
        assert isinstance(server, _ProxyServer)
        return server.proxy

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.proxy.client_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # one line per request comes from _log instead

    def _log(self, how: str, status: int, sent: int, started: float) -> None:
        self.proxy.log(
            f"{self.client_address[0]} {self.command} {self.path} {status} {how} "
            f"{sent}B {time.monotonic() - started:.2f}s"
        )

    # ---- methods

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_CONNECT(self) -> None:
        self.proxy.stats.add(requests=1, refused=1)
        self._simple(403, "CONNECT (https) is not proxied; use http:// mirrors")

    def do_POST(self) -> None:
        self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_OPTIONS(self) -> None:
        self._not_allowed()

    def _not_allowed(self) -> None:
        self.proxy.stats.add(requests=1, refused=1)
        self.close_connection = True  # a request body may follow: do not parse it
        self._simple(405, f"{self.command} is not proxied")

    # ---- responses

    def _simple(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self._head_sent = True
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_head(self, status: int, headers: Iterable[tuple[str, str]], reason: str = "") -> bool:
        """Status line and headers; False when the body length is unknown (then the
        connection closes after the body)."""
        self._head_sent = True
        self.send_response(status, reason or None)
        known = False
        for name, value in headers:
            self.send_header(name, value)
            known = known or name.lower() == "content-length"
        bodyless = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        if not known and not bodyless:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        return known

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:  # BrokenPipe, reset, timeout
            raise _ClientGone() from exc

    def _handle(self) -> None:
        proxy = self.proxy
        started = time.monotonic()
        self._head_sent = False
        proxy.stats.add(requests=1)
        try:
            parts = proxy.parse_target(self.path)
        except _Refused as exc:
            proxy.stats.add(refused=1)
            self._simple(exc.status, exc.why)
            self._log("refused", exc.status, 0, started)
            return
        cache = proxy.cache_path(parts)
        try:
            if cache is None:
                how, status, sent = self._relay(parts)
            else:
                how, status, sent = self._cached(parts, cache)
        except _ClientGone:
            self.close_connection = True
            self._log("client gone", 0, 0, started)
            return
        except (OSError, http.client.HTTPException) as exc:
            proxy.stats.add(errors=1)
            self.close_connection = True
            status = 504 if isinstance(exc, TimeoutError) else 502
            if not self._head_sent:  # else the client sees a short body and retries
                with contextlib.suppress(OSError):
                    self._simple(status, f"upstream {parts.hostname}: {exc!r}")
            self._log(f"error {exc!r}", status, 0, started)
            return
        proxy.stats.add(client_bytes=sent)
        self._log(how, status, sent, started)

    def _request_headers(self, *, full: bool) -> dict[str, str]:
        """Headers forwarded upstream; ``full``: no Range/conditionals (to fill the cache)."""
        out: dict[str, str] = {}
        for name in _REQUEST_HEADERS:
            if full and (name == "Range" or name.startswith("If-")):
                continue
            value = self.headers.get(name)
            if value is not None:
                out[name] = value
        return out

    def _relay(self, parts: urllib.parse.SplitResult) -> tuple[str, int, int]:
        """Pass the request through, streaming the answer (InRelease, 404s, ...)."""
        proxy = self.proxy
        conn, resp = proxy.upstream(self.command, parts, self._request_headers(full=False))
        try:
            headers = [(n, v) for n in _RESPONSE_HEADERS if (v := resp.getheader(n)) is not None]
            self._send_head(resp.status, headers, resp.reason)
            sent = 0
            if self.command != "HEAD":
                while chunk := resp.read(CHUNK):
                    proxy.stats.add(upstream_bytes=len(chunk))
                    self._write(chunk)
                    sent += len(chunk)
        finally:
            conn.close()
        proxy.stats.add(passthrough=1)
        return "relay", resp.status, sent

    def _cached(self, parts: urllib.parse.SplitResult, final: Path) -> tuple[str, int, int]:
        proxy = self.proxy
        key = str(final)
        role, download, fh = proxy.claim(key, final)
        if role == "hit":
            assert fh is not None
            with fh:
                return self._from_cache(fh)
        assert download is not None
        if role == "follow":
            assert fh is not None
            with fh:
                return self._follow(parts, download, fh)
        return self._lead(parts, key, final, download)

    def _from_cache(self, fh: BinaryIO) -> tuple[str, int, int]:
        size = os.fstat(fh.fileno()).st_size
        self._send_head(
            200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        )
        sent = 0
        if self.command != "HEAD":
            try:
                self.wfile.flush()
                sent = self.connection.sendfile(fh)
            except OSError as exc:
                raise _ClientGone() from exc
        self.proxy.stats.add(hits=1)
        return "hit", 200, sent

    def _lead(
        self, parts: urllib.parse.SplitResult, key: str, final: Path, download: _Download
    ) -> tuple[str, int, int]:
        """Download into the cache while streaming to this client (GET even for HEAD:
        the file is wanted anyway)."""
        proxy = self.proxy
        ok = False
        try:
            conn, resp = proxy.upstream("GET", parts, self._request_headers(full=True))
        except BaseException:
            proxy.finish(key, download, final, ok=False)
            raise
        try:
            headers = [(n, v) for n in _RESPONSE_HEADERS if (v := resp.getheader(n)) is not None]
            length_header = resp.getheader("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            with download.cond:
                download.status = resp.status
                download.headers = headers
                download.length = length
                download.cond.notify_all()
            if resp.status != 200:  # e.g. 404: relay it, cache nothing
                return self._relay_response(resp, headers, "relay")
            digest = _by_hash_digest(parts.path)
            sent, client_gone = 0, False
            self._send_head(200, headers)
            with open(download.tmp, "wb") as out:
                while chunk := resp.read(CHUNK):
                    proxy.stats.add(upstream_bytes=len(chunk))
                    out.write(chunk)
                    out.flush()
                    if digest is not None:
                        digest[1].update(chunk)
                    with download.cond:
                        download.written += len(chunk)
                        download.cond.notify_all()
                    if not client_gone and self.command != "HEAD":
                        try:
                            self._write(chunk)
                            sent += len(chunk)
                        except _ClientGone:
                            client_gone = True  # finish the file for the others
                out.flush()
                os.fsync(out.fileno())
            ok = (length is None or download.written == length) and (
                digest is None or digest[1].hexdigest() == digest[0]
            )
            if not ok:
                proxy.stats.add(errors=1)
                proxy.log(f"not cached (length or hash mismatch): {parts.geturl()}")
            if client_gone:
                raise _ClientGone()
            if not ok:
                self.close_connection = True
            proxy.stats.add(misses=1)
            return "miss", 200, sent
        finally:
            conn.close()
            proxy.finish(key, download, final, ok=ok)

    def _relay_response(
        self, resp: http.client.HTTPResponse, headers: list[tuple[str, str]], how: str
    ) -> tuple[str, int, int]:
        self._send_head(resp.status, headers, resp.reason)
        sent = 0
        while chunk := resp.read(CHUNK):
            self.proxy.stats.add(upstream_bytes=len(chunk))
            if self.command != "HEAD":
                self._write(chunk)
                sent += len(chunk)
        self.proxy.stats.add(passthrough=1)
        return how, resp.status, sent

    def _follow(
        self, parts: urllib.parse.SplitResult, download: _Download, fh: BinaryIO
    ) -> tuple[str, int, int]:
        """Stream a file another client is downloading, as it arrives."""
        deadline = time.monotonic() + self.proxy.upstream_timeout
        with download.cond:
            while download.status is None and not download.done:
                if not download.cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    break
            status = download.status
            headers = list(download.headers)
        if status != 200:  # failed, timed out or not a 200: ask upstream ourselves
            return self._relay(parts)
        self._send_head(200, headers)
        if self.command == "HEAD":
            self.proxy.stats.add(coalesced=1)
            return "coalesced", 200, 0
        sent = 0
        while True:
            with download.cond:
                while download.written <= sent and not download.done:
                    if not download.cond.wait(timeout=self.proxy.upstream_timeout):
                        raise _ClientGone()  # leader stalled: drop the client, apt retries
                available, done, ok = download.written, download.done, download.ok
            if done and not ok:
                raise _ClientGone()  # truncated: close, so apt does not take it as complete
            while sent < available:
                chunk = fh.read(min(CHUNK, available - sent))
                if not chunk:
                    break
                self._write(chunk)
                sent += len(chunk)
            if done and sent >= available:
                break
        self.proxy.stats.add(coalesced=1)
        return "coalesced", 200, sent


def _by_hash_digest(path: str) -> tuple[str, Any] | None:
    """(expected hex digest, hash object) for ``.../by-hash/SHA256/<hex>`` paths."""
    parts = urllib.parse.unquote(path).split("/")
    for i, part in enumerate(parts[:-2]):
        if part == "by-hash" and parts[i + 1] in _HASHES:
            return parts[i + 2].lower(), hashlib.new(_HASHES[parts[i + 1]])
    return None


# --------------------------------------------------------------------------- the process


@dataclass
class ProxyProcess:
    """The proxy running as its own process (outlives the command that started it)."""

    pid: int
    addresses: list[tuple[str, int]]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def url(self, address: str) -> str:
        """``Acquire::http::Proxy`` value for hosts reaching the proxy at ``address``."""
        for host, port in self.addresses:
            if host == address:
                return f"http://{host}:{port}/"
        raise LabError(f"proxy: not listening on {address}")


def start_proxy_process(
    listen: Sequence[str],
    *,
    owner: str,
    log_path: Path,
    port: int = PROXY_PORT,
    cache_dir: Path = APT_CACHE_DIR,
    allowed_hosts: Iterable[str] = ("deb.debian.org",),
    timeout: float = 15.0,
) -> ProxyProcess:
    """Start the proxy as a detached process (own session) listening on ``listen``:``port``;
    returns once every address accepts connections. ``owner`` (the lab directory) lets
    :func:`proxy_pids` find it again after a killed run. The addresses must exist (the
    lab's veths are up)."""
    if not listen:
        raise LabError("proxy: no address to listen on")
    cmd = [sys.executable, "-m", MODULE, "--owner", owner, "--port", str(port)]
    cmd += ["--cache-dir", str(cache_dir)]
    for address in listen:
        cmd += ["--listen", address]
    for host in allowed_hosts:
        cmd += ["--allow", host]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes]
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    addresses = [(a, port) for a in listen]
    deadline = time.monotonic() + timeout
    pending = list(addresses)
    while pending:
        if popen.poll() is not None:
            raise LabError(
                f"proxy: exited {popen.returncode} at start: "
                f"{last_line(log_path.read_text(errors='replace'))}"
            )
        if time.monotonic() > deadline:
            stop_proxy_process(popen.pid, owner)
            raise LabError(f"proxy: not listening on {pending[0][0]}:{port} after {timeout:.0f}s")
        with contextlib.suppress(OSError), socket.create_connection(pending[0], timeout=1):
            pending.pop(0)
            continue
        time.sleep(0.05)
    return ProxyProcess(pid=popen.pid, addresses=addresses, log_path=log_path, popen=popen)


def is_proxy(pid: int, owner: str) -> bool:
    """True if ``pid`` is a proxy process started for ``owner`` (guards against PID reuse)."""
    args = cmdline(pid)
    if MODULE not in args[1:3]:
        return False
    return any(a == "--owner" and b == owner for a, b in itertools.pairwise(args))


def proxy_pids(owner: str) -> list[int]:
    """Proxy processes started for ``owner`` (a killed run's leftovers too)."""
    return [pid for pid in all_pids() if is_proxy(pid, owner)]


def stop_proxy_process(pid: int, owner: str, say: Progress = quiet) -> bool:
    """SIGTERM the proxy process ``pid`` of ``owner`` (it prints its counters and exits),
    SIGKILL it after :data:`STOP_TIMEOUT`; False when no such proxy runs as ``pid``."""
    if not (alive(pid) and is_proxy(pid, owner)):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    def still_there() -> list[int]:
        return [pid] if alive(pid) and is_proxy(pid, owner) else []

    kill_until_gone(still_there, f"apt proxy {pid}", "lab", say)
    return True


def _serve(args: argparse.Namespace) -> None:
    """The proxy process: serve until SIGTERM/SIGINT, then print the counters."""
    stop = threading.Event()

    def on_signal(_sig: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def log(msg: str) -> None:
        print(f"{datetime.now(UTC).strftime('%H:%M:%S.%f')[:-3]} {msg}", flush=True)

    proxy = AptProxy(
        Path(args.cache_dir), args.listen, args.port, allowed_hosts=args.allow, log=log
    )
    addresses = proxy.start()
    log(f"listening on {' '.join(f'{a}:{p}' for a, p in addresses)} pid {os.getpid()}")
    try:
        stop.wait()
    finally:
        proxy.stop()
        log(f"stopped; {json.dumps(proxy.stats.as_dict())}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sockact_lab.aptproxy --listen ADDR [--listen ADDR ...]``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="apt's caching proxy for lab hosts."
    )
    parser.add_argument("--listen", action="append", required=True, help="address (repeat)")
    parser.add_argument("--port", type=int, default=PROXY_PORT)
    parser.add_argument("--cache-dir", default=str(APT_CACHE_DIR))
    parser.add_argument("--allow", action="append", default=[], help="mirror host (repeat)")
    parser.add_argument("--owner", default="", help="the lab directory (finds leftovers)")
    args = parser.parse_args(argv)
    args.allow = args.allow or ["deb.debian.org"]
    try:
        _serve(args)
    except LabError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
