"""check_status: which statuses the health gate accepts, parsed strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockact import settings
from sockact.errors import BadInput
from sockact.runtime import config

APP = "sockact_demo:create_app"


def load(check_status: str | None = None) -> config.Config:
    flags = {"app": APP, "instance": "1", "check_status": check_status}
    return config.load(None, env={}, flags=flags)


def test_default_is_anything_below_500() -> None:
    cfg = load()
    assert cfg.check_status == "100-499"
    assert settings.accepts_status(cfg.check_status, 404)
    assert settings.accepts_status(cfg.check_status, 200)
    assert not settings.accepts_status(cfg.check_status, 500)
    assert not settings.accepts_status(cfg.check_status, 503)


@pytest.mark.parametrize(
    ("given", "normalized"),
    [("200-399, 404", "200-399,404"), ("200", "200"), ("500-599", "500-599")],
)
def test_codes_and_ranges(given: str, normalized: str) -> None:
    assert load(given).check_status == normalized


def test_toml_integer(tmp_path: Path) -> None:
    path = tmp_path / "api.toml"
    path.write_text(f'app = "{APP}"\ninstance = 1\ncheck_status = 204\n')
    assert config.load(path, env={}).check_status == "204"


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("2xx", "'2xx' is not a status"),
        ("600", "'600' is not a status"),
        ("99", "'99' is not a status"),
        ("399-200", "'399-200': the range is reversed"),
        ("200,,404", "'' is not a status"),
        ("200-", "'200-' is not a status"),
        ("\u0662\u0660\u0660", "is not a status"),  # Arabic-Indic digits are not a status
        ("", "'' is not a status"),
    ],
)
def test_malformed_is_one_line_exit_2(given: str, problem: str) -> None:
    with pytest.raises(BadInput) as err:
        load(given)
    assert err.value.exit_code == 2
    (line,) = err.value.details
    assert line.startswith(f"check_status = {given!r} (flag --check-status): "), line
    assert problem in line, line
