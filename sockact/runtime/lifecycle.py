"""One instance's life: starting -> warming -> ready -> draining -> stopped.

This is the order that makes a handover lossless (docs/design.md): the admin server
answers first, the app warms up while the old instance keeps all the traffic, the health
gate proves the release answers (in-process, before any client can reach it), the
listener opens only then, and READY=1 follows, so ``systemctl start api@2`` returns
exactly when api@2 serves.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar, cast
from wsgiref.types import WSGIApplication

from sockact import settings
from sockact.errors import AddressError, AppFailed, BadInput, ForcedExit, ListenerFailed
from sockact.runtime import sockets, systemd
from sockact.runtime.admin import AdminServer, wsgi_check
from sockact.runtime.config import Config
from sockact.runtime.metrics import Metrics, build_labels
from sockact.runtime.phase import Phase
from sockact.runtime.server import DrainResult, WaitressServer

log = logging.getLogger("sockact")

#: how often EXTEND_TIMEOUT_USEC is sent during a long warm-up, and how far it reaches
EXTEND_EVERY = 5.0
EXTEND_BY = 15.0

#: The first of these drains (nginx's SIGQUIT is graceful too); a second one during the
#: drain exits 130 at once.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: Logged and ignored. A stray SIGHUP (a closed terminal, a `kill -HUP` meant for a
#: reload) must not take an instance out: a drain would exit 0, and systemd's
#: Restart=on-failure would not bring it back. sockact has nothing to reload: a new
#: release is a new instance.
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

#: File descriptors kept out of connection_limit: stdio, listener, trigger, admin server,
#: journald, and the app's own files and sockets. An app that needs more is still safe:
#: accept() pauses when descriptors run out (server.py).
FD_RESERVE = 64


class _Fields(logging.Filter):
    """Adds INSTANCE and PHASE to every record (journald fields, and the stderr prefix)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def filter(self, record: logging.LogRecord) -> bool:
        record.INSTANCE = str(self.metrics.instance)
        record.PHASE = self.metrics.phase.value
        return True


def setup_logging(cfg: Config, metrics: Metrics) -> logging.Handler:
    """journald when stderr is the journal, plain stderr lines otherwise."""
    handler: logging.Handler
    if systemd.journal_is_stderr():
        handler = systemd.journal_handler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s sockact[%(process)d] instance=%(INSTANCE)s phase=%(PHASE)s "
                "%(levelname)s %(message)s"
            )
        )
    handler.addFilter(_Fields(metrics))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())
    # waitress logs every queued task at warning level under load; keep its errors only.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return handler


_T = TypeVar("_T")


class _StopRequested(Exception):
    """A stop signal arrived before the instance served: nothing to drain."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _import(target: str, what: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppFailed(f"{what} {target}: cannot import {module_name!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppFailed(f"{what} {target}: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise AppFailed(f"{what} {target}: {attr!r} is not callable")
    return cast(Callable[..., Any], obj)


class Instance:
    """Runs ``sockact serve`` for one :class:`Config`. Raises; never exits the process."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics(cfg.instance)
        self._stop = threading.Event()
        self._server: WaitressServer | None = None
        self._signals = 0
        self._stop_signal = ""
        self._ignored: collections.deque[str] = collections.deque()
        self._next_watchdog = 0.0
        self._watchdog_every = systemd.watchdog_interval()
        #: the release this process runs, as the admin server's /release computed it
        self._release_digest = ""

    # -- phases -------------------------------------------------------------------------

    def _phase(self, phase: Phase, status: str) -> None:
        self.metrics.phase = phase
        systemd.notify(f"STATUS={status}")
        log.info(status)

    def run(self) -> int:
        """The whole life; returns the exit code (0 also after a drain that cut).

        Raises :class:`SockactError` subclasses for the other exits (2, 3, 4, 7, 130).
        """
        setup_logging(self.cfg, self.metrics)
        cfg = self.cfg
        admin = AdminServer(cfg.admin_host, cfg.admin_port, self.metrics)
        self._release_digest = admin.release_digest
        try:
            # 1. admin server first: /live and /ready answer during everything below
            admin.start()
            self._install_signals()
            self._phase(Phase.STARTING, f"admin server on http://{admin.address}")
            # 2. pre-flight: fd limit, inherited socket or a shareable port (fails fast)
            inherited = self._preflight()
            # 3. warm-up, then 4. the health gate, both within warmup_timeout
            deadline = time.monotonic() + cfg.warmup_timeout
            try:
                self.metrics.warmup.start()
                app = self._health_gate(self._warm_up(deadline), deadline)
                self.metrics.warmup.stop()
            except _StopRequested as stopped:
                log.info("%s during the %s: stopping", self._stop_signal, stopped.stage)
                self._phase(Phase.STOPPED, "stopped during warm-up")
                return 0
            admin.set_check(wsgi_check(app, cfg.check_path))
            # 5. only now the listener, then READY=1; serve until a drain ends
            listener = self._acquire(inherited)
            return self._serve(app, listener)
        except BaseException:
            self.metrics.phase = Phase.FAILED
            raise
        finally:
            admin.close()

    def _preflight(self) -> sockets.Listener | None:
        """Find the inherited socket or check that the port can be shared, before warm-up."""
        cfg = self.cfg
        self._file_limit()
        inherited = None
        if cfg.listen in ("auto", "inherit"):
            sock = sockets.find_inherited(cfg.socket_name)
            if sock is not None:
                origin = f"inherited from systemd {sockets.describe(sock)}"
                inherited = sockets.Listener(sock=sock, inherited=True, origin=origin)
            elif cfg.listen == "inherit":
                raise AddressError(
                    "listen = inherit but systemd passed no socket (LISTEN_FDS/LISTEN_PID "
                    "unset or not for this process); check Sockets= in the unit"
                )
        if inherited is None:
            self._check_migrate_req()
            sockets.check_shareable(cfg.host, cfg.port)
        return inherited

    def _file_limit(self) -> None:
        """Raise the soft RLIMIT_NOFILE to the hard one; connection_limit must fit in it.

        systemd gives services a soft limit of 1024 (hard 524288) unless the unit sets
        LimitNOFILE=, while connection_limit defaults to 1000.
        """
        cfg = self.cfg
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        was = soft
        if soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (OSError, ValueError) as exc:
                log.warning("cannot raise the soft RLIMIT_NOFILE %d to %d: %s", soft, hard, exc)
        raised = f" (raised from {was})" if soft != was else ""
        log.info("file descriptors: soft limit %d%s, hard %d", soft, raised, hard)
        if cfg.connection_limit + FD_RESERVE > soft:
            source = cfg.sources.get("connection_limit", "default")
            raise BadInput(
                f"connection_limit = {cfg.connection_limit} ({source}) "
                f"does not fit RLIMIT_NOFILE {soft} (hard {hard}): sockact keeps {FD_RESERVE} "
                f"descriptors for itself and the app, so connection_limit can be at most "
                f"{max(soft - FD_RESERVE, 0)}; lower it, or raise LimitNOFILE= in the unit"
            )

    def _check_migrate_req(self) -> None:
        value = sockets.migrate_req()
        if value == 1:
            return
        what = "is 0" if value == 0 else "is not available (Linux < 5.14)"
        message = (
            f"net.ipv4.tcp_migrate_req {what}: stopping this instance will reset the "
            "connections queued on its listener; set it to 1 (sysctl drop-in) or use "
            "socket activation"
        )
        if self.cfg.require_migrate_req:
            raise AddressError(message + " (require_migrate_req = true)")
        log.warning(message)

    def _warm_up(self, deadline: float) -> object:
        """Import and call the factory, then the warm-up, before ``deadline``."""
        cfg = self.cfg
        self._phase(Phase.WARMING, f"warming up {cfg.app}")
        os.environ["SOCKACT_INSTANCE"] = str(cfg.instance)
        began = time.monotonic()

        def work() -> object:
            # first, so that a scrape during a long warm-up says what is warming
            self.metrics.set_build_info(build_labels(cfg.app, self._release_digest))
            app = _import(cfg.app, "app factory")()
            if cfg.warmup:
                _import(cfg.warmup, "warm-up")(app)
            return app

        app = self._bounded("warm-up", work, deadline)
        log.info("warm-up took %.2f s", time.monotonic() - began)
        return app

    def _health_gate(self, app: object, deadline: float) -> WSGIApplication:
        """The release must answer before the port sees it: a WSGI callable, and one
        in-process ``GET check_path`` answered with a status in ``check_status``."""
        cfg = self.cfg
        if not callable(app):
            what = "None" if app is None else f"a {type(app).__name__}"
            raise AppFailed(
                f"health gate: app factory {cfg.app} returned {what}, not a WSGI callable"
            )
        wsgi_app = cast(WSGIApplication, app)
        self._phase(Phase.WARMING, f"health gate: GET {cfg.check_path} in-process")
        result = self._bounded("health gate", wsgi_check(wsgi_app, cfg.check_path), deadline)
        request = f"GET {cfg.check_path}"
        if result.error is not None:
            raise AppFailed(f"health gate: {request} raised {_one_line(result.error)}")
        if not settings.accepts_status(cfg.check_status, result.status):
            raise AppFailed(
                f"health gate: {request} answered {result.status}, outside check_status = "
                f"{cfg.check_status}: {_one_line(result.excerpt(200))}"
            )
        log.info("health gate: %s answered %d", request, result.status)
        return wsgi_app

    def _bounded(self, stage: str, work: Callable[[], _T], deadline: float) -> _T:
        """Run ``work`` in a thread while this thread keeps systemd informed.

        Raises :class:`AppFailed` when ``work`` raises or ``deadline`` (monotonic) passes,
        and :class:`_StopRequested` when a stop signal arrives first.
        """
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = work()
            except BaseException as exc:
                result["error"] = exc

        worker = threading.Thread(target=run, name=stage.replace(" ", "-"), daemon=True)
        worker.start()
        next_extend = time.monotonic()
        while worker.is_alive():
            now = time.monotonic()
            if self._stop.is_set():
                raise _StopRequested(stage)
            if now >= deadline:
                raise AppFailed(
                    f"{stage} did not finish within warmup_timeout = "
                    f"{self.cfg.warmup_timeout:g} s (factory, warm-up and health gate)"
                )
            if now >= next_extend:
                # Keeps a start that still makes progress from hitting TimeoutStartSec.
                systemd.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY * 1e6)}")
                next_extend = now + EXTEND_EVERY
            self._tick()
            worker.join(0.1)
        if "error" in result:
            exc = result["error"]
            if isinstance(exc, AppFailed):
                raise exc
            raise AppFailed(
                f"{stage} of {self.cfg.app} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return cast(_T, result["value"])

    def _acquire(self, inherited: sockets.Listener | None) -> sockets.Listener:
        cfg = self.cfg
        if inherited is not None:
            return inherited
        sock = sockets.bind_reuseport(cfg.host, cfg.port, backlog=cfg.backlog)
        origin = f"SO_REUSEPORT {cfg.host}:{cfg.port}"
        return sockets.Listener(sock=sock, inherited=False, origin=origin)

    def _serve(self, app: WSGIApplication, listener: sockets.Listener) -> int:
        cfg = self.cfg
        server = WaitressServer(
            app,
            listener.sock,
            inherited=listener.inherited,
            metrics=self.metrics,
            threads=cfg.threads,
            connection_limit=cfg.connection_limit,
            backlog=cfg.backlog,
        )
        self._server = server
        if self._stop.is_set():  # a signal came between warm-up and here
            server.request_drain()
        server.start_accepting()
        self.metrics.phase = Phase.READY
        status = f"serving on {listener.origin} (instance {cfg.instance}, pid {os.getpid()})"
        systemd.notify("READY=1", f"STATUS={status}")
        log.info(status)
        result = server.run(
            drain_timeout=cfg.drain_timeout,
            idle_grace=cfg.idle_grace,
            on_tick=self._tick,
            on_drain=self._on_drain,
            # wake often enough that a ping is never more than 1.5 intervals apart
            tick_every=self._watchdog_every / 2 if self._watchdog_every else 1.0,
        )
        server.close()
        self._report(result)
        if result.listener_error is not None:
            raise ListenerFailed(
                f"the main listener failed while serving ({result.listener_error}); what was "
                "open has been drained; a restart gets a fresh listener"
            )
        return 0

    def _report(self, result: DrainResult) -> None:
        """Count and log how the drain went."""
        cfg = self.cfg
        self.metrics.drain.stop()
        self.metrics.connections_cut("drain_timeout", result.cut)
        self.metrics.connections_cut("unread_request", result.cut_unread)
        if result.cut_unread:
            log.warning(
                "closed %d connection(s) with request bytes unread (the client sent more "
                "after a response that said Connection: close)",
                result.cut_unread,
            )
        phase = Phase.STOPPED if result.listener_error is None else Phase.FAILED
        if result.timed_out:
            self._phase(
                phase,
                f"drain_timeout {cfg.drain_timeout:g} s ran out: cut {result.cut} connection(s)",
            )
            log.warning("cut %d connection(s) at drain_timeout", result.cut)
        else:
            cut = (
                f"{result.cut_unread} connection(s) closed with requests unread"
                if result.cut_unread
                else "no connection cut"
            )
            self._phase(phase, f"drained in {result.seconds:.2f} s, {cut}")

    def _on_drain(self, open_connections: int, listener_error: str | None) -> None:
        self.metrics.drain.start()
        if listener_error is not None:
            # Out of ready at once: the listener refuses connections; finish what is open.
            self.metrics.phase = Phase.FAILED
            status = (
                f"main listener failed ({listener_error}): draining {open_connections} "
                f"connection(s), then exit {ListenerFailed.exit_code} for a restart"
            )
            systemd.notify("STOPPING=1", f"STATUS={status}")
            log.error(status)
            return
        self.metrics.phase = Phase.DRAINING
        status = (
            f"{self._stop_signal}: draining {open_connections} connection(s), "
            f"up to {self.cfg.drain_timeout:g} s"
        )
        systemd.notify("STOPPING=1", f"STATUS={status}")
        log.info(status)

    def _tick(self) -> None:
        # Runs in the loop (warm-up or server): the signal handlers only leave notes.
        while self._ignored:
            log.warning(
                "%s ignored (stop with SIGTERM; see README, Signals)", self._ignored.popleft()
            )
        # A frozen loop sends no WATCHDOG=1, and systemd acts.
        if self._watchdog_every is None:
            return
        now = time.monotonic()
        if now >= self._next_watchdog:
            systemd.notify("WATCHDOG=1")
            self._next_watchdog = now + self._watchdog_every

    # -- signals ------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        for sig in IGNORED_SIGNALS:
            signal.signal(sig, self._on_ignored_signal)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags and a wake-up here; the loop does the work. The one exception is the
        # forced exit, which must not wait for a loop that may be stuck.
        name = signal.Signals(signum).name
        self._signals += 1
        if self._signals > 1:
            raise ForcedExit(
                f"second stop signal ({name}) during the drain: exiting without finishing it"
            )
        self._stop_signal = name
        self._stop.set()
        if self._server is not None:
            self._server.request_drain()

    def _on_ignored_signal(self, signum: int, frame: FrameType | None) -> None:
        self._ignored.append(signal.Signals(signum).name)
        if self._server is not None:
            self._server.wake()
