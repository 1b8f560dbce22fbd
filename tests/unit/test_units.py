"""``sockact units render``: validation, rendering, drift of units/, systemd-analyze."""

from __future__ import annotations

import argparse
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sockact.controller import units
from sockact.controller.units import LISTEN_MODES, UnitOptions, render_units, write_units
from sockact.errors import BadInput

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "units"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
MAX_EXPOSURE = 2.0


def directive(content: str, key: str) -> list[str]:
    """Values of every ``key=`` line in a rendered unit."""
    return re.findall(rf"^{re.escape(key)}=(.*)$", content, flags=re.MULTILINE)


def problems_of(**kwargs: object) -> list[str]:
    with pytest.raises(BadInput) as excinfo:
        UnitOptions(**kwargs)  # type: ignore[arg-type]
    return excinfo.value.details


# --- drift ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LISTEN_MODES)
def test_committed_units_match_render(mode: str) -> None:
    rendered = render_units(UnitOptions(listen=mode))
    committed = {p.name: p.read_text(encoding="utf-8") for p in (COMMITTED / mode).iterdir()}
    regenerate = f"regenerate with: sockact units render --out units/{mode} --listen {mode}"
    assert sorted(committed) == sorted(rendered), regenerate
    for name, content in rendered.items():
        assert committed[name] == content, f"units/{mode}/{name} is stale; {regenerate}"


# --- options and validation ----------------------------------------------------------


def test_defaults_derive_from_name_and_user() -> None:
    opts = UnitOptions(name="web", user="websvc")
    assert (opts.group, opts.config_dir, opts.release_root) == ("websvc", "/etc/web", "/opt/web")
    assert UnitOptions().stop_timeout == 30


def test_all_problems_reported_at_once() -> None:
    details = problems_of(
        name="api@1",
        user="root",
        config_dir="/etc/api\nExecStartPre=/bin/sh -c evil",
        listen="both",
        host="localhost",
        port=0,
        drain_timeout=0.0,
        start_timeout=-1,
        watchdog_sec=0,
    )
    options = [line.split("=", 1)[0] for line in details]
    assert options == [
        "name",
        "user",
        "config_dir",
        "listen",
        "host",
        "port",
        "drain_timeout",
        "start_timeout",
        "watchdog_sec",
    ]
    # The value is shown escaped, so a newline cannot hide in the message either.
    assert "'/etc/api\\nExecStartPre=/bin/sh -c evil'" in details[2]
    # release_root defaults to /opt/api@1: not reported again on top of the bad name.


@pytest.mark.parametrize("name", ["api", "api-v2", "my_api", "a.b", "x:y", "esc\\x2dape"])
def test_good_names(name: str) -> None:
    opts = UnitOptions(name=name, config_dir="/etc/x", release_root="/opt/x")
    assert opts.name == name


def test_name_unusable_in_default_paths() -> None:
    details = problems_of(name="esc\\x2dape")
    assert [line.split("=", 1)[0] for line in details] == ["config_dir", "release_root"]
    assert "set config_dir explicitly" in details[0]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("api@", "'@'"),
        ("", "non-empty"),
        ("a b", "letters, digits"),
        ("a/b", "letters, digits"),
        ("a\nb", "letters, digits"),
        ("é", "letters, digits"),
        ("a" * (units.NAME_MAX + 1), "too long"),
        ("..", "file name"),
    ],
)
def test_bad_names(name: str, reason: str) -> None:
    details = problems_of(name=name, config_dir="/etc/x", release_root="/opt/x")
    assert len(details) == 1 and details[0].startswith("name=") and reason in details[0]


@pytest.mark.parametrize("user", ["root", "nobody", "1000", "-api", "api user", "a" * 32, ""])
def test_bad_users(user: str) -> None:
    details = problems_of(user=user, group="api")
    assert len(details) == 1 and details[0].startswith("user=")


def test_bad_group_named() -> None:
    assert problems_of(group="wheel:x")[0].startswith("group='wheel:x'")


@pytest.mark.parametrize(
    "path",
    [
        "relative/dir",
        "/etc/api/",
        "/etc//api",
        "/etc/../api",
        "/etc/./api",
        "/",
        "/etc/a pi",
        "/etc/api\n[Service]",
        "/etc/%i",
        "/etc/$HOME",
        "/etc/'api'",
        '/etc/"api"',
        "/etc/a\\x20pi",
        "/etc/api;rm",
        "/home/api",
        "/root/api",
        "/tmp/api",
        "/var/tmp/api",
        "/dev/shm/api",
    ],
)
@pytest.mark.parametrize("option", ["config_dir", "release_root"])
def test_bad_paths(option: str, path: str) -> None:
    details = problems_of(**{option: path})
    assert len(details) == 1 and details[0].startswith(f"{option}=")


def test_config_dir_and_release_root_differ() -> None:
    assert problems_of(config_dir="/srv/api", release_root="/srv/api")[0].startswith("config_dir=")


@pytest.mark.parametrize("port", [0, -1, 65536, True, 80.0])
def test_bad_ports(port: object) -> None:
    assert problems_of(port=port)[0].startswith("port=")


@pytest.mark.parametrize("drain", [0, -1.0, float("nan"), float("inf"), True])
def test_bad_drain_timeouts(drain: object) -> None:
    assert problems_of(drain_timeout=drain)[0].startswith("drain_timeout=")


@pytest.mark.parametrize("host", ["example.com", "fe80::1%eth0", "1.2.3", ""])
def test_bad_hosts(host: str) -> None:
    assert problems_of(host=host)[0].startswith("host=")


# --- rendering -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LISTEN_MODES)
def test_every_file_starts_with_generated_comment(mode: str) -> None:
    opts = UnitOptions(listen=mode, name="web", port=9090)
    for content in render_units(opts).values():
        first, second = content.splitlines()[:2]
        assert first.startswith("# Generated by `sockact units render`")
        assert "--name web" in second and f"--listen {mode}" in second and "--port 9090" in second


def test_reuseport_files() -> None:
    files = render_units(UnitOptions(name="web"))
    assert sorted(files) == ["60-web-reuseport.conf", "web@.service"]
    assert "\nnet.ipv4.tcp_migrate_req = 1\n" in files["60-web-reuseport.conf"]
    assert "Sockets=" not in files["web@.service"]


def test_instance_service() -> None:
    opts = UnitOptions(name="web", user="websvc", config_dir="/srv/web/etc", listen="socket")
    unit = render_units(opts)["web@.service"]
    assert directive(unit, "ExecStart") == [
        "/opt/web/instances/%i/bin/sockact serve --config /srv/web/etc/instances/%i.toml"
        " --instance %i"
    ]
    assert directive(unit, "EnvironmentFile") == ["-/srv/web/etc/instances/%i.env"]
    assert directive(unit, "Type") == ["notify"]
    assert directive(unit, "NotifyAccess") == ["main"]
    assert directive(unit, "KillMode") == ["mixed"]
    assert directive(unit, "User") == ["websvc"] and directive(unit, "Group") == ["websvc"]
    assert directive(unit, "Sockets") == ["web.socket"]
    assert directive(unit, "Requires") == ["web.socket"]
    assert "web.socket" in directive(unit, "After")[-1].split()
    assert "PYTHONDONTWRITEBYTECODE=1" in directive(unit, "Environment")[0].split()
    assert directive(unit, "CapabilityBoundingSet") == [""]
    # The drain and the port reach sockact through its config file only.
    assert "drain" not in directive(unit, "ExecStart")[0]
    assert "8080" not in re.sub(r"^#.*$", "", unit, flags=re.MULTILINE)


@pytest.mark.parametrize("drain", [0.1, 1.0, 19.99, 20.0, 20.5, 3600.0])
def test_stop_timeout_exceeds_drain(drain: float) -> None:
    unit = render_units(UnitOptions(drain_timeout=drain))["api@.service"]
    (stop,) = directive(unit, "TimeoutStopSec")
    assert int(stop) > drain
    assert directive(unit, "TimeoutStartSec") == ["300"]
    assert directive(unit, "WatchdogSec") == ["10"]


def test_privileged_port_gets_only_bind_capability_in_reuseport_mode() -> None:
    unit = render_units(UnitOptions(port=80))["api@.service"]
    assert directive(unit, "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    assert directive(unit, "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]
    socket_mode = render_units(UnitOptions(port=80, listen="socket"))["api@.service"]
    assert directive(socket_mode, "AmbientCapabilities") == [""]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0.0.0.0", "8080"),
        ("::", "8080"),
        ("127.0.0.1", "127.0.0.1:8080"),
        ("::1", "[::1]:8080"),
        ("2001:db8::0:1", "[2001:db8::1]:8080"),
    ],
)
def test_socket_unit_listen_stream(host: str, expected: str) -> None:
    files = render_units(UnitOptions(listen="socket", host=host))
    assert sorted(files) == ["api.service", "api.socket", "api@.service"]
    sock = files["api.socket"]
    assert directive(sock, "ListenStream") == [expected]
    assert directive(sock, "FileDescriptorName") == ["http"]
    assert directive(sock, "Accept") == ["no"]
    assert directive(sock, "ReusePort") == ["no"]
    assert directive(sock, "Service") == []  # triggers the holder api.service


def test_holder_never_runs_the_app() -> None:
    holder = render_units(UnitOptions(listen="socket"))["api.service"]
    assert directive(holder, "Type") == ["oneshot"]
    assert directive(holder, "RemainAfterExit") == ["yes"]
    assert directive(holder, "ExecStart") == ["/bin/true"]
    assert "never runs the app" in directive(holder, "Description")[0]
    assert "sockact serve" not in holder


# --- writing and the command line ------------------------------------------------------


def test_write_units_atomic_files(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    written = write_units(UnitOptions(listen="socket"), out)
    assert sorted(p.name for p in out.iterdir()) == ["api.service", "api.socket", "api@.service"]
    assert sorted(written) == sorted(out.iterdir())
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    # Rewriting replaces the content and leaves no temporary file behind.
    (out / "api.socket").write_text("stale", encoding="utf-8")
    write_units(UnitOptions(listen="socket"), out)
    assert (out / "api.socket").read_text(encoding="utf-8").startswith("# Generated")
    assert len(list(out.iterdir())) == 3


def test_write_units_out_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("", encoding="utf-8")
    with pytest.raises(BadInput, match="not a directory"):
        write_units(UnitOptions(), target)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sockact")
    units.add_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_render_prints_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["units", "render", "--out", str(tmp_path), "--listen", "socket", "--name", "w"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(
        str(tmp_path / n) for n in ("w.service", "w.socket", "w@.service")
    )


def test_cli_defaults_match_unit_options(tmp_path: Path) -> None:
    assert units.options_from_args(parse(["units", "render", "--out", str(tmp_path)])) == (
        UnitOptions()
    )


def test_cli_reports_every_problem_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = parse(
        ["units", "render", "--out", str(out), "--port", "http", "--drain-timeout", "x",
         "--name", "a@b", "--config-dir", "/etc/a b"]
    )  # fmt: skip
    with pytest.raises(BadInput) as excinfo:
        args.func(args)
    assert [line.split("=", 1)[0] for line in excinfo.value.details] == [
        "port",
        "drain_timeout",
        "name",
        "config_dir",
    ]
    assert not out.exists()


# --- systemd-analyze -------------------------------------------------------------------


def fake_root(tmp_path: Path, files: dict[str, str], instance: str = "1") -> Path:
    """A root holding the system's units, ours, the instance's binary and /bin/true."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name, content in files.items():
        (unit_dir / name).write_text(content, encoding="utf-8")
    for exe in (root / f"opt/api/instances/{instance}/bin/sockact", root / "bin/true"):
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\n", encoding="utf-8")
        exe.chmod(0o755)
    return root


@needs_analyze
@pytest.mark.parametrize("mode", LISTEN_MODES)
def test_systemd_analyze_verify(tmp_path: Path, mode: str) -> None:
    files = render_units(UnitOptions(listen=mode))
    root = fake_root(tmp_path, files)
    # The template is checked through an instance; the sysctl drop-in is no unit.
    names = ["api@1.service", *(n for n in files if "@" not in n and not n.endswith(".conf"))]
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", f"--root={root}", *names],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def exposure(unit_file: Path) -> float:
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--no-pager", str(unit_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize(
    "opts",
    [UnitOptions(), UnitOptions(listen="socket"), UnitOptions(port=443)],
    ids=["reuseport", "socket", "reuseport-port-443"],
)
def test_systemd_analyze_security(tmp_path: Path, opts: UnitOptions) -> None:
    for name in write_units(opts, tmp_path):
        if name.suffix == ".service":
            score = exposure(name)
            assert score <= MAX_EXPOSURE, f"{name.name}: exposure {score} > {MAX_EXPOSURE}"
