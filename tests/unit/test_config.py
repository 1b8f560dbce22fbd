"""Config: file < env < flags, strict parsing, every problem at once."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
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


# --- bad files: one line each, exit 2, never a traceback or a hang (issue 11.7) -------------


def problems_of_file(path: Path) -> list[str]:
    with pytest.raises(BadInput) as err:
        config.load(path, env={}, flags={"app": APP, "instance": "1"})
    assert err.value.exit_code == 2
    return err.value.details


def test_non_utf8_file_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'app = "x:y"\ninstance = 1\ncheck_path = "/caf\xe9"\n')
    assert problems_of_file(path) == [
        f"config file {path}: not UTF-8 (byte 0xe9 at offset 43, line 3)"
    ]


def test_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "api.toml"
    os.mkfifo(fifo)
    # opening a FIFO for reading blocks until a writer comes: this must not open it
    result = run_cli("check-config", "--config", str(fifo), "--app", APP, "--instance", "1")
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "sockact: error: 1 problem in the configuration",
        f"sockact: error: config file {fifo}: not a regular file (a FIFO)",
    ]


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/dev/zero", "not a regular file (a character device)"), ("/", "is a directory")],
)
def test_devices_and_directories_are_refused(path: str, reason: str) -> None:
    assert problems_of_file(Path(path)) == [f"config file {path}: {reason}"]


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text(f'app = "{APP}"\n' + "# padding\n" * (config.MAX_CONFIG_BYTES // 10))
    (problem,) = problems_of_file(path)
    assert problem.startswith(f"config file {path}: too large (")


def test_deeply_nested_toml_is_one_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "threads = " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert problems_of_file(path) == [f"config file {path}: invalid TOML: nested too deeply"]


def test_unreadable_path_is_one_line(tmp_path: Path) -> None:
    weird = tmp_path / "new\nline.toml"
    (problem,) = problems_of_file(weird)
    assert "\n" not in problem and problem.endswith(": not found"), problem


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``sockact ARGS`` in a child process; a hang fails the test after ``timeout``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCKACT_")}
    return subprocess.run(
        [sys.executable, "-m", "sockact.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("kind", ["latin1", "dev-zero", "directory", "big"])
def test_cli_bad_file_is_exit_2_without_traceback(tmp_path: Path, kind: str) -> None:
    paths = {"dev-zero": "/dev/zero", "directory": str(tmp_path)}
    if kind == "latin1":
        (tmp_path / "f.toml").write_bytes(b"app = '\xff'\n")
    elif kind == "big":
        (tmp_path / "f.toml").write_bytes(b"#" * (config.MAX_CONFIG_BYTES + 1))
    path = paths.get(kind, str(tmp_path / "f.toml"))
    result = run_cli("check-config", "-c", path, "--app", APP, "--instance", "1")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("sockact: error: ") for line in lines)


# --- strict values (issue 11.8, 11.9) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("instance", "\u0661"),  # ARABIC-INDIC DIGIT ONE: int() would read it as 1
        ("port", "\u0668\u0660\u0668\u0660"),
        ("port", "8_080"),
        ("threads", "\uff18"),  # FULLWIDTH DIGIT EIGHT
        ("drain_timeout", "\u0661.5"),
        ("drain_timeout", "nan"),
        ("drain_timeout", "inf"),
        ("drain_timeout", "1_0"),
        ("drain_timeout", "1e-300"),
        ("drain_timeout", "1e23"),
        ("warmup_timeout", "-inf"),
    ],
)
def test_numbers_are_ascii_finite_and_in_range(key: str, raw: str) -> None:
    flags = {"app": APP, "instance": "1", key: raw}
    with pytest.raises(BadInput) as err:
        config.load(None, env={}, flags=flags)
    (problem,) = err.value.details
    assert problem.startswith(f"{key} = {raw!r} (flag --{key.replace('_', '-')}): "), problem


@pytest.mark.parametrize("text", ["drain_timeout = nan", "drain_timeout = inf", "port = 1e3"])
def test_toml_non_finite_or_float_numbers(tmp_path: Path, text: str) -> None:
    (problem,) = problems_of_file(write(tmp_path, text + "\n"))
    assert problem.split(" = ")[0] == text.split(" = ")[0], problem


@pytest.mark.parametrize(
    "name",
    ["", "a:b", "tab\there", "new\nline", "caf\u00e9", "\x7f", "x" * 256],
)
def test_socket_name_must_be_a_file_descriptor_name(name: str) -> None:
    # systemd's fdname_is_valid(): printable ASCII, no ':', at most 255 characters
    with pytest.raises(BadInput) as err:
        config.load(None, env={}, flags={"app": APP, "instance": "1", "socket_name": name})
    (problem,) = err.value.details
    assert problem.startswith("socket_name = "), problem


@pytest.mark.parametrize("name", ["http", "with space", "a.b-c_d", "x" * 255, "!\"#$%&'()*+,"])
def test_good_socket_names(name: str) -> None:
    cfg = config.load(None, env={}, flags={"app": APP, "instance": "1", "socket_name": name})
    assert cfg.socket_name == name


@pytest.mark.parametrize(
    "host",
    ["1.2.3", "999.1.1.1", "-api.example", "api-.example", "a..b", "[::1]", "fe80::1%eth0",
     "a b", "caf\u00e9.example", "a" * 64 + ".example", "_srv.example", "::1::"],
)  # fmt: skip
@pytest.mark.parametrize("key", ["host", "admin_host"])
def test_bad_hosts(key: str, host: str) -> None:
    with pytest.raises(BadInput) as err:
        config.load(None, env={}, flags={"app": APP, "instance": "1", key: host})
    assert err.value.details[0].startswith(f"{key} = {host!r}"), err.value.details


@pytest.mark.parametrize("host", ["::1", "::", "127.0.0.1", "localhost", "api.example.com."])
def test_good_admin_hosts(host: str) -> None:
    cfg = config.load(None, env={}, flags={"app": APP, "instance": "1", "admin_host": host})
    assert cfg.admin_host == host and cfg.admin_port == 9001


@pytest.mark.parametrize(
    ("host", "admin_host", "clash"),
    [
        ("0.0.0.0", "127.0.0.1", True),
        ("::", "127.0.0.1", True),  # '::' is dual-stack on Linux
        ("::", "::1", True),
        ("127.0.0.1", "::", True),
        ("::ffff:127.0.0.1", "127.0.0.1", True),
        ("10.0.0.1", "10.0.0.1", True),
        ("api.example.com", "127.0.0.1", True),  # a name may resolve to anything
        ("api.example.com", "10.0.0.5", True),
        ("API.example.com", "api.example.com.", True),
        ("localhost", "127.0.0.1", True),
        ("localhost", "::1", True),
        ("localhost", "10.0.0.1", False),  # loopback vs a specific address
        ("10.0.0.1", "127.0.0.1", False),
        ("::1", "127.0.0.1", False),
        ("2001:db8::1", "::1", False),
    ],
)
def test_admin_port_clash_is_conservative(host: str, admin_host: str, clash: bool) -> None:
    flags = {"app": APP, "instance": "1", "port": "9001", "host": host, "admin_host": admin_host}
    if not clash:
        assert config.load(None, env={}, flags=flags).admin_port == 9001
        return
    with pytest.raises(BadInput) as err:
        config.load(None, env={}, flags=flags)
    (problem,) = err.value.details
    assert "needs a port of its own" in problem and repr(admin_host) in problem, problem


# --- print-config is always valid TOML ----------------------------------------------------------

NASTY = [
    {"check_path": '/q?a="b"&c=\\d#e'},
    {"socket_name": "quote\" back\\slash # hash ' single"},
    {"socket_name": "   padded   "},
    {"app": "m\u00f6d.ule:f\u00fcnc"},
    {"warmup": "pkg.mod:warm", "log_level": "DEBUG"},
    {"drain_timeout": "86400", "idle_grace": "0", "warmup_timeout": "0.1"},
    {"drain_timeout": "1.0000000000000002"},
]


@pytest.mark.parametrize("values", NASTY)
def test_print_config_round_trips_nasty_values(tmp_path: Path, values: dict[str, str]) -> None:
    import tomllib

    weird_dir = tmp_path / 'dir "with"\nnewline\t# and \\ \x1b[31m'
    weird_dir.mkdir()
    path = weird_dir / "api.toml"
    path.write_text(f'app = "{APP}"\ninstance = 3\n', encoding="utf-8")
    cfg = config.load(path, env={"SOCKACT_THREADS": "3"}, flags=values)
    text = config.describe(cfg)
    parsed = tomllib.loads(text)  # raises on invalid TOML
    assert len(text.splitlines()) == len(dataclasses.fields(config.Config)) - 1
    again = config.load(write(tmp_path, text), env={})
    assert again == cfg
    for key in values:
        assert parsed[key] == getattr(cfg, key)
