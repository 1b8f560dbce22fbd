"""The waitress adapter and its graceful drain: the only module that knows waitress.

waitress 3.0 has no drain of its own (Pylons/waitress#198). This module adds one by
subclassing the server, channel and task classes and by running the asyncore loop itself,
so that every step of the drain happens in the loop thread:

1. stop accepting and close our listener (with SO_REUSEPORT and tcp_migrate_req=1 the
   kernel moves its queued connections to the other instances; an inherited socket stays
   open in systemd and in the other instances);
2. every response from then on carries ``Connection: close`` and its channel closes once
   flushed, so keep-alive clients reconnect to another instance;
3. idle keep-alive connections get ``idle_grace`` seconds to send a request that is
   already on its way, then are closed (unless bytes are waiting on them);
4. return when no connection is left, or cut what remains at ``drain_timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher, WSGITask

from sockact.runtime.metrics import Metrics

log = logging.getLogger("sockact.runtime.server")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: seconds it took and connections cut at the deadline."""

    seconds: float
    cut: int
    timed_out: bool


class _DrainingTask(WSGITask):  # type: ignore[misc]
    channel: _DrainingChannel

    def service(self) -> None:
        metrics = self.channel.server.metrics
        metrics.request_started()
        try:
            super().service()
        finally:
            try:
                status = int(str(self.status).split(" ", 1)[0])
            except ValueError:
                status = 0
            metrics.request_finished(status)

    def build_response_header(self) -> bytes:
        # Decided when the header is written, so a request that started before the
        # drain and finishes after it still tells its client to go elsewhere.
        if self.channel.server.draining:
            self.set_close_on_finish()
        header: bytes = super().build_response_header()
        return header


class _DrainingChannel(HTTPChannel):  # type: ignore[misc]
    task_class = _DrainingTask
    server: _DrainingServer

    def idle(self) -> bool:
        """No request being read, queued or answered, and nothing left to send."""
        return (
            not self.requests
            and self.request is None
            and not self.total_outbufs_len
            and not self.close_when_flushed
            and not self.will_close
        )

    def has_pending_input(self) -> bool:
        try:
            return bool(self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False
        except OSError:
            return False


class _DrainingServer(TcpWSGIServer):  # type: ignore[misc]
    channel_class = _DrainingChannel
    draining = False
    metrics: Metrics
    inherited = False

    def accept_connections(self) -> None:
        self.accepting = True
        if not self.inherited:
            # An inherited socket already listens, with the backlog its socket unit set.
            self.socket.listen(self.adj.backlog)


class WaitressServer:
    """One waitress server on an already acquired listener, with a drain.

    Build it only when the app is warm: from :meth:`start_accepting` on, the kernel's
    connections to our listener are served.
    """

    def __init__(
        self,
        app: WSGIApp,
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
        self._server = _DrainingServer(
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
        self._drain_requested = threading.Event()
        self.address = f"{self._server.effective_host}:{self._server.effective_port}"

    def start_accepting(self) -> None:
        self._server.accept_connections()

    def request_drain(self) -> None:
        """Ask the loop to drain. Safe from a signal handler or any thread."""
        self._drain_requested.set()
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
        on_drain: Callable[[int], None],
        tick_every: float = 1.0,
    ) -> DrainResult:
        """Serve until a drain is requested and finished; returns how the drain went.

        ``on_tick`` runs in the loop thread at least every ``tick_every`` seconds (the
        watchdog proves the loop alive with it); ``on_drain(open_connections)`` once when
        the drain starts.
        """
        server = self._server
        started = 0.0
        while True:
            wasyncore.poll2(min(tick_every, 0.25 if server.draining else 1.0), self._map)
            on_tick()
            now = time.monotonic()
            if self._drain_requested.is_set() and not server.draining:
                started = now
                self._stop_accepting()
                on_drain(len(server.active_channels))
            if not server.draining:
                continue
            channels = list(server.active_channels.values())
            if not channels:
                return DrainResult(time.monotonic() - started, 0, False)
            if now - started >= drain_timeout:
                for channel in channels:
                    channel.handle_close()
                return DrainResult(time.monotonic() - started, len(channels), True)
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
        self._dispatcher.shutdown(cancel_pending=True, timeout=1)
        # What is left in the map: the trigger, and channels only if run() did not finish.
        for obj in list(self._map.values()):
            with contextlib.suppress(OSError):
                obj.close()
