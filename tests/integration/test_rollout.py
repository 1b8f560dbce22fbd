"""``sockact rollout run`` (what ./deploy runs) against a real instance on this machine.

The "deploy" is a small script that prints what ansible-playbook prints; the load, the
progress lines, the log, the files of the run, the exit codes and the journal playbook
(ansible/journal.yml, run by real ansible-playbook over a local connection: this machine
has no api@ units, so its journal is empty) are real. The per-host table from real lab
journals is tested in tests/unit/test_journal.py, and end to end by ./deploy.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from sockact import errors
from tests.integration.support import PYTHON, ROOT, SOCKACT, ServeFactory

FAKE_DEPLOY = """
import sys, time
print("PLAY [Switch blue/green, host by host] ****", flush=True)
print("TASK [sockact : Start the instances of green] ****", flush=True)
time.sleep(1.2)
print("changed: [local]", flush=True)
print("TASK [sockact : Stop the old color] ****", flush=True)
time.sleep(1.2)
sys.exit(int(sys.argv[1]))
"""


def rollout(
    tmp_path: Path, port: int, rc: int, *extra: str, pythonpath: str = ""
) -> subprocess.CompletedProcess[str]:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        f"[api]\nlocal ansible_host=127.0.0.1 ansible_connection=local "
        f"ansible_python_interpreter={PYTHON}\n"
    )
    argv = [
        SOCKACT,
        "rollout",
        "run",
        "--inventory",
        str(inventory),
        "--port",
        str(port),
        "--out",
        str(tmp_path / "run"),
        "--label",
        "deploy v2",
        "--rate",
        "50%",
        "--capacity-seconds",
        "0.5",
        "--every",
        "0.5",
        "--tail",
        "0.2",
        "--journal-playbook",
        str(ROOT / "ansible" / "journal.yml"),
        *extra,
        "--",
        PYTHON,
        "-c",
        FAKE_DEPLOY,
        str(rc),
    ]
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible" / "ansible.cfg"),
        PATH=f"{Path(SOCKACT).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def test_a_deploy_under_load_shows_progress_and_a_summary(
    serve: ServeFactory, tmp_path: Path
) -> None:
    sp = serve.start(warmup=0.1)
    sp.wait_ready()
    proc = rollout(tmp_path, sp.port, 0)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    run = tmp_path / "run"
    # progress lines: time, play, hosts, task, requests, failures, the version answering
    lines = [x for x in out.splitlines() if "| p99" in x]
    assert len(lines) >= 2, out
    assert any("Switch: Start the instances of green" in x for x in lines), out
    assert any("Switch [local]: Stop the old color" in x for x in lines), out
    assert all("0 failed" in x and "answered 1.0.0 100%" in x for x in lines[1:]), out
    # the command's own output is in the log, not on the terminal
    log = (run / "ansible.log").read_text()
    assert "TASK [sockact : Stop the old color]" in log
    assert "TASK [sockact : Stop the old color]" not in out
    # the journal playbook ran for real (and found no api@ units here)
    assert "Fetch the instances' journal and the deploy record" in log
    assert (run / "hosts" / "local.journal.jsonl").exists()
    report = json.loads((run / "probe.json").read_text())
    assert report["mode"] == "open" and report["total"] > 0 and report["failed"] == 0
    assert report["capacity"]["fraction"] == 0.5
    summary = (run / "summary.txt").read_text()
    assert summary.strip() == out[out.index("deploy v2: 1 host(s)") :].strip()
    assert "local" in summary and "no switch" in summary
    assert f"Ansible's output: {run / 'ansible.log'}" in summary
    assert (run / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"timeline: {run / 'timeline.png'}" in summary
    # the summary again, from the files
    again = subprocess.run(
        [SOCKACT, "rollout", "report", str(run), "--no-png"], capture_output=True, text=True
    )
    assert again.returncode == 0 and "no switch" in again.stdout, again.stderr


def test_a_failed_command_is_exit_10_with_its_summary(serve: ServeFactory, tmp_path: Path) -> None:
    sp = serve.start(warmup=0.1)
    sp.wait_ready()
    proc = rollout(tmp_path, sp.port, 2, "--journal-playbook", str(tmp_path / "none.yml"))
    assert proc.returncode == errors.EXIT_COMMAND_FAILED, proc.stdout + proc.stderr
    assert "deploy v2: FAILED (exit 2)" in proc.stdout
    assert "per-host table: skipped (no journal playbook" in proc.stdout


def test_without_matplotlib_the_png_is_skipped_and_the_run_succeeds(
    serve: ServeFactory, tmp_path: Path
) -> None:
    """Plotting is an optional extra: a Python without matplotlib still deploys."""
    sp = serve.start(warmup=0.1)
    sp.wait_ready()
    blocker = tmp_path / "nomatplotlib"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('not installed here')\n")
    none = str(tmp_path / "none.yml")
    proc = rollout(tmp_path, sp.port, 0, "--journal-playbook", none, pythonpath=str(blocker))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "timeline: skipped: matplotlib is not installed: pip install 'sockact[plot]'" in (
        proc.stdout
    )
    assert not (tmp_path / "run" / "timeline.png").exists()


def test_an_earlier_runs_host_files_are_not_shown_as_this_ones(
    serve: ServeFactory, tmp_path: Path
) -> None:
    """The same --out again, and this time no journal is read: the per-host table is
    skipped, not made from the first run's files."""
    sp = serve.start(warmup=0.1)
    sp.wait_ready()
    hosts = tmp_path / "run" / "hosts"
    hosts.mkdir(parents=True)
    data = ROOT / "tests" / "unit" / "data" / "deploy"
    (hosts / "local.journal.jsonl").write_bytes((data / "sockact-1.journal.jsonl").read_bytes())
    (hosts / "local.deploy.json").write_bytes((data / "sockact-1.deploy.json").read_bytes())
    (tmp_path / "run" / "timeline.png").write_bytes(b"an earlier run's")
    proc = rollout(tmp_path, sp.port, 0, "--journal-playbook", str(tmp_path / "none.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "per-host table: skipped (no journal playbook" in proc.stdout
    assert "v1 -> v2" not in proc.stdout
    assert list(hosts.iterdir()) == []
    # drawn again (matplotlib is there), not the earlier one
    assert (tmp_path / "run" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
