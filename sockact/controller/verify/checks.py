"""Is this host right? The checks of ``sockact verify``, one per test.

Each host is checked against its deploy record (``deploy.json``, fixture ``record``).
A check that takes ``instance`` runs once per instance the record names (test ids
``<host>/<name>@<i>``), the others once per host. Every failure message ends with
:func:`diagnose` (``systemctl status``, the unit's journal, ``ss -ltnp``), so a red run
explains itself. Paths, unit names, colors and admin ports come from
:class:`sockact.layout.HostLayout` (fixture ``checked``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sockact.controller.units import render_units
from sockact.controller.verify import facts
from sockact.controller.verify.facts import Record
from sockact.controller.verify.plugin import Checked, facts_of
from sockact.layout import RELEASE_META
from sockact.layout import admin_port as layout_admin_port

MIGRATE_REQ = "net.ipv4.tcp_migrate_req"
_MIGRATE_REQ_LINE = re.compile(rf"^\s*{re.escape(MIGRATE_REQ)}\s*=\s*1\s*$", re.M)
#: exposure levels are printed with one decimal
_EXPOSURE_SLACK = 0.05


@pytest.fixture(scope="module")
def host(sockact_host: Any) -> Any:
    """testinfra's host, parametrized by the plugin (with the instances of its record)."""
    return sockact_host


# --------------------------------------------------------------------------- helpers


def diagnose(host: Any, unit: str, port: int | None = None) -> str:
    """What an operator looks at first: ``systemctl status``, the unit's last 30 journal
    lines, and the listening TCP sockets with their processes."""
    ss = f"ss -ltnp 'sport = :{int(port)}'" if port else "ss -ltnp"
    sections = []
    for command in (
        f"systemctl status --no-pager --full --lines=0 {unit}",
        f"journalctl --no-pager -o short-iso -n 30 -u {unit}",
        ss,
    ):
        res = host.run(command)
        out = facts.without_ssh_noise(res.stdout + res.stderr) or "(no output)"
        sections.append(f"--- $ {command}  (exit {res.rc})\n{out}")
    return f"\n===== diagnosis of {unit} on this host =====\n" + "\n".join(sections)


def properties(host: Any, unit: str) -> dict[str, str]:
    """``systemctl show UNIT`` (testinfra's ``systemd_properties``)."""
    props: dict[str, str] = host.service(unit).systemd_properties
    return props


def main_pid(host: Any, unit: str) -> int:
    return int(properties(host, unit).get("MainPID") or 0)


def main_pids(host: Any, checked: Checked, record: Record) -> dict[int, int]:
    """instance -> MainPID (0 when not running)."""
    return {i: main_pid(host, checked.layout.instance_unit(i)) for i in record.instances}


def listeners(host: Any, port: int) -> tuple[list[facts.Listener], str]:
    """The listening TCP sockets on ``port`` with their processes, and ``ss``'s output
    (testinfra's ``host.socket`` says whether a port listens, not who holds it)."""
    res = host.run("ss -ltnpH %s", f"sport = :{int(port)}")
    return facts.parse_listeners(res.stdout), res.stdout


def instance_settings(host: Any, checked: Checked, instance: int) -> dict[str, Any]:
    config = host.file(checked.layout.instance_config(instance))
    return facts.instance_settings(config.content_string if config.is_file else None)


#: GET with the host's python3 (every host Ansible manages has it; curl is not on a bare
#: Debian): prints the body, a newline and the status (0 when nothing answered)
_GET = """\
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=5) as resp:
        code, body = resp.status, resp.read()
except urllib.error.HTTPError as exc:
    code, body = exc.code, exc.read()
except OSError:
    code, body = 0, b""
sys.stdout.write(body.decode("utf-8", "replace") + "\\n" + str(code))
"""


def admin_get(host: Any, checked: Checked, instance: int, path: str) -> tuple[int, str, str]:
    """(HTTP status, body, url) of a GET on an instance's admin server, from the host;
    status 0 when nothing answered."""
    url = facts.admin_url(instance_settings(host, checked, instance), instance) + path
    res = host.run("python3 -c %s %s", _GET, url)
    body, _, code = res.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body, url


def _json_field(body: str, key: str) -> Any:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get(key) if isinstance(doc, dict) else None


def _skip_unless(record: Record, listen: str, why: str) -> None:
    if record.listen != listen:
        pytest.skip(f"{record.listen} mode: {why}")


# --------------------------------------------------------------------------- record, files


def test_deploy_record_is_valid(request: pytest.FixtureRequest, host: Any) -> None:
    """deploy.json exists and is valid: color, instances of that color, release (label,
    digest, dir), listen mode, port."""
    found = facts_of(request.config, host)
    assert found.record is not None, "\n".join(found.problems)


def test_unit_files_installed(host: Any, checked: Checked, record: Record) -> None:
    """The unit files of the recorded listen mode are in the unit directory."""
    lay = checked.layout
    missing = [
        f"{lay.unit_dir}/{name}"
        for name in lay.unit_files(record.listen)
        if not host.file(f"{lay.unit_dir}/{name}").is_file
    ]
    assert not missing, f"missing: {missing}" + diagnose(host, lay.instance_unit_file)


def _verify(host: Any, units: list[str]) -> str:
    # not testinfra's service.is_valid: its bare assert says nothing, and without --man=no
    # systemd-analyze complains on a host without man pages
    res = host.run("systemd-analyze verify --man=no" + " %s" * len(units), *units)
    noise = facts.without_ssh_noise(res.stdout + res.stderr)
    return f"systemd-analyze verify {' '.join(units)} (exit {res.rc}):\n{noise}" if noise else ""


def test_instance_unit_verifies(host: Any, checked: Checked, instance: int) -> None:
    """``systemd-analyze verify`` of the instance prints nothing (the template itself does
    not verify: instance ``i`` has no release link)."""
    unit = checked.layout.instance_unit(instance)
    problem = _verify(host, [unit])
    assert not problem, problem + diagnose(host, unit)


def test_socket_units_verify(host: Any, checked: Checked, record: Record) -> None:
    """Socket mode: ``systemd-analyze verify`` of the socket and its holder prints nothing."""
    _skip_unless(record, "socket", "no socket unit")
    lay = checked.layout
    problem = _verify(host, [lay.socket_unit, lay.holder_unit])
    assert not problem, problem + diagnose(host, lay.socket_unit)


def test_unit_loaded_from_the_installed_file(host: Any, checked: Checked, instance: int) -> None:
    lay = checked.layout
    unit = lay.instance_unit(instance)
    want = f"{lay.unit_dir}/{lay.instance_unit_file}"
    got = properties(host, unit).get("FragmentPath")
    assert got == want, f"{unit}: FragmentPath={got!r}, expected {want}" + diagnose(host, unit)


def test_unit_has_no_drop_in(host: Any, checked: Checked, instance: int) -> None:
    unit = checked.layout.instance_unit(instance)
    dropins = properties(host, unit).get("DropInPaths")
    assert not dropins, f"{unit}: drop-ins override the unit: {dropins}" + diagnose(host, unit)


def test_unit_file_unchanged_since_loaded(host: Any, checked: Checked, instance: int) -> None:
    unit = checked.layout.instance_unit(instance)
    need = properties(host, unit).get("NeedDaemonReload")
    assert need == "no", (
        f"{unit}: NeedDaemonReload={need}: the unit file changed on disk since systemd "
        "loaded it (systemctl daemon-reload)" + diagnose(host, unit)
    )


# --------------------------------------------------------------------------- instances


def test_instance_is_running(host: Any, checked: Checked, instance: int, record: Record) -> None:
    unit = checked.layout.instance_unit(instance)
    assert host.service(unit).is_running, (
        f"{unit} of the recorded {record.color} color is not active"
        + diagnose(host, unit, record.port)
    )


def test_no_other_instance_runs(host: Any, checked: Checked, record: Record) -> None:
    """The running ``<name>@*`` units are the recorded ones: no second color left running."""
    lay = checked.layout
    res = host.run(
        "systemctl list-units --plain --no-legend --full "
        "--state=active,activating,deactivating,reloading %s",
        f"{lay.name}@*.service",
    )
    running = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    extra = sorted(running - {lay.instance_unit(i) for i in record.instances})
    assert not extra, (
        f"running, but not in the record ({record.color} {list(record.instances)}): {extra}"
        + "".join(diagnose(host, unit, record.port) for unit in extra)
    )


def test_instance_is_type_notify(host: Any, checked: Checked, instance: int) -> None:
    """``Type=notify``: systemd knows the instance serves only once it said READY=1."""
    unit = checked.layout.instance_unit(instance)
    kind = properties(host, unit).get("Type")
    assert kind == "notify", f"{unit}: Type={kind}, expected notify" + diagnose(host, unit)


def test_instance_is_ready(host: Any, checked: Checked, instance: int) -> None:
    """Its admin ``/ready`` answers 200."""
    status, body, url = admin_get(host, checked, instance, "/ready")
    unit = checked.layout.instance_unit(instance)
    assert status == 200, f"{url}: HTTP {status} {body.strip()[:200]}" + diagnose(host, unit)


def test_instance_check_passes(host: Any, checked: Checked, instance: int) -> None:
    """Its admin ``/check`` (one in-process request to this instance's app) answers 200
    with ``"ok": true``."""
    status, body, url = admin_get(host, checked, instance, "/check")
    unit = checked.layout.instance_unit(instance)
    assert status == 200 and _json_field(body, "ok") is True, (
        f"{url}: HTTP {status} {body.strip()[:300]}" + diagnose(host, unit)
    )


# --------------------------------------------------------------------------- the main port


def test_main_port_listens(host: Any, checked: Checked, record: Record) -> None:
    address = facts.main_address(instance_settings(host, checked, record.instances[0]))
    spec = f"tcp://{address}:{record.port}"
    lay = checked.layout
    unit = lay.socket_unit if record.listen == "socket" else lay.instance_unit(record.instances[0])
    assert host.socket(spec).is_listening, f"nothing listens on {spec}" + diagnose(host, unit)


def test_main_port_listener_count(host: Any, checked: Checked, record: Record) -> None:
    """reuseport: one SO_REUSEPORT listener per instance; socket: one, the socket unit's."""
    found, raw = listeners(host, record.port)
    want = len(record.instances) if record.listen == "reuseport" else 1
    assert len(found) == want, (
        f"{len(found)} listener(s) on :{record.port}, expected {want} ({record.listen} mode, "
        f"instances {list(record.instances)})\n--- ss -ltnpH 'sport = :{record.port}'\n{raw}"
        + diagnose(host, checked.layout.instance_unit(record.instances[0]))
    )


def test_instance_holds_the_main_port(
    host: Any, checked: Checked, instance: int, record: Record
) -> None:
    """reuseport: the instance owns one listener of its own; socket: it holds the socket
    systemd passed it."""
    unit = checked.layout.instance_unit(instance)
    pid = main_pid(host, unit)
    found, raw = listeners(host, record.port)
    if record.listen == "reuseport":
        own = [lst for lst in found if lst.pids == {pid}]
        ok, what = len(own) == 1, f"one listener owned by its MainPID {pid} alone"
    else:
        ok, what = any(pid in lst.pids for lst in found), f"the inherited socket in pid {pid}"
    assert pid and ok, (
        f"{unit}: expected {what} on :{record.port}\n--- ss -ltnpH 'sport = :{record.port}'"
        f"\n{raw}" + diagnose(host, unit)
    )


def test_main_port_held_by_nobody_else(host: Any, checked: Checked, record: Record) -> None:
    """No process but the recorded instances (and systemd, in socket mode) holds the port."""
    found, raw = listeners(host, record.port)
    allowed = set(main_pids(host, checked, record).values()) - {0}
    if record.listen == "socket":
        allowed.add(1)
    strangers = {h for lst in found for h in lst.holders if h[1] not in allowed}
    assert not strangers, (
        f":{record.port} also held by {sorted(strangers)} (name, pid, fd), not recorded "
        f"instances\n--- ss -ltnpH 'sport = :{record.port}'\n{raw}"
        + diagnose(host, checked.layout.instance_unit(record.instances[0]))
    )


def test_socket_unit_is_running(host: Any, checked: Checked, record: Record) -> None:
    _skip_unless(record, "socket", "each instance binds the port itself")
    unit = checked.layout.socket_unit
    assert host.service(unit).is_running, f"{unit} is not active" + diagnose(host, unit)


def test_main_port_held_by_systemd(host: Any, checked: Checked, record: Record) -> None:
    """Socket mode: systemd (pid 1) holds the listener, so it outlives every instance."""
    _skip_unless(record, "socket", "each instance binds the port itself")
    found, raw = listeners(host, record.port)
    assert found and all(1 in lst.pids for lst in found), (
        f":{record.port} not held by systemd (pid 1)\n--- ss -ltnpH 'sport = :{record.port}'"
        f"\n{raw}" + diagnose(host, checked.layout.socket_unit)
    )


def test_tcp_migrate_req_is_on(host: Any, checked: Checked, record: Record) -> None:
    """reuseport: without ``net.ipv4.tcp_migrate_req = 1`` a stopping instance resets the
    connections queued on its listener."""
    _skip_unless(record, "reuseport", "the queue belongs to the shared socket, no sysctl")
    value = host.sysctl(MIGRATE_REQ)
    path = f"{checked.layout.sysctl_dir}/{checked.layout.sysctl_file}"
    assert value == 1, (
        f"{MIGRATE_REQ} = {value!r}, expected 1: stopping an instance resets the "
        f"connections queued on its listener (sysctl -p {path})"
        + diagnose(host, checked.layout.instance_unit(record.instances[0]))
    )


def test_tcp_migrate_req_persists(host: Any, checked: Checked, record: Record) -> None:
    """reuseport: the sysctl drop-in sets it, so it survives a reboot."""
    _skip_unless(record, "reuseport", "the queue belongs to the shared socket, no sysctl")
    dropin = host.file(f"{checked.layout.sysctl_dir}/{checked.layout.sysctl_file}")
    assert dropin.is_file and _MIGRATE_REQ_LINE.search(dropin.content_string), (
        f"{dropin.path} does not set {MIGRATE_REQ} = 1: the setting would not survive a "
        "reboot" + diagnose(host, checked.layout.instance_unit(record.instances[0]))
    )


# --------------------------------------------------------------------------- hardening


def test_unit_file_hardening_as_rendered(host: Any, checked: Checked, record: Record) -> None:
    """The installed unit's sandbox settings are what ``sockact units render`` gives for
    this layout: catches a hand-weakened unit file."""
    lay = checked.layout
    path = f"{lay.unit_dir}/{lay.instance_unit_file}"
    unit_file = host.file(path)
    installed = facts.hardening(unit_file.content_string if unit_file.is_file else "")
    rendered = facts.hardening(render_units(checked.unit_options(record))[lay.instance_unit_file])
    wrong = [
        f"{key}={installed.get(key)} but sockact renders {key}={rendered.get(key)}"
        for key in sorted(set(rendered) | set(installed))
        if rendered.get(key) != installed.get(key)
    ]
    assert not wrong, f"{path}:\n  " + "\n  ".join(wrong) + diagnose(host, lay.instance_unit_file)


def test_running_sandbox_is_the_unit_files(host: Any, checked: Checked, instance: int) -> None:
    """What systemd runs the instance with (``systemctl show``) equals the installed file's
    sandbox; the system call filter allows nothing beyond the file's groups."""
    lay = checked.layout
    unit = lay.instance_unit(instance)
    unit_file = host.file(f"{lay.unit_dir}/{lay.instance_unit_file}")
    installed = facts.hardening(unit_file.content_string if unit_file.is_file else "")
    shown = properties(host, unit)
    wrong = []
    for key, values in installed.items():
        got = shown.get(key, "")
        if key == "SystemCallFilter":
            groups = facts.syscall_groups(
                host.check_output("systemd-analyze syscall-filter --no-pager")
            )
            want_set = facts.expected_syscalls(values, groups)
            got_set = set(got.lstrip("~").split())
            # systemd drops names its libseccomp does not know (riscv_hwprobe...), so
            # fewer calls is fine; an allowed call the unit file does not allow is not
            if got.startswith("~") or not got_set or got_set - want_set:
                deny = "a deny-list; " if got.startswith("~") else ""
                wrong.append(
                    f"SystemCallFilter is not the unit file's allow-list: {deny}allowed "
                    f"beyond it: {sorted(got_set - want_set)[:20]}"
                )
            continue
        want = facts.normalize(key, values)
        if facts.normalize_shown(key, got) != want:
            wrong.append(f"{key}: running {got!r}, unit file {want!r}")
    assert installed and not wrong, (
        f"{unit}:\n  " + "\n  ".join(wrong or ["no unit file"]) + diagnose(host, unit)
    )


def _exposure(host: Any, target: str, offline: bool = False) -> tuple[float | None, str]:
    flags = "--offline=yes " if offline else ""
    res = host.run(f"systemd-analyze security --no-pager {flags}%s", target)
    text = facts.without_ssh_noise(res.stdout + res.stderr)
    return facts.parse_exposure(text), text


def test_instance_exposure(host: Any, checked: Checked, instance: int) -> None:
    """``systemd-analyze security`` of the running instance is no worse than what it gives
    the installed unit file itself (``--offline``), or ``--max-exposure``."""
    lay = checked.layout
    unit = lay.instance_unit(instance)
    score, text = _exposure(host, unit)
    if checked.max_exposure > 0:
        bound, source = checked.max_exposure, "--max-exposure"
    else:
        path = f"{lay.unit_dir}/{lay.instance_unit_file}"
        offline, offline_text = _exposure(host, path, offline=True)
        assert offline is not None, (
            f"systemd-analyze security --offline=yes {path}:\n" + (offline_text[-2000:])
        )
        bound, source = offline + _EXPOSURE_SLACK, f"{path} offline: {offline}"
    assert score is not None and score <= bound, (
        f"{unit}: exposure {score} ({source})\n{text[-3000:]}" + diagnose(host, unit)
    )


# --------------------------------------------------------------------------- release


def test_release_dir_holds_the_recorded_digest(host: Any, record: Record) -> None:
    """The recorded release directory is a complete install of the recorded digest: its
    ``release.json`` (written last by an install) says so."""
    meta = host.file(f"{record.release_dir}/{RELEASE_META}")
    installed = _json_field(meta.content_string, "digest") if meta.is_file else None
    assert installed == record.digest, (
        f"{meta.path} says digest {installed!r}, the record {record.digest!r} ({record.label})"
    )


def test_instance_links_to_the_release(
    host: Any, checked: Checked, instance: int, record: Record
) -> None:
    link = host.file(checked.layout.instance_link(instance))
    target = link.linked_to if link.is_symlink else "(not a link)"
    assert target == record.release_dir, (
        f"{link.path} -> {target}, expected {record.release_dir} ({record.label})"
        + diagnose(host, checked.layout.instance_unit(instance))
    )


def test_instance_runs_from_its_link(host: Any, checked: Checked, instance: int) -> None:
    """The process's command line runs sockact from the instance link, so it runs what
    the link points to."""
    unit = checked.layout.instance_unit(instance)
    link = checked.layout.instance_link(instance)
    pid = main_pid(host, unit)
    assert pid, f"{unit}: not running (MainPID=0)" + diagnose(host, unit)
    args = host.process.get(pid=pid).args  # the interpreter, then the script it runs
    assert any(word.startswith(f"{link}/") for word in args.split()), (
        f"{unit}: pid {pid} runs {args!r}, not from {link}/" + diagnose(host, unit)
    )


def test_instance_reports_the_recorded_release(
    host: Any, checked: Checked, instance: int, record: Record
) -> None:
    """Its admin ``/release`` (the digest the process computed from its own installed
    distributions at start) is the recorded digest."""
    status, body, url = admin_get(host, checked, instance, "/release")
    runs = _json_field(body, "digest")
    assert runs == record.digest, (
        f"{url} (HTTP {status}) says digest {runs!r}, recorded {record.digest!r} "
        f"({record.label})" + diagnose(host, checked.layout.instance_unit(instance))
    )


# --------------------------------------------------------------------------- service's reach


def _stat(host: Any, *paths: str) -> dict[str, tuple[str, str, int]]:
    """path -> (owner, group, mode) of each path that exists; the check fails when stat
    cannot read one that exists (no root: a check that cannot look is not green)."""
    res = host.run("LC_ALL=C stat -c '%%n|%%U|%%G|%%a' -- " + " ".join(["%s"] * len(paths)), *paths)
    found, unreadable = facts.parse_stat(res.stdout, res.stderr)
    assert not unreadable, f"cannot stat: {unreadable} (run as root, or with -- --sudo)"
    return found


def _parents(path: str) -> list[str]:
    """``path`` and every directory above it, up to ``/``."""
    parts = path.rstrip("/").split("/")
    return ["/".join(parts[:n]) or "/" for n in range(len(parts), 0, -1)]


def test_instance_files_belong_to_root_and_hide_from_others(
    host: Any, checked: Checked, instance: int
) -> None:
    """The instance's settings and app environment (it may hold secrets) are root's, in
    the service's group (``--group``, by default the user's name: the ``Group=`` that
    ``units render`` writes, :attr:`Checked.service_group`), at most 0640, in a directory
    the service cannot write."""
    lay = checked.layout
    group_want = checked.service_group
    config, env = lay.instance_config(instance), lay.instance_env(instance)
    found = _stat(host, lay.instance_config_dir, config, env)
    wrong = []
    for path in (config, env):
        if path not in found:
            if path == config:
                wrong.append(f"{path}: missing")
            continue  # an instance without an env file is right
        user, group, mode = found[path]
        if user != "root" or group != group_want or mode & 0o027:
            wrong.append(
                f"{path}: {user}:{group} {mode:04o} (want root:{group_want}, at most 0640)"
            )
    if lay.instance_config_dir in found:
        user, group, mode = found[lay.instance_config_dir]
        if user != "root" or mode & 0o022:
            wrong.append(
                f"{lay.instance_config_dir}: {user}:{group} {mode:04o} (want root, no g+w)"
            )
    assert not wrong, "; ".join(wrong) + diagnose(host, lay.instance_unit(instance))


def test_release_is_not_writable_by_the_service(
    host: Any, checked: Checked, record: Record
) -> None:
    """Nothing the instances run can be changed by the service user: the recorded release
    (and everything in it), the instance links, and every directory above them up to ``/``
    are root's and writable by root alone (a release root owned by the service user would
    let it swap ``releases/`` under the root-owned links).

    Each problem is named once: the release directory itself by the ``stat`` of it and the
    directories above (sticky ones above it, such as ``/tmp``, excepted; not the release
    itself), what is inside it by ``find -mindepth 1`` (the first such path only)."""
    lay = checked.layout
    dirs = sorted(
        set(_parents(record.release_dir) + _parents(lay.instances_dir)), key=lambda d: d.count("/")
    )
    links = [lay.instance_link(i) for i in record.instances]
    found = _stat(host, *dirs, *links)

    def loose(path: str, mode: int) -> bool:
        sticky = mode & 0o1000 and path != record.release_dir
        return path in dirs and bool(mode & 0o022) and not sticky

    problems = [
        f"{path}: {user}:{group} {mode:04o}"
        for path, (user, group, mode) in sorted(found.items())
        if user != "root" or loose(path, mode)
    ]
    missing = [d for d in (record.release_dir, lay.instances_dir) if d not in found]
    inside = host.run(
        "LC_ALL=C find %s -mindepth 1 ! -type l \\( -perm /022 -o ! -user root \\) -print -quit",
        record.release_dir,
    )
    problems += [
        f"{line}: not root's, or group/other writable" for line in inside.stdout.splitlines()
    ]
    if inside.rc != 0:
        why = facts.without_ssh_noise(inside.stderr)
        problems.append(f"find in {record.release_dir} failed (exit {inside.rc}): {why}")
    assert not problems and not missing, (
        f"the service could change what it runs: {problems}; missing: {missing}"
        + diagnose(host, lay.instance_unit(record.instances[0]))
    )


def test_admin_server_listens_on_loopback(host: Any, checked: Checked, instance: int) -> None:
    """The admin server listens on loopback only (the default): it answers /metrics,
    /check and /release to whoever reaches it. A host that exposes it on purpose (a
    Prometheus elsewhere, docs/metrics.md) deselects this check: ``-- -k 'not loopback'``."""
    cfg = instance_settings(host, checked, instance)
    port = int(cfg.get("admin_port") or layout_admin_port(instance))
    found, out = listeners(host, port)
    exposed = [lst.local for lst in found if not facts.is_loopback(lst.local)]
    assert not exposed, (
        f"admin port {port} listens on {exposed}, not only on loopback:\n{out}"
        + diagnose(host, checked.layout.instance_unit(instance), port)
    )


# --------------------------------------------------------------------------- journal


def test_journal_has_no_errors_since_start(host: Any, checked: Checked, instance: int) -> None:
    """Nothing of priority err or worse in the instance's journal since its process
    started."""
    unit = checked.layout.instance_unit(instance)
    res = host.run("systemctl show --timestamp=unix -p ExecMainStartTimestamp --value %s", unit)
    started = res.stdout.strip()
    assert started.startswith("@"), (
        f"{unit}: not running (no ExecMainStartTimestamp), no journal to check"
        + diagnose(host, unit)
    )
    res = host.run("journalctl --no-pager -q -o short-iso -p err -u %s --since %s", unit, started)
    errors = facts.without_ssh_noise(res.stdout + res.stderr)
    assert res.rc == 0 and not errors, (
        f"{unit}: priority err or worse since its start ({started}):\n{errors}"
        + diagnose(host, unit)
    )
