"""The one table of settings: what serve and units render accept, and ``sockact settings``."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sockact import cli, settings
from sockact.controller.units import UnitOptions, render_units
from sockact.runtime.config import SETTINGS as SERVE_KEYS
from sockact.runtime.config import Config

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def test_config_takes_every_default_from_the_table() -> None:
    names = [f.name for f in dataclasses.fields(Config) if f.name != "sources"]
    assert names == list(settings.SERVE) == list(SERVE_KEYS)
    for f in dataclasses.fields(Config):
        if f.name in ("app", "instance", "sources"):
            continue
        assert f.default == settings.SERVE[f.name].default, f.name


def test_unit_options_take_every_default_from_the_table() -> None:
    names = [f.name for f in dataclasses.fields(UnitOptions)]
    assert sorted(names) == sorted(settings.RENDER)
    for f in dataclasses.fields(UnitOptions):
        assert f.default == settings.RENDER[f.name].default, f.name


def test_shared_settings_are_one_entry() -> None:
    shared = {name for name in settings.SERVE if name in settings.RENDER}
    # listen means two things (serve: auto/reuseport/inherit; render: reuseport/socket)
    assert shared == {"host", "port", "backlog", "drain_timeout", "listen"}
    for name in shared - {"listen"}:
        assert settings.SERVE[name] is settings.RENDER[name]


def test_help_text_is_generated_from_the_table() -> None:
    port = settings.SERVE["port"]
    assert port.help_text("serve") == "port of the main listener (1 to 65535; default 8080)"
    drain = settings.RENDER["drain_timeout"]
    assert "TimeoutStopSec=" in drain.help_text("render")
    assert "TimeoutStopSec=" not in drain.help_text("serve")
    assert "(0.1 to 86400; default 20)" in drain.help_text("render")
    assert settings.SERVE["app"].help_text("serve").endswith("(required)")


def test_every_serve_flag_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for setting in settings.SERVE.values():
        if not setting.required:
            assert f"default {setting.default_shown()})" in text, setting.name


def test_settings_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["settings"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"serve", "render"}
    assert set(doc["serve"]) == set(settings.SERVE)
    assert set(doc["render"]) == set(settings.RENDER)
    drain = doc["render"]["drain_timeout"]
    assert drain == doc["serve"]["drain_timeout"]
    assert (drain["type"], drain["default"], drain["min"], drain["max"]) == (
        "float",
        20.0,
        0.1,
        86400,
    )
    assert drain["used_by"] == ["serve", "render"] and drain["env"] == "SOCKACT_DRAIN_TIMEOUT"
    watchdog = doc["render"]["watchdog_sec"]
    assert (watchdog["type"], watchdog["min"], watchdog["max"], watchdog["env"]) == (
        "int",
        1,
        3600,
        None,
    )
    assert doc["render"]["listen"]["choices"] == ["reuseport", "socket"]
    assert doc["serve"]["listen"]["choices"] == ["auto", "reuseport", "inherit"]
    assert doc["serve"]["app"]["required"] is True and doc["serve"]["app"]["default"] is None
    assert doc["serve"]["admin_port"]["default_text"] == "9000 + instance"
    for side in doc.values():
        for entry in side.values():
            assert entry["type"] in ("int", "float", "bool", "str")
            if entry["min"] is not None and entry["default"] not in (None, 0):
                assert entry["min"] <= entry["default"] <= entry["max"], entry


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--start-timeout", "1e23"),
        ("--start-timeout", "100000000000000000000000"),
        ("--start-timeout", "0"),
        ("--watchdog-sec", "1e23"),
        ("--watchdog-sec", "18446744073709"),
        ("--drain-timeout", "1e-300"),
        ("--drain-timeout", "1e23"),
        ("--drain-timeout", "nan"),
        ("--limit-nofile", "1048577"),
        ("--port", "\u0668\u0660"),
        ("--backlog", "0"),
    ],
)
def test_render_refuses_values_systemd_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    out = tmp_path / "out"
    assert cli.main(["units", "render", "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err.splitlines()
    option = flag[2:].replace("-", "_")
    assert err[1].startswith(f"sockact: error: {option}={value!r}: "), err
    assert len(err) == 2 and not out.exists()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("mode", ["reuseport", "socket"])
def test_systemd_takes_the_extremes_of_every_range(tmp_path: Path, mode: str) -> None:
    """The largest and smallest values the table allows are parsed by systemd, not ignored."""
    names4 = ("start_timeout", "watchdog_sec", "limit_nofile", "backlog")
    high: dict[str, Any] = {n: settings.RENDER[n].high for n in names4}
    low: dict[str, Any] = {n: int(settings.RENDER[n].low or 0) for n in names4}
    opts = [
        UnitOptions(listen=mode, **high, drain_timeout=86400.0),
        UnitOptions(listen=mode, **low, drain_timeout=0.1),
    ]
    for i, opt in enumerate(opts):
        unit_dir = tmp_path / str(i)
        unit_dir.mkdir()
        names = []
        for name, content in render_units(opt).items():
            if name.endswith(".conf"):
                continue
            (unit_dir / name).write_text(content, encoding="utf-8")
            names.append(str(unit_dir / name))
        # systemd warns "Failed to parse ..., ignoring" for what it drops; any warning fails
        result = subprocess.run(
            [str(SYSTEMD_ANALYZE), "verify", "--man=no", *names],
            capture_output=True,
            text=True,
            check=False,
        )
        warnings = [
            line
            for line in result.stderr.splitlines()
            if re.search(r"Failed to parse|ignoring|Unknown", line)
        ]
        assert not warnings, result.stderr
