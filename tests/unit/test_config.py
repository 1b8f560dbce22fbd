"""Config: file < env < flags, strict parsing, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockact.errors import BadInput
from sockact.runtime import config

APP = "sockact_demo:create_app"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "api.toml"
    path.write_text(text)
    return path


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    path = write(tmp_path, f'app = "{APP}"\ninstance = 1\nport = 8001\nthreads = 3\n')
    cfg = config.load(path, env={"SOCKACT_PORT": "8002"}, flags={"port": "8003"})
    assert cfg.port == 8003
    assert cfg.threads == 3
    assert cfg.sources["port"] == "flag --port"
    assert cfg.sources["threads"] == f"file {path}"
    cfg = config.load(path, env={"SOCKACT_PORT": "8002"}, flags={"port": None})
    assert cfg.port == 8002
    assert cfg.sources["port"] == "env SOCKACT_PORT"


def test_admin_port_defaults_to_9000_plus_instance() -> None:
    cfg = config.load(None, env={}, flags={"app": APP, "instance": "7"})
    assert cfg.admin_port == 9007
    assert cfg.sources["admin_port"].startswith("default")
    cfg = config.load(None, env={}, flags={"app": APP, "instance": "7", "admin_port": "9500"})
    assert cfg.admin_port == 9500


def test_all_problems_reported_at_once_with_key_and_source(tmp_path: Path) -> None:
    path = write(tmp_path, 'app = "not a target"\nprot = 1\ninstance = 1\n')
    env = {"SOCKACT_THREADS": "many", "SOCKACT_DRAIN_TIMOUT": "3"}
    with pytest.raises(BadInput) as err:
        config.load(path, env=env, flags={"listen": "magic", "port": "70000"})
    details = "\n".join(err.value.details)
    assert err.value.exit_code == 2
    assert len(err.value.details) == 6, details
    assert f"config file {path}: unknown key 'prot' (did you mean 'port'?)" in details
    assert (
        "environment SOCKACT_DRAIN_TIMOUT: unknown setting (did you mean 'drain_timeout'?)"
        in details
    )
    assert "threads = 'many' (env SOCKACT_THREADS): not an integer" in details
    assert "listen = 'magic' (flag --listen): must be one of auto, reuseport, inherit" in details
    assert "port = '70000' (flag --port): must be between 1 and 65535" in details
    assert f"app = 'not a target' (file {path})" in details


def test_required_keys() -> None:
    with pytest.raises(BadInput) as err:
        config.load(None, env={}, flags={})
    assert any(d.startswith("app: required") for d in err.value.details)
    assert any(d.startswith("instance: required") for d in err.value.details)


@pytest.mark.parametrize("raw", ["ture", "2", "", "y e s"])
def test_booleans_are_strict(raw: str) -> None:
    with pytest.raises(BadInput) as err:
        config.load(
            None, env={"SOCKACT_REQUIRE_MIGRATE_REQ": raw}, flags={"app": APP, "instance": "1"}
        )
    assert err.value.details[0].startswith(f"require_migrate_req = {raw!r} (env ")


@pytest.mark.parametrize(("raw", "expected"), [("yes", True), ("0", False), ("TRUE", True)])
def test_booleans_accept_plain_words(raw: str, expected: bool) -> None:
    cfg = config.load(
        None, env={"SOCKACT_REQUIRE_MIGRATE_REQ": raw}, flags={"app": APP, "instance": "1"}
    )
    assert cfg.require_migrate_req is expected


def test_toml_types_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, f'app = "{APP}"\ninstance = "1"\nport = true\ndrain_timeout = "x"\n')
    with pytest.raises(BadInput) as err:
        config.load(path, env={})
    details = "\n".join(err.value.details)
    assert "port = True" in details and "not an integer" in details
    assert "drain_timeout = 'x'" in details
    # a string "1" from TOML converts like the same value from env or a flag
    assert "instance" not in details


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="problem") as err:
        config.load(write(tmp_path, "app = [unclosed\n"), env={})
    assert "invalid TOML" in err.value.details[0]
    with pytest.raises(BadInput) as err:
        config.load(tmp_path / "nope.toml", env={}, flags={"app": APP, "instance": "1"})
    assert err.value.details == [f"config file {tmp_path / 'nope.toml'}: not found"]


def test_cross_checks() -> None:
    flags = {"app": APP, "instance": "1", "port": "9001", "admin_host": "0.0.0.0"}
    with pytest.raises(BadInput, match="problem") as err:
        config.load(None, env={}, flags=flags)
    assert "needs a port of its own" in err.value.details[0]
    with pytest.raises(BadInput) as err:
        config.load(
            None,
            env={},
            flags={"app": APP, "instance": "1", "idle_grace": "5", "drain_timeout": "2"},
        )
    assert "must be shorter than drain_timeout" in err.value.details[0]


def test_app_variables_are_not_settings_and_sockact_knows_no_release_variable() -> None:
    cfg = config.load(None, env={"DEMO_WARMUP": "3"}, flags={"app": APP, "instance": "1"})
    assert cfg.instance == 1
    # a release is what is installed (GET /release), not a label in the environment
    with pytest.raises(BadInput) as err:
        config.load(None, env={"SOCKACT_RELEASE": "v1"}, flags={"app": APP, "instance": "1"})
    assert err.value.details == ["environment SOCKACT_RELEASE: unknown setting"]


def test_describe_round_trips_as_toml(tmp_path: Path) -> None:
    import tomllib

    cfg = config.load(None, env={"SOCKACT_HOST": "127.0.0.1"}, flags={"app": APP, "instance": "4"})
    text = config.describe(cfg)
    assert "# env SOCKACT_HOST" in text
    parsed = tomllib.loads(text)
    again = config.load(write(tmp_path, text), env={})
    assert again == cfg
    assert parsed["admin_port"] == 9004
