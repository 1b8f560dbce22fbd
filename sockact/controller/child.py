"""Run a command (a deploy) under ``sockact rollout`` without ever leaving it unseen.

The command runs in a session (process group) of its own, its output (stdout and stderr)
going line by line to a log and to a callback. What would end ``sockact rollout`` while
the command runs is turned into a stop of the command first, then rollout's own exit:

* a stop signal to rollout: SIGINT (Ctrl-C), SIGTERM, SIGHUP (the terminal went away);
* its stdout's reader went away (``sockact rollout run ... | head``): the caller notes it
  with :meth:`Stops.note_broken_pipe`.

The command's process group gets SIGINT for SIGINT and SIGTERM for the others (Ansible
passes SIGINT and SIGTERM on to its workers, which run in sessions of their own; it does
not handle SIGHUP), then ``GRACE_S`` to end; after that, or at a second stop, SIGKILL.
Once the command ended after a stop, or after a failure of rollout's own (its progress
line could not be written), what is left of its process group gets SIGKILL too.

Signal handlers only note the signal; the loop of :func:`run_command` acts on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import IO, Final

#: the signals that stop a rollout (and, passed on, its command)
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: how long the command has to end after the signal was passed on, before SIGKILL
GRACE_S: Final = 30.0
#: a stop that is not a signal: stdout's reader went away
BROKEN_PIPE: Final = int(signal.SIGPIPE)
_POLL_S: Final = 0.1


class Stops:
    """The stops seen so far (signal numbers, :data:`BROKEN_PIPE`), noted by signal
    handlers installed while it is entered (in the main thread only: elsewhere Python
    has no signal handlers)."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self._old: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def __enter__(self) -> Stops:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        self.seen.append(signum)

    def note_broken_pipe(self) -> None:
        if BROKEN_PIPE not in self.seen:
            self.seen.append(BROKEN_PIPE)

    @property
    def stopped(self) -> bool:
        return bool(self.seen)

    @property
    def broken_pipe(self) -> bool:
        return BROKEN_PIPE in self.seen

    @property
    def reason(self) -> str:
        """The first stop: "SIGTERM", "broken pipe" ("" when none)."""
        if not self.seen:
            return ""
        first = self.seen[0]
        return "broken pipe" if first == BROKEN_PIPE else signal.Signals(first).name

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a stop comes."""
        end = time.monotonic() + seconds
        while not self.stopped and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, _POLL_S))


def _pass_on(stop: int) -> int:
    """The signal the command's process group gets for the first stop."""
    return signal.SIGINT if stop == signal.SIGINT else signal.SIGTERM


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class CommandRun:
    """What :func:`run_command` saw: the exit code, the stops passed on, a log problem."""

    def __init__(self) -> None:
        self.rc: int | None = None
        #: the stops passed on to the command (the first one's signal, then SIGKILL)
        self.stopped_by: str = ""
        #: the first error writing the log (the output was still read, so the command
        #: never blocks on a full pipe)
        self.log_error: str = ""


def _pump(stream: IO[str], log: IO[str], feed: Callable[[str], None], run: CommandRun) -> None:
    for line in stream:
        if not run.log_error:
            try:
                log.write(line)
                log.flush()
            except (OSError, ValueError) as exc:
                run.log_error = f"{getattr(log, 'name', 'log')}: {exc}"
        feed(line)


def run_command(
    argv: Sequence[str],
    log: IO[str],
    stops: Stops,
    feed: Callable[[str], None] = lambda _line: None,
    tick: Callable[[], None] | None = None,
    every: float = 0.0,
) -> CommandRun:
    """Run ``argv`` in a session of its own, its output to ``log`` and ``feed``; call
    ``tick`` every ``every`` seconds while it runs and nothing stopped; pass on
    ``stops`` (see the module's doc). Raises :class:`OSError` if it cannot start."""
    run = CommandRun()
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    assert proc.stdout is not None
    pump = threading.Thread(target=_pump, args=(proc.stdout, log, feed, run), daemon=True)
    pump.start()
    try:
        _supervise(proc, stops, run, tick, every)
    except BaseException:  # a tick failed: the command does not outlive rollout
        _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while not _exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        # the leader is not reaped yet, so its group's id is still ours to kill
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    run.rc = proc.wait()
    pump.join(5)
    return run


def _exited(pid: int) -> bool:
    """True once ``pid`` (a child) exited; it stays a zombie until waited for, so its
    process group's id cannot be reused meanwhile."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _supervise(
    proc: subprocess.Popen[str],
    stops: Stops,
    run: CommandRun,
    tick: Callable[[], None] | None,
    every: float,
) -> None:
    """Until ``proc`` exits: pass ``stops`` on to it, call ``tick``."""
    passed_on = 0
    kill_at: float | None = None
    next_tick = time.monotonic() + every
    while not _exited(proc.pid):
        now = time.monotonic()
        if len(stops.seen) > passed_on:
            if passed_on == 0:
                sig = _pass_on(stops.seen[0])
                kill_at = now + GRACE_S
            else:  # a second stop: now
                sig = signal.SIGKILL
            run.stopped_by += ("" if not run.stopped_by else ", then ") + signal.Signals(sig).name
            _killpg(proc.pid, sig)
            passed_on = len(stops.seen)
        elif kill_at is not None and now >= kill_at:
            run.stopped_by += f", then SIGKILL after {GRACE_S:g} s"
            _killpg(proc.pid, signal.SIGKILL)
            kill_at = None
        elif tick is not None and not stops.stopped and now >= next_tick:
            next_tick += every
            tick()
        time.sleep(_POLL_S)
    if stops.stopped:  # what it left in its process group goes with it
        _killpg(proc.pid, signal.SIGKILL)
