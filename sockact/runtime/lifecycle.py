"""One instance's life: starting -> warming -> listening -> ready -> draining -> stopped.

This is the order that makes a handover lossless (docs/design.md): the admin server answers
first, the app warms up while the old instance keeps all the traffic, the listener opens
only when the app is warm, and READY=1 follows, so ``systemctl start api@2`` returns
exactly when api@2 serves.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

from sockact.errors import AddressError, AppFailed, ForcedExit
from sockact.runtime import sockets, systemd
from sockact.runtime.admin import AdminServer, wsgi_check
from sockact.runtime.config import Config
from sockact.runtime.metrics import Metrics
from sockact.runtime.server import WaitressServer, WSGIApp

log = logging.getLogger("sockact")

#: how often EXTEND_TIMEOUT_USEC is sent during a long warm-up, and how far it reaches
EXTEND_EVERY = 5.0
EXTEND_BY = 15.0


class _Fields(logging.Filter):
    """Adds INSTANCE and PHASE to every record (journald fields, and the stderr prefix)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def filter(self, record: logging.LogRecord) -> bool:
        record.INSTANCE = str(self.metrics.instance)
        record.PHASE = self.metrics.phase
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
        self._next_watchdog = 0.0
        self._watchdog_every = systemd.watchdog_interval()

    # -- phases -------------------------------------------------------------------------

    def _phase(self, phase: str, status: str) -> None:
        self.metrics.phase = phase
        systemd.notify(f"STATUS={status}")
        log.info(status)

    def run(self) -> int:
        """The whole life; returns the exit code (0 also after a drain that cut)."""
        setup_logging(self.cfg, self.metrics)
        cfg = self.cfg
        admin = AdminServer(cfg.admin_host, cfg.admin_port, self.metrics)
        try:
            admin.start()
            self._install_signals()
            self._phase("starting", f"admin server on http://{admin.address}")
            inherited = self._preflight()
            app = self._warm_up()
            if app is None:
                self._phase("stopped", "stopped during warm-up")
                return 0
            admin.set_check(wsgi_check(app, cfg.check_path))
            listener = self._acquire(inherited)
            return self._serve(app, listener)
        except BaseException:
            self.metrics.phase = "failed"
            raise
        finally:
            admin.close()

    def _preflight(self) -> sockets.Listener | None:
        """Find the inherited socket or check that the port can be shared, before warm-up."""
        cfg = self.cfg
        inherited = None
        if cfg.listen in ("auto", "inherit"):
            sock = sockets.find_inherited(cfg.socket_name)
            if sock is not None:
                name = sock.getsockname()
                inherited = sockets.Listener(sock, True, f"inherited from systemd {name}")
            elif cfg.listen == "inherit":
                raise AddressError(
                    "listen = inherit but systemd passed no socket (LISTEN_FDS/LISTEN_PID "
                    "unset or not for this process); check Sockets= in the unit"
                )
        if inherited is None:
            self._check_migrate_req()
            sockets.bind_reuseport(cfg.host, cfg.port, backlog=None).close()
        return inherited

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

    def _warm_up(self) -> WSGIApp | None:
        """Import and call the factory, then the warm-up, within warmup_timeout."""
        cfg = self.cfg
        self._phase("warming", f"warming up {cfg.app}")
        os.environ["SOCKACT_INSTANCE"] = str(cfg.instance)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                app = _import(cfg.app, "app factory")()
                if app is None:
                    raise AppFailed(f"app factory {cfg.app} returned None")
                if cfg.warmup:
                    _import(cfg.warmup, "warm-up")(app)
                result["app"] = app
            except BaseException as exc:
                result["error"] = exc

        worker = threading.Thread(target=work, name="warmup", daemon=True)
        began = time.monotonic()
        worker.start()
        next_extend = began
        while worker.is_alive():
            now = time.monotonic()
            if self._stop.is_set():
                return None
            if now - began >= cfg.warmup_timeout:
                raise AppFailed(
                    f"warm-up did not finish within warmup_timeout = {cfg.warmup_timeout:g} s"
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
            raise AppFailed(f"warm-up of {cfg.app} failed: {type(exc).__name__}: {exc}") from exc
        log.info("warm-up took %.2f s", time.monotonic() - began)
        return cast(WSGIApp, result["app"])

    def _acquire(self, inherited: sockets.Listener | None) -> sockets.Listener:
        cfg = self.cfg
        if inherited is not None:
            return inherited
        sock = sockets.bind_reuseport(cfg.host, cfg.port, backlog=cfg.backlog)
        return sockets.Listener(sock, False, f"SO_REUSEPORT {cfg.host}:{cfg.port}")

    def _serve(self, app: WSGIApp, listener: sockets.Listener) -> int:
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
        self.metrics.phase = "ready"
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
        if result.timed_out:
            self._phase(
                "stopped",
                f"drain_timeout {cfg.drain_timeout:g} s ran out: cut {result.cut} connection(s)",
            )
            log.warning("cut %d connection(s) at drain_timeout", result.cut)
        else:
            self._phase("stopped", f"drained in {result.seconds:.2f} s, no connection cut")
        return 0

    def _on_drain(self, open_connections: int) -> None:
        self.metrics.phase = "draining"
        status = f"draining {open_connections} connection(s), up to {self.cfg.drain_timeout:g} s"
        systemd.notify("STOPPING=1", f"STATUS={status}")
        log.info(status)

    def _tick(self) -> None:
        # Runs in the server loop: a frozen loop sends no WATCHDOG=1 and systemd acts.
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
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags and a wake-up here; the loop thread does the work.
        self._signals += 1
        if self._signals > 1:
            raise ForcedExit(f"second {signal.Signals(signum).name}: stopping without drain")
        self._stop.set()
        if self._server is not None:
            self._server.request_drain()
