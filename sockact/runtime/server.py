"""The waitress adapter and its graceful drain: the only module that knows waitress.

waitress 3.0 has no drain of its own (Pylons/waitress#198). This module adds one by
subclassing the server, channel and task classes and by running the asyncore loop itself,
so that every step of the drain happens in the loop thread:

1. stop accepting and close our listener (with SO_REUSEPORT and tcp_migrate_req=1 the
   kernel moves its queued connections to the other instances; an inherited socket stays
   open in systemd and in the other instances);
2. requests a connection has already sent (pipelined ones too) are answered; the last
   response of each connection carries ``Connection: close`` and its channel closes once
   flushed, so keep-alive clients reconnect to another instance;
3. idle keep-alive connections get ``idle_grace`` seconds to send a request that is
   already on its way, then are closed (unless bytes are waiting on them);
4. return when no connection is left, or cut what remains at ``drain_timeout``
   (connections closed with work left on them are counted).

It also changes what waitress does while serving: ``connection_limit`` counts client
connections only; ``accept()`` out of descriptors rests instead of spinning; a request
with both Content-Length and Transfer-Encoding closes its connection after the response;
a listener that breaks (closed, no longer listening) starts the drain and is reported,
instead of waitress closing its own wake-up trigger. TCP and unix listeners alike.

Every request is counted for ``/metrics`` in the channel: in flight while a worker thread
answers it, then by the status its client got (waitress's own error responses included:
400 for a request it cannot parse, 500 for an app that raised) and the time since it was
fully read.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from wsgiref.types import WSGIApplication

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, TcpWSGIServer, UnixWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

from sockact.runtime.metrics import NO_STATUS, Metrics

log = logging.getLogger("sockact.runtime.server")

#: accept() errors that mean "no descriptor (or memory) for a new connection right now"
_NO_DESCRIPTOR = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: how long accept() rests after such an error before trying again (a connection that
#: closes ends the rest at once)
ACCEPT_PAUSE = 0.25
#: failures closer together than this belong to one episode (one log line): while
#: clients come and go at the limit, accept() alternates between working and failing
EPISODE_GAP = 2.0


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: seconds it took, and connections it cut.

    ``cut`` counts connections closed at ``drain_timeout`` with a request unfinished;
    ``cut_unread`` those closed during the drain while request bytes were still unread
    (a client that kept pipelining after its response said ``Connection: close``).
    """

    seconds: float
    cut: int
    timed_out: bool
    cut_unread: int = 0
    #: set when the drain started because the listener failed, not because it was asked
    listener_error: str | None = None


class _Parser(HTTPRequestParser):  # type: ignore[misc]
    #: the request had both Content-Length and Transfer-Encoding (RFC 9112 6.1)
    both_lengths = False
    #: when the request was fully read (perf_counter): where its time in the request
    #: histogram starts
    completed_at = 0.0

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        headers = self.headers
        # HTTP/1.1 parsing pops TRANSFER_ENCODING and sets ``chunked``; 1.0 keeps it.
        if "CONTENT_LENGTH" in headers and (self.chunked or "TRANSFER_ENCODING" in headers):
            self.both_lengths = True

    def received(self, data: bytes) -> int:
        consumed: int = super().received(data)
        if self.completed and not self.completed_at:
            self.completed_at = time.perf_counter()
        return consumed


def status_code(status_line: str | None) -> int:
    """200 for ``"200 OK"``; NO_STATUS when no header was written or the code is not
    100-599 (a label set that stays small whatever the app sends)."""
    if status_line is None:
        return NO_STATUS
    try:
        code = int(status_line[:3])
    except ValueError:
        return NO_STATUS
    return code if 100 <= code <= 599 else NO_STATUS


class _ErrorTask(ErrorTask):  # type: ignore[misc]
    """waitress's error response (a request it could not parse, an app that raised before
    its response began), with its status noted for the metrics."""

    channel: _DrainingChannel

    def build_response_header(self) -> bytes:
        self.channel.status_sent = self.status
        header: bytes = super().build_response_header()
        return header


class _DrainingTask(WSGITask):  # type: ignore[misc]
    channel: _DrainingChannel

    def execute(self) -> None:
        self.channel.file_body = False
        try:
            super().execute()
        except ClientDisconnected:  # the client went away: it got what it waited for
            raise
        except Exception:
            if self.wrote_header:
                # the app failed once its response began: waitress closes the connection
                # and the client gets that response cut off, which is no complete response
                # (counted as none), not the status its header said
                self.channel.status_sent = None
            raise
        if self.cut_short():
            self.channel.status_sent = None

    def cut_short(self) -> bool:
        """The app gave fewer bytes than its Content-Length: waitress's own test (it then
        closes the connection, "application returned too few bytes"), except for a body
        through ``wsgi.file_wrapper``, which the channel sends after the task."""
        length = self.content_length
        return (
            length is not None
            and self.request.command != "HEAD"
            and not self.channel.file_body
            and self.content_bytes_written != length
        )

    def build_response_header(self) -> bytes:
        channel = self.channel
        channel.status_sent = self.status
        # Decided when the header is written, so a request that started before the
        # drain and finishes after it still tells its client to go elsewhere; but only
        # on the last request the connection has sent: pipelined requests already
        # received are answered first (the close would discard them).
        if channel.server.draining and not channel.more_requests_waiting():
            self.set_close_on_finish()
        # RFC 9112 6.1: Content-Length with Transfer-Encoding may be a smuggling attempt;
        # the body was read as chunked, and the connection must close after the response.
        if self.request.both_lengths:
            self.set_close_on_finish()
        header: bytes = super().build_response_header()
        return header


class _DrainingChannel(HTTPChannel):  # type: ignore[misc]
    task_class = _DrainingTask
    error_task_class = _ErrorTask
    parser_class = _Parser
    server: _DrainingServer
    #: the status line of the response being answered, once its header is written
    status_sent: str | None = None
    #: set when the drain cuts this channel at drain_timeout (counted there)
    cut = False
    #: the task being answered handed its body over as a ``wsgi.file_wrapper``
    file_body = False

    def service(self) -> None:
        """waitress's own (one request: the app's answer, or waitress's error response),
        counted: in flight while it runs, then by the status the client got and the time
        since the request was fully read."""
        request: _Parser = self.requests[0]
        metrics = self.server.metrics
        metrics.request_started()
        self.status_sent = None
        try:
            super().service()
        finally:
            started = request.completed_at or time.perf_counter()
            metrics.request_finished(status_code(self.status_sent), time.perf_counter() - started)

    def write_soon(self, data: bytes | ReadOnlyFileBasedBuffer) -> int:
        if isinstance(data, ReadOnlyFileBasedBuffer):
            self.file_body = True
        written: int = super().write_soon(data)
        return written

    def idle(self) -> bool:
        """No request being read, queued or answered, and nothing left to send."""
        return (
            not self.requests
            and self.request is None
            and not self.total_outbufs_len
            and not self.close_when_flushed
            and not self.will_close
        )

    def more_requests_waiting(self) -> bool:
        """Another request is queued, half-read, or unread in the kernel behind this one.

        Called from a worker thread while its task (``requests[0]``) is answered: the loop
        thread reads nothing more from this channel until that task is done.
        """
        return len(self.requests) > 1 or self.request is not None or self.has_pending_input()

    def has_pending_input(self) -> bool:
        sock = self.socket
        if sock is None:
            return False
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # BlockingIOError: nothing there; anything else: gone
            return False

    def handle_close(self) -> None:
        server = self.server
        if server.draining and not self.cut and self.connected and self.has_pending_input():
            # a client that went on sending after our last response said Connection: close
            server.cut_unread += 1
        super().handle_close()
        server.accept_paused_until = 0.0  # a descriptor is free again: try accept() now


class _DrainingServer(BaseWSGIServer):  # type: ignore[misc]
    """What sockact changes in waitress's server, for TCP and unix listeners alike."""

    channel_class = _DrainingChannel
    draining = False
    metrics: Metrics
    inherited = False
    cut_unread = 0
    #: why the listener stopped working while serving (the instance then drains and exits)
    listener_error: str | None = None
    #: accept() rests until then (monotonic) after running out of descriptors
    accept_paused_until = 0.0
    #: when accept() last failed for want of descriptors (monotonic; 0: never)
    out_of_descriptors_at = 0.0
    # waitress's own attributes, typed here for mypy
    next_channel_cleanup: float = 0
    in_connection_overflow: bool = False

    def readable(self) -> bool:
        """waitress's own, with ``connection_limit`` counting client connections only.

        waitress counts every entry of its socket map, which also holds the listener and
        the trigger: a limit of 4 served 2 clients.
        """
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        if not self.accepting or time.monotonic() < self.accept_paused_until:
            return False
        clients, limit = len(self.active_channels), self.adj.connection_limit
        if not self.in_connection_overflow and clients >= limit:
            self.in_connection_overflow = True
            log.warning("%d client connections open (connection_limit): accept paused", clients)
        elif self.in_connection_overflow and clients < limit:
            self.in_connection_overflow = False
            log.info("below connection_limit again: accepting")
        return not self.in_connection_overflow

    def handle_accept(self) -> None:
        """waitress's own, without its traceback-per-failure spin when out of descriptors.

        With every descriptor taken, the listener stays readable and accept() fails at
        once: waitress logged a traceback and tried again, burning a core. Here accept()
        rests ACCEPT_PAUSE (or until a connection closes), with one log line per episode
        (failures less than EPISODE_GAP apart).
        """
        try:
            conn, addr = self.socket.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno not in _NO_DESCRIPTOR:
                self.listener_failed(f"accept() failed: {exc.strerror} (errno {exc.errno})")
                return
            now = time.monotonic()
            self.accept_paused_until = now + ACCEPT_PAUSE
            new_episode = now - self.out_of_descriptors_at > EPISODE_GAP
            self.out_of_descriptors_at = now
            if new_episode:
                self.metrics.out_of_descriptors()
                log.warning(
                    "accept paused: %s (%d client connections open); retrying every %g s "
                    "until a descriptor is free",
                    exc.strerror,
                    len(self.active_channels),
                    ACCEPT_PAUSE,
                )
            return
        try:
            self.set_socket_options(conn)
            self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)
        except OSError:  # the client already went away: not a listener problem
            conn.close()

    def accept_connections(self) -> None:
        self.accepting = True
        if not self.inherited:
            # An inherited socket already listens, with the backlog its socket unit set.
            self.socket.listen(self.adj.backlog)

    # The loop calls these on the listener when poll() says it is broken (POLLHUP,
    # POLLERR, POLLNVAL: closed, or no longer listening) or a handler raised. waitress's
    # own close() would also close the trigger, leaving a loop that cannot be woken and
    # an instance that says ready while it refuses every connection.

    def handle_close(self) -> None:
        self.listener_failed("the listener was closed or stopped listening (poll: hang-up)")

    def handle_error(self) -> None:
        _t, value, _tb = sys.exc_info()
        self.listener_failed(f"{type(value).__name__}: {value}")

    def listener_failed(self, reason: str) -> None:
        """Stop using the listener; the loop drains what is open and reports ``reason``."""
        if self.listener_error is None and not self.draining:
            self.listener_error = reason
        self.accepting = False
        wasyncore.dispatcher.close(self)  # the listener only, not the trigger


class _TcpServer(_DrainingServer, TcpWSGIServer):  # type: ignore[misc]
    pass


class _UnixServer(_DrainingServer, UnixWSGIServer):  # type: ignore[misc]
    pass


class _SignalWakeup(wasyncore.dispatcher):  # type: ignore[misc]
    """The loop's end of ``signal.set_wakeup_fd``.

    The kernel may deliver a signal to any thread; Python runs the handler in the main
    thread only when it next executes bytecode. Without this, a SIGTERM that lands on a
    worker thread waits for the loop's poll() timeout (up to a second) before the drain
    starts.
    """

    def __init__(self, map: dict[int, Any]) -> None:
        self.read_end, self.write_end = socket.socketpair()
        self.read_end.setblocking(False)
        self.write_end.setblocking(False)
        super().__init__(self.read_end, map=map)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        with contextlib.suppress(OSError):
            self.read_end.recv(4096)

    def close(self) -> None:
        super().close()
        self.write_end.close()


class WaitressServer:
    """One waitress server on an already acquired listener, with a drain.

    Build it only when the app is warm: from :meth:`start_accepting` on, the kernel's
    connections to our listener are served.
    """

    def __init__(
        self,
        app: WSGIApplication,
        listener: socket.socket,
        *,
        inherited: bool,
        metrics: Metrics,
        threads: int,
        connection_limit: int,
        backlog: int,
    ) -> None:
        self._map: dict[int, Any] = {}
        self._dispatcher = ThreadedTaskDispatcher()
        self._dispatcher.set_thread_count(threads)
        adj = Adjustments(
            sockets=[listener],
            threads=threads,
            connection_limit=connection_limit,
            backlog=backlog,
            asyncore_use_poll=True,  # select() stops at fd 1024
            ident="sockact",
        )
        unix = listener.family == socket.AF_UNIX
        server_class = _UnixServer if unix else _TcpServer
        self._server: _DrainingServer = server_class(
            app,
            self._map,
            _start=False,
            _sock=listener,
            dispatcher=self._dispatcher,
            adj=adj,
            bind_socket=False,
            sockinfo=(listener.family, listener.type, listener.proto, listener.getsockname()),
        )
        self._server.metrics = metrics
        self._server.inherited = inherited
        metrics.open_connections = lambda: len(self._server.active_channels)
        self._wakeup = _SignalWakeup(self._map)
        self._drain_requested = threading.Event()
        self._closed = False
        self.address = f"{self._server.effective_host}:{self._server.effective_port}"

    def start_accepting(self) -> None:
        self._server.accept_connections()

    def request_drain(self) -> None:
        """Ask the loop to drain. Safe from a signal handler or any thread."""
        self._drain_requested.set()
        self.wake()

    def wake(self) -> None:
        """Make the loop run its tick now. Safe from a signal handler or any thread.

        Does nothing once :meth:`close` began: the trigger's descriptor may be closed and
        its number reused by another file.
        """
        if not self._closed:
            with contextlib.suppress(OSError):
                self._server.pull_trigger()

    @property
    def open_connections(self) -> int:
        return len(self._server.active_channels)

    def run(
        self,
        *,
        drain_timeout: float,
        idle_grace: float,
        on_tick: Callable[[], None],
        on_drain: Callable[[int, str | None], None],
        tick_every: float = 1.0,
    ) -> DrainResult:
        """Serve until a drain is requested and finished; returns how the drain went.

        ``on_tick`` runs in the loop thread at least every ``tick_every`` seconds (the
        watchdog proves the loop alive with it); ``on_drain(open_connections, listener_error)``
        once when the drain starts: asked for (``listener_error`` None), or because the
        listener failed (the reason; the result carries it too).
        """
        in_main = threading.current_thread() is threading.main_thread()
        previous = -1
        if in_main:
            previous = signal.set_wakeup_fd(
                self._wakeup.write_end.fileno(), warn_on_full_buffer=False
            )
        try:
            return self._loop(drain_timeout, idle_grace, on_tick, on_drain, tick_every)
        finally:
            if in_main:
                signal.set_wakeup_fd(previous)

    def _loop(
        self,
        drain_timeout: float,
        idle_grace: float,
        on_tick: Callable[[], None],
        on_drain: Callable[[int, str | None], None],
        tick_every: float,
    ) -> DrainResult:
        server = self._server
        started = 0.0
        while True:
            busy = server.draining or server.accept_paused_until
            wasyncore.poll2(min(tick_every, 0.25 if busy else 1.0), self._map)
            on_tick()
            now = time.monotonic()
            wanted = self._drain_requested.is_set() or server.listener_error is not None
            if wanted and not server.draining:
                started = now
                self._stop_accepting()
                on_drain(len(server.active_channels), server.listener_error)
            if not server.draining:
                continue
            channels = list(server.active_channels.values())
            if not channels:
                took = time.monotonic() - started
                return DrainResult(took, 0, False, server.cut_unread, server.listener_error)
            if now - started >= drain_timeout:
                for channel in channels:
                    channel.cut = True
                    channel.handle_close()
                took = time.monotonic() - started
                cut, unread, error = len(channels), server.cut_unread, server.listener_error
                return DrainResult(took, cut, True, unread, error)
            if now - started >= idle_grace:
                for channel in channels:
                    if channel.idle() and not channel.has_pending_input():
                        channel.handle_close()

    def _stop_accepting(self) -> None:
        server = self._server
        server.draining = True
        # Plain dispatcher.close(): waitress's own close() would also close the trigger
        # that the worker threads use to wake this loop.
        wasyncore.dispatcher.close(server)

    def close(self) -> None:
        """Stop the worker threads and release the trigger (after :meth:`run`)."""
        self._closed = True
        self._dispatcher.shutdown(cancel_pending=True, timeout=1)
        # What is left in the map: the trigger, and channels only if run() did not finish.
        for obj in list(self._map.values()):
            with contextlib.suppress(OSError):
                obj.close()
