"""``sockact rollout run`` never leaves its command running unseen.

A stop signal to rollout (SIGINT, SIGTERM, SIGHUP) or its stdout's reader going away
(``| head``) stops the command's process group first, waits for it, then exits 130 or
141. The command here is a real process (a Python sleeper, with a child of its own) that
records the signal it got; no load (``--rate none``), so no lab and no instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sockact import errors
from tests.integration.support import PYTHON, ROOT, SOCKACT, ServeFactory, alive

#: the command: records its pid and its child's, then the first stop signal it gets;
#: with "stubborn" it ignores SIGTERM (only SIGKILL ends it)
SLEEPER = """
import os, signal, subprocess, sys, time
d, stubborn = sys.argv[1], sys.argv[2] == "stubborn"
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def got(signum, frame):
    with open(os.path.join(d, "signal"), "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if not stubborn:
        sys.exit(3)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, got)
with open(os.path.join(d, "pids.tmp"), "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.rename(os.path.join(d, "pids.tmp"), os.path.join(d, "pids"))
print("TASK [sockact : Switch] ****", flush=True)
while True:
    time.sleep(0.05)
"""


@dataclass
class Rollout:
    proc: subprocess.Popen[str]
    run: Path
    pids: tuple[int, int]  # the sleeper's and its child's

    def signals(self) -> list[str]:
        path = self.run / "signal"
        return path.read_text().split() if path.exists() else []


@contextlib.contextmanager
def rollout(
    tmp_path: Path, *, stubborn: bool = False, every: str = "5", load: tuple[str, ...] = ()
) -> Iterator[Rollout]:
    """``sockact rollout run --rate none -- SLEEPER`` (or with the ``load`` flags instead
    of ``--rate none``) started, the sleeper up; at the end every process it made is
    gone, killed by pid if the test failed."""
    run = tmp_path / "run"
    run.mkdir()
    argv = [SOCKACT, "rollout", "run", *(load or ("--rate", "none"))]
    argv += ["--every", every, "--out", str(run)]
    argv += ["--", PYTHON, "-c", SLEEPER, str(run), "stubborn" if stubborn else "plain"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pids: tuple[int, int] = (0, 0)
    try:
        deadline = time.monotonic() + 60
        while not (run / "pids").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        a, b = (run / "pids").read_text().split()
        pids = (int(a), int(b))
        yield Rollout(proc, run, pids)
    finally:
        for pid in (proc.pid, *pids):
            if pid and alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)


@pytest.mark.parametrize(
    ("sent", "passed_on"),
    [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGTERM")],
)
def test_a_stop_signal_stops_the_command_first_then_exits_130(
    tmp_path: Path, sent: signal.Signals, passed_on: str
) -> None:
    with rollout(tmp_path) as r:
        os.kill(r.proc.pid, sent)
        out, err = r.proc.communicate(timeout=60)
        assert r.proc.returncode == errors.EXIT_FORCED, out + err
        # the command got the signal, and nothing of its process group is left
        assert r.signals() == [passed_on]
        assert not alive(r.pids[0]) and not alive(r.pids[1])
        assert f"{sent.name}: stopped the command ({passed_on})" in out
        assert "FAILED (exit 3)" in out
        assert "Traceback" not in err, err


def test_a_second_stop_kills_a_command_that_ignores_the_first(tmp_path: Path) -> None:
    with rollout(tmp_path, stubborn=True) as r:
        os.kill(r.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not r.signals():  # the command got the first one (and ignores it)
            assert time.monotonic() < deadline, "the SIGTERM was not passed on"
            time.sleep(0.05)
        assert alive(r.pids[0])
        os.kill(r.proc.pid, signal.SIGINT)
        out, err = r.proc.communicate(timeout=25)  # well before the 30 s grace ran out
        assert r.proc.returncode == errors.EXIT_FORCED, out + err
        assert "stopped the command (SIGTERM, then SIGKILL)" in out
        assert not alive(r.pids[0]) and not alive(r.pids[1])


def test_stdout_closed_by_its_reader_stops_the_command_and_exits_141(tmp_path: Path) -> None:
    """``sockact rollout run ... | head -1``: the next progress line finds no reader."""
    with rollout(tmp_path, every="0.2") as r:
        assert r.proc.stdout is not None
        r.proc.stdout.readline()
        r.proc.stdout.close()
        r.proc.wait(timeout=60)
        assert r.proc.returncode == errors.EXIT_BROKEN_PIPE
        assert r.signals() == ["SIGTERM"]
        assert not alive(r.pids[0]) and not alive(r.pids[1])
        assert r.proc.stderr is not None
        assert "Traceback" not in r.proc.stderr.read()
        meta = (r.run / "rollout.json").read_text()
        assert '"interrupted": "broken pipe"' in meta


def test_a_stop_under_load_stops_the_load_and_writes_the_run_without_the_journals(
    serve: ServeFactory, tmp_path: Path
) -> None:
    """With load: the command is stopped, the probe stops and its report is written, no
    remote command runs after the stop (the journal playbook is not run), exit 130."""
    sp = serve.start(warmup=0.1)
    sp.wait_ready()
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[api]\nlocal ansible_host=127.0.0.1 ansible_connection=local\n")
    load: tuple[str, ...] = ("--inventory", str(inventory), "--port", str(sp.port), "--rate", "50")
    load += ("--journal-playbook", str(ROOT / "ansible" / "journal.yml"))
    with rollout(tmp_path, load=load) as r:
        time.sleep(0.5)  # some load on the instance
        os.kill(r.proc.pid, signal.SIGTERM)
        out, err = r.proc.communicate(timeout=120)
        assert r.proc.returncode == errors.EXIT_FORCED, out + err
        assert r.signals() == ["SIGTERM"]
        assert not alive(r.pids[0]) and not alive(r.pids[1])
        meta = json.loads((r.run / "rollout.json").read_text())
        assert meta["interrupted"] == "SIGTERM"
        assert meta["journal"] == {"ok": False, "why": "interrupted (SIGTERM)"}
        assert json.loads((r.run / "probe.json").read_text())["total"] > 0
        assert "per-host table: skipped (interrupted (SIGTERM))" in out
        assert "the hosts' journals" not in (r.run / "ansible.log").read_text()
        assert not (r.run / "timeline.png").exists()
