"""./deploy end to end, as a new user runs it: 2 fresh lab hosts, provision, v1, then v2
under the default open-loop load; the progress lines, the per-host table read from the
hosts' journals, the PNG timeline and Ansible's log must all be there, and no request may
fail. About 2 minutes on 2 quiet cores (the first run on a machine builds the image)."""

from __future__ import annotations

import itertools
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from sockact_lab.image import Image
from tests.ansible.playbooks import BIN, REPO, say
from tests.lab_fixtures import cannot_run, lab_skip_reason

pytestmark = [pytest.mark.system, pytest.mark.ansible, pytest.mark.root, pytest.mark.slow]


def test_deploy_shows_progress_a_per_host_table_and_a_timeline(
    lab_image: Image, tmp_path: Path
) -> None:
    reason = lab_skip_reason()
    if reason:
        cannot_run(reason)
    if not (BIN / "ansible-playbook").exists():
        cannot_run(f"ansible-playbook not installed in {BIN}")
    lab_dir = Path(tempfile.mkdtemp(prefix="sockact-lab-deploy-", dir="/var/tmp"))
    out = tmp_path / "run"
    try:
        proc = subprocess.run(
            [str(REPO / "deploy"), "--lab-dir", str(lab_dir), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    finally:
        subprocess.run(
            [str(BIN / "sockact-lab"), "down", "--dir", str(lab_dir), "--purge"],
            capture_output=True,
            check=False,
        )
    text = proc.stdout
    say(f"./deploy exit {proc.returncode}:\n{text}\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, text[-6000:] + proc.stderr[-3000:]
    # progress under load: the play, host and task, requests, no failure, the versions
    under_load = [x for x in text.splitlines() if "| p99" in x]
    assert len(under_load) >= 3, text
    assert any(re.search(r"Switch \[sockact-\d\]: ", x) for x in under_load), text
    assert all(" 0 failed " in x for x in under_load), text
    assert any("2.0.0" in x for x in under_load), text
    # Ansible's own output went to the log, not here
    log = out / "ansible.log"
    assert "PLAY RECAP" in log.read_text() and "PLAY RECAP" not in text
    # the per-host table, from each host's journal
    rows = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] in ("sockact-1", "sockact-2") and "->" in cells:
            rows[cells[0]] = cells
    assert sorted(rows) == ["sockact-1", "sockact-2"], text
    for cells in rows.values():
        assert cells[1:4] == ["v1", "->", "v2"], cells
        assert cells[-1] == "ok" and cells[-2] == "0" and cells[-3] == "0", cells  # failed, cut
        seconds = [float(c) for c, unit in itertools.pairwise(cells) if unit == "s"]
        warmup, start_to_ready, switch, drain = seconds
        assert 0 < warmup <= start_to_ready <= switch and drain > 0, cells
    summary = (out / "summary.txt").read_text()
    assert summary.strip() in text
    assert f"timeline: {out / 'timeline.png'}" in summary
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Ansible's output: {log}" in summary
    assert re.search(r"== took \d+ min \d+ s: boot", text), text
    assert text.rstrip().endswith("ok: v1 v2 deployed, no failed request")
