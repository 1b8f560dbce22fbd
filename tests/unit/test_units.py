"""``sockact units render``: validation, rendering, drift of units/, systemd-analyze."""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sockact.controller import units
from sockact.controller.units import LISTEN_MODES, UnitOptions, render_units, write_units
from sockact.errors import BadInput

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "units"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
#: `systemd-analyze security` of each rendered service, as docs/units.md states them
#: (systemd 252 rounds the exposure up to one decimal).
EXPOSURE = {
    "reuseport": {"api@.service": 1.1},
    "socket": {"api@.service": 1.1, "api.service": 0.2},
    "reuseport-port-443": {"api@.service": 1.4},
    "socket-unix": {"api@.service": 1.1, "api.service": 0.2},
}
#: a systemd other than 252 may weigh an option differently: this much either way passes
EXPOSURE_MARGIN = 0.1


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
        unix_socket="relative.sock",
        socket_user="a b",
        socket_group="",
        socket_mode="0999",
        backlog=0,
        drain_timeout=0.0,
        start_timeout=-1,
        watchdog_sec=0,
        limit_nofile=10**9,
    )
    options = [line.split("=", 1)[0] for line in details]
    assert options == [
        "name",
        "user",
        "config_dir",
        "listen",
        "host",
        "port",
        "unix_socket",
        "socket_user",
        "socket_group",
        "socket_mode",
        "backlog",
        "drain_timeout",
        "start_timeout",
        "watchdog_sec",
        "limit_nofile",
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


@pytest.mark.parametrize("drain", [0, -1.0, float("nan"), float("inf"), True, 1e-300, 1e23])
def test_bad_drain_timeouts(drain: object) -> None:
    assert problems_of(drain_timeout=drain)[0].startswith("drain_timeout=")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("start_timeout", 10**23),
        ("start_timeout", 0),
        ("start_timeout", 86401),
        ("start_timeout", 1.5),
        ("watchdog_sec", 10**23),
        ("watchdog_sec", 3601),
        ("watchdog_sec", 0),
        ("limit_nofile", 1023),
        ("limit_nofile", 2**20 + 1),
        ("backlog", 65536),
    ],
)
def test_unit_values_out_of_range(option: str, value: object) -> None:
    # systemd drops a time span that does not fit 64-bit microseconds with a warning
    (problem,) = problems_of(**{option: value})
    assert problem.startswith(f"{option}={value!r}: must be"), problem


@pytest.mark.parametrize("host", ["example.com", "fe80::1%eth0", "1.2.3", ""])
def test_bad_hosts(host: str) -> None:
    assert problems_of(host=host)[0].startswith("host=")


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"unix_socket": "/run/api/api.sock"}, "needs --listen socket"),
        ({"listen": "socket", "unix_socket": "run/api.sock"}, "absolute"),
        ({"listen": "socket", "unix_socket": "@abstract"}, "absolute"),
        ({"listen": "socket", "unix_socket": "/run/a pi.sock"}, "only letters"),
        ({"listen": "socket", "unix_socket": "/run/%n.sock"}, "only letters"),
        ({"listen": "socket", "unix_socket": "/run/api/"}, "normalized"),
        ({"listen": "socket", "unix_socket": "/run//api.sock"}, "normalized"),
        ({"listen": "socket", "unix_socket": "/"}, "normalized"),
        ({"listen": "socket", "unix_socket": "/run/" + "a" * 103}, "too long"),
        ({"listen": "socket", "socket_mode": "660x"}, "octal"),
        ({"listen": "socket", "socket_mode": "4755"}, "octal"),
        ({"listen": "socket", "socket_group": "www data"}, "user/group"),
        ({"listen": "socket", "socket_user": ""}, "user/group"),
    ],
)
def test_bad_unix_socket_options(values: dict[str, str], reason: str) -> None:
    (problem,) = problems_of(**values)
    assert reason in problem, problem


def test_longest_unix_socket_path() -> None:
    path = "/run/" + "a" * (units.UNIX_PATH_MAX - len("/run/"))
    assert UnitOptions(listen="socket", unix_socket=path).unix_socket == path


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


def test_unix_socket_listener() -> None:
    opts = UnitOptions(
        listen="socket", unix_socket="/run/api/api.sock", socket_group="www-data", backlog=512
    )
    files = render_units(opts)
    sock = files["api.socket"]
    assert directive(sock, "ListenStream") == ["/run/api/api.sock"]
    assert directive(sock, "SocketUser") == ["root"]
    assert directive(sock, "SocketGroup") == ["www-data"]
    assert directive(sock, "SocketMode") == ["0660"]
    assert directive(sock, "RemoveOnStop") == ["yes"]
    assert directive(sock, "Backlog") == ["512"]
    assert directive(sock, "FileDescriptorName") == ["http"]
    # TCP-only options would make systemd log a failed setsockopt()
    assert directive(sock, "NoDelay") == [] and directive(sock, "ReusePort") == []
    assert directive(files["api@.service"], "Sockets") == ["api.socket"]
    assert "--unix-socket /run/api/api.sock" in sock.splitlines()[1]
    assert "--socket-group www-data" in sock.splitlines()[1]
    # and without a unix socket, its options are not part of the command line
    tcp = render_units(UnitOptions(listen="socket"))["api.socket"]
    assert "--socket-" not in tcp and "--unix-socket" not in tcp


@pytest.mark.parametrize("mode", LISTEN_MODES)
def test_limit_nofile(mode: str) -> None:
    unit = render_units(UnitOptions(listen=mode))["api@.service"]
    assert directive(unit, "LimitNOFILE") == ["65536"]
    unit = render_units(UnitOptions(listen=mode, limit_nofile=4096))["api@.service"]
    assert directive(unit, "LimitNOFILE") == ["4096"]


@pytest.mark.parametrize(
    ("opts", "private_users", "proc_subset"),
    [
        (UnitOptions(), ["yes"], []),  # sockact reads /proc/sys/net/ipv4/tcp_migrate_req
        (UnitOptions(port=443), [], []),  # CAP_NET_BIND_SERVICE does not work from a userns
        (UnitOptions(listen="socket"), ["yes"], ["pid"]),
        (UnitOptions(listen="socket", port=443), ["yes"], ["pid"]),
        (UnitOptions(listen="socket", unix_socket="/run/a.sock"), ["yes"], ["pid"]),
    ],
)
def test_hardening_per_mode(
    opts: UnitOptions, private_users: list[str], proc_subset: list[str]
) -> None:
    unit = render_units(opts)["api@.service"]
    assert directive(unit, "PrivateUsers") == private_users
    assert directive(unit, "ProcSubset") == proc_subset
    assert directive(unit, "ProtectProc") == ["invisible"]


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
    with pytest.raises(BadInput, match="cannot create directory") as err:
        write_units(UnitOptions(), target / "sub")
    assert err.value.exit_code == 2


def listing(directory: Path) -> dict[str, str]:
    """name -> content (or "<dir>") of everything in ``directory``, hidden files included."""
    return {
        p.name: "<dir>" if p.is_dir() else p.read_text(encoding="utf-8")
        for p in sorted(directory.iterdir())
    }


def test_write_units_refuses_a_directory_in_the_way_before_writing(tmp_path: Path) -> None:
    # api.socket comes after api@.service: without the check first, api@.service would be
    # written and then the run would fail
    (tmp_path / "api@.service").write_text("old instance unit", encoding="utf-8")
    (tmp_path / "api.socket").mkdir()
    before = listing(tmp_path)
    with pytest.raises(BadInput) as err:
        write_units(UnitOptions(listen="socket"), tmp_path)
    assert err.value.message == f"--out {tmp_path}: api.socket is a directory; nothing was written"
    assert listing(tmp_path) == before


@pytest.mark.parametrize("existing", [True, False])
def test_write_units_rolls_back_when_a_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """An I/O error on the second file: the first is restored (or removed again)."""
    out = tmp_path / "new" / "units"
    if existing:
        write_units(UnitOptions(listen="socket", port=1111), out)
    before = listing(out) if existing else None
    real_replace = os.replace
    calls: list[str] = []

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr("sockact.controller.units.os.replace", failing_replace)
    with pytest.raises(BadInput) as err:
        write_units(UnitOptions(listen="socket", port=2222), out)
    assert "cannot replace api.socket: Input/output error; nothing was changed" in str(
        err.value.message
    )
    assert calls[:2] == ["api@.service", "api.socket"]
    if existing:
        assert listing(out) == before  # old content back, no temporary files
    else:
        assert not (tmp_path / "new").exists()  # the directories this run made are gone


def test_write_units_into_an_unwritable_place(tmp_path: Path) -> None:
    # procfs takes no new files, even from root
    with pytest.raises(BadInput) as err:
        write_units(UnitOptions(), Path("/proc/sockact-units"))
    assert err.value.message.startswith("--out /proc/sockact-units: cannot ")
    assert err.value.message.endswith("; nothing was written")
    assert not Path("/proc/sockact-units").exists()


@pytest.mark.parametrize("out", ["/proc/sockact-units", "/dev/null", "/dev/null/x"])
def test_cli_unwritable_out_is_one_line_exit_2(out: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sockact.cli", "units", "render", "--out", out],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"sockact: error: --out {out}"), line


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
    ("case", "opts"),
    [
        ("reuseport", UnitOptions()),
        ("socket", UnitOptions(listen="socket")),
        ("reuseport-port-443", UnitOptions(port=443)),
        ("socket-unix", UnitOptions(listen="socket", unix_socket="/run/api/api.sock")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_systemd_analyze_security(tmp_path: Path, case: str, opts: UnitOptions) -> None:
    scores = {p.name: exposure(p) for p in write_units(opts, tmp_path) if p.suffix == ".service"}
    expected = EXPOSURE[case]
    assert scores.keys() == expected.keys()
    for name, score in scores.items():
        documented = expected[name]
        assert abs(score - documented) <= EXPOSURE_MARGIN + 1e-9, (
            f"{name}: exposure {score}, docs/units.md says {documented}: update both"
        )
