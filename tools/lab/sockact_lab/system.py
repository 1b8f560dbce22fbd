"""What every part of the lab uses to touch the machine: the one command runner, the one
kill loop, and small readers of ``/proc`` (processes, mounts).

:func:`run_command` runs a command to completion (captured, or line by line to a progress
callback for long builds); :func:`kill_until_gone` SIGKILLs a set of processes until none
is left. ``lab`` (hosts), ``image`` (the image build) and ``aptproxy`` (the proxy process)
all go through them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sockact_lab.errors import LabError

Progress = Callable[[str], None]

#: lines of output kept for the error message of a streamed command
_TAIL_LINES = 10


def quiet(_msg: str) -> None:
    """A progress callback that says nothing."""
    return None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_command(
    argv: list[str],
    *,
    check: bool = True,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    where: str = "",
    output: Progress | None = None,
) -> subprocess.CompletedProcess[str]:
    """The lab's one way to run a command: no stdin, a timeout, and with ``check`` a
    :class:`LabError` naming the command, ``where`` it ran and its last line of output.

    Output is captured; with ``output``, stdout and stderr are merged and each line goes
    to ``output`` as it comes (the returned ``stdout`` then holds the last lines). Such a
    command runs in its own session, and on timeout everything in that session is killed
    (a build's children too), which a plain ``subprocess.run`` would leave running."""
    if output is None:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    else:
        proc = _run_streamed(argv, timeout=timeout, env=env, output=output)
    if check and proc.returncode != 0:
        place = f" {where}" if where else ""
        why = f"was killed after {timeout:.0f}s" if proc.returncode < 0 else "exited"
        raise LabError(
            f"lab: {shlex.join(argv)}{place} {why} {proc.returncode}: "
            f"{last_line(proc.stderr or proc.stdout)}"
        )
    return proc


def _run_streamed(
    argv: list[str], *, timeout: float, env: dict[str, str] | None, output: Progress
) -> subprocess.CompletedProcess[str]:
    tail: list[str] = []
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    ) as proc:
        sid = proc.pid

        def kill_session() -> None:
            kill_until_gone(lambda: session_pids(sid), f"session {sid}", argv[0], quiet)

        timer = threading.Timer(max(1.0, timeout), kill_session)
        timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                if line:
                    tail = [*tail[-(_TAIL_LINES - 1) :], line]
                    output(line)
            rc = proc.wait()
        except BaseException:
            kill_session()
            proc.wait()
            raise
        finally:
            timer.cancel()
    return subprocess.CompletedProcess(argv, rc, "\n".join(tail), "")


def kill_until_gone(
    list_pids: Callable[[], list[int]], where: str, who: str, say: Progress
) -> None:
    """SIGKILL every process ``list_pids`` returns until it returns none (10 s at most)."""
    deadline = time.monotonic() + 10
    while pids := list_pids():
        if time.monotonic() > deadline:
            raise LabError(f"lab: processes {pids} in {where} do not die")
        say(f"{who}: killing {len(pids)} leftover process(es) in {where}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)


# --------------------------------------------------------------------------- /proc readers


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session id) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a streamed command and its children)."""
    found = []
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat[2] == sid and stat[0] not in ("Z", "X"):
            found.append(pid)
    return found


def pids_using(path: Path) -> list[int]:
    """Processes whose root directory or command line lies in ``path`` (a killed image
    build's debootstrap, its wget and dpkg chrooted into the half-built tree)."""
    prefix = str(path).rstrip("/")
    me = os.getpid()
    found: list[int] = []
    for pid in all_pids():
        if pid == me:
            continue
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        args = cmdline(pid)
        inside = root == prefix or root.startswith(prefix + "/")
        if inside or any(a == prefix or a.startswith(prefix + "/") for a in args):
            found.append(pid)
    return found


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in our mount namespace, deepest first."""
    prefix = str(path).rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return sorted(set(found), key=len, reverse=True)


@contextlib.contextmanager
def flock(path: Path, *, waiting: str = "", say: Progress = quiet) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block; says ``waiting`` when another
    process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                say(waiting)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
