"""sockact timeline: a PNG from a probe JSON recorded here against real servers."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from sockact.cli import main
from sockact.controller.probe import Probe
from sockact.controller.timeline import Event, events_from, load_events, render_timeline
from sockact.errors import BadInput, MissingExtra
from tests.unit.test_probe import MakeServer, Server, make_server, response, serve_ok

__all__ = ["make_server"]  # the fixture, shared with test_probe

V1 = (0x44, 0x77, 0xAA)  # the first version's color
V2 = (0x66, 0xCC, 0xEE)
HTTP_5XX = (0xB2, 0x18, 0x2B)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height, after checking the signature, IHDR and IEND chunks and CRCs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h = struct.unpack(">II", chunks[0][1][:8])
    return w, h


def colors_in(path: Path) -> set[tuple[int, int, int]]:
    import matplotlib.image
    import numpy as np

    img = matplotlib.image.imread(str(path))
    rgb = np.rint(img[..., :3].reshape(-1, 3) * 255).astype(int)
    return {(int(r), int(g), int(b)) for r, g, b in np.unique(rgb, axis=0)}


@pytest.fixture
def recorded(make_server: MakeServer, tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """A probe JSON of an open-loop run over a v1 and a v2 server and one answering 503,
    and an events file in both time forms."""
    v1 = make_server(serve_ok(response(body=b'{"instance": 1, "version": "v1"}')))
    v2 = make_server(serve_ok(response(body=b'{"instance": 2, "version": "v2"}')))
    bad = make_server(serve_ok(response("503 Service Unavailable", b"no")))
    servers: list[Server] = [v1, v2, bad]
    with Probe([s.target for s in servers], rate=300, max_duration=0.6) as p:
        assert p.wait(10)
    assert p.report is not None
    doc = p.report.to_dict()
    report = tmp_path / "probe.json"
    report.write_text(json.dumps(doc))
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            json.dumps(e)
            for e in (
                {"t": 0.2, "host": "h1", "label": "new color started"},
                {"t": 0.5, "host": "h1", "label": "READY"},
                {"time": doc["started_at"] + 0.6, "host": "h2", "label": "old color stopping"},
            )
        )
    )
    return report, events, doc


def test_cli_writes_a_png_with_each_version_and_the_failures(
    recorded: tuple[Path, Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, events, doc = recorded
    assert doc["failures"]["http_5xx"] > 0 and {s["version"] for s in doc["samples"]} == {
        "v1",
        "v2",
    }
    out = tmp_path / "sub" / "timeline.png"
    assert main(["timeline", str(report), "--events", str(events), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    w, h = png_size(out.read_bytes())
    assert w >= 800 and h >= 600
    found = colors_in(out)
    assert {V1, V2, HTTP_5XX} <= found  # both versions stacked, failures drawn


def test_events_align_on_the_report_start(recorded: tuple[Path, Path, dict[str, Any]]) -> None:
    _, events, doc = recorded
    got = load_events(events, doc["started_at"])
    assert [e.host for e in got] == ["h1", "h1", "h2"]
    assert got[2].t == pytest.approx(0.6, abs=1e-3)
    assert got[0] == Event(0.2, "h1", "new color started")
    span = events_from([{"t": 1, "host": "h", "label": "draining", "duration": 2.5}], 0.0)
    assert span == [Event(1.0, "h", "draining", 2.5)]
    for bad in (
        [{"host": "h"}],
        [{"t": 1, "host": 3, "label": "x"}],
        ["x"],
        [{"t": 1, "host": "h", "label": "x", "duration": -1}],
        [{"t": 1, "host": "h", "label": "x", "duration": "2"}],
    ):
        with pytest.raises(BadInput):
            events_from(bad, 0.0)  # type: ignore[arg-type]


def test_closed_loop_report_and_no_events(make_server: MakeServer, tmp_path: Path) -> None:
    srv = make_server(serve_ok())
    with Probe([srv.target], keepalive_clients=1, new_conn_clients=1, max_duration=0.3) as p:
        assert p.wait(5)
    assert p.report is not None
    out = render_timeline(p.report.to_dict(), [], tmp_path / "closed.png")
    png_size(out.read_bytes())
    out = render_timeline(p.report.to_dict(), [(0.1, "h1", "READY")], tmp_path / "tuples.png")
    png_size(out.read_bytes())
    spans = [Event(0.05, "h1", "warming", 0.2), Event(0.25, "h1", "READY")]
    out = render_timeline(p.report.to_dict(), spans, tmp_path / "spans.png")
    assert (0xEE, 0x77, 0x33) in colors_in(out)  # the first label's color, its point and bar


def test_bad_report_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"ok": 1}')
    assert main(["timeline", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a probe report" in capsys.readouterr().err


def test_missing_matplotlib_is_one_clear_line(
    recorded: tuple[Path, Path, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    report, _, doc = recorded
    with pytest.raises(MissingExtra, match=r"pip install 'sockact\[plot\]'"):
        render_timeline(doc, [], tmp_path / "never.png")
    assert main(["timeline", str(report), "--out", str(tmp_path / "never.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib is not installed" in err[0]
    assert not (tmp_path / "never.png").exists()


def test_the_command_line_does_not_import_matplotlib() -> None:
    """The runtime wheel must not need the plot extra: building every subcommand (what
    ``sockact serve`` does first) leaves matplotlib unimported."""
    code = (
        "import sys; from sockact.cli import build_parser; build_parser(); "
        "import sockact.runtime.commands, sockact.controller.timeline; "
        "sys.exit(1 if 'matplotlib' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
