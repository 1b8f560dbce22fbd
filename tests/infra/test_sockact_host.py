"""Is this host right? Checks a host against its deploy record after a deploy.

    pytest tests/infra --hosts=ansible://api --ansible-inventory=inventory.ini

Each test reads ``/etc/<name>/deploy.json`` (fixture ``record``) and checks one thing on
every recorded instance; a failure lists every instance that is wrong, each with
``systemctl status``, its journal and ``ss -ltnp`` (``diagnose``).
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
from sockact_infra import (
    HARDENING_KEYS,
    Record,
    diagnose,
    expected_syscalls,
    hardening,
    listeners,
    normalize,
    normalize_shown,
    output,
    show,
    syscall_groups,
)

from sockact.controller.units import UnitOptions, render_units


def _fail(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def _unit_files(layout: Any, record: Record) -> list[str]:
    files = [f"{layout.unit_dir}/{layout.name}@.service"]
    if record.listen == "socket":
        files += [
            f"{layout.unit_dir}/{layout.name}.socket",
            f"{layout.unit_dir}/{layout.name}.service",
        ]
    return files


def _admin(host: Any, layout: Any, instance: int) -> str:
    """``host:port`` of an instance's admin server, from its config file (else the default)."""
    res = host.run("cat %s", f"{layout.config_dir}/instances/{instance}.toml")
    try:
        cfg = tomllib.loads(res.stdout) if res.rc == 0 else {}
    except tomllib.TOMLDecodeError:
        cfg = {}
    return f"{cfg.get('admin_host', '127.0.0.1')}:{cfg.get('admin_port', 9000 + instance)}"


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


def _get(host: Any, url: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET on the host; status 0 when nothing answered."""
    res = host.run("python3 -c %s %s", _GET, url)
    body, _, code = res.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def _main_pids(host: Any, layout: Any, record: Record) -> dict[int, int]:
    return {
        i: int(show(host, f"{layout.name}@{i}.service", "MainPID").get("MainPID", "0") or 0)
        for i in record.instances
    }


# --------------------------------------------------------------------------- record, files


def test_deploy_record(record: Record) -> None:
    """deploy.json exists and is valid (the fixture fails with the problems otherwise)."""
    assert record.instances


def test_unit_files_installed_and_verify_clean(host: Any, layout: Any, record: Record) -> None:
    problems = []
    files = _unit_files(layout, record)
    if record.listen == "reuseport":
        files.append(layout.sysctl_file)
    for path in files:
        if not host.file(path).is_file:
            problems.append(f"missing: {path}")
    if not problems:
        # the template itself verifies as instance "i" (no such release link): verify the
        # recorded instances, and the socket and holder in socket mode
        names = record.units(layout.name)
        if record.listen == "socket":
            names += [f"{layout.name}.socket", f"{layout.name}.service"]
        units = " ".join(names)
        res = host.run(f"systemd-analyze verify --man=no {units}")
        noise = output(res)
        if res.rc != 0 or noise:
            problems.append(f"systemd-analyze verify {units} (exit {res.rc}):\n{noise}")
    if problems:
        problems.append(diagnose(host, f"{layout.name}@.service"))
    _fail(problems)


def test_units_loaded_from_the_installed_files(host: Any, layout: Any, record: Record) -> None:
    """The running units are the installed files: no drop-in, no pending daemon-reload."""
    problems = []
    for unit in record.units(layout.name):
        props = show(host, unit, "FragmentPath", "DropInPaths", "NeedDaemonReload")
        want = f"{layout.unit_dir}/{layout.name}@.service"
        wrong = []
        if props.get("FragmentPath") != want:
            wrong.append(f"FragmentPath={props.get('FragmentPath')!r}, expected {want}")
        if props.get("DropInPaths"):
            wrong.append(f"drop-ins override the unit: {props['DropInPaths']}")
        if props.get("NeedDaemonReload") != "no":
            wrong.append("unit file changed on disk since loaded: systemctl daemon-reload")
        if wrong:
            problems.append(f"{unit}: " + "; ".join(wrong) + diagnose(host, unit))
    _fail(problems)


# --------------------------------------------------------------------------- instances


def test_exactly_the_recorded_color_is_active(host: Any, layout: Any, record: Record) -> None:
    res = host.run(
        "systemctl list-units --plain --no-legend --state=active %s", f"{layout.name}@*.service"
    )
    active = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    expected = set(record.units(layout.name))
    problems = []
    if missing := sorted(expected - active):
        problems.append(f"recorded {record.color} instances not active: {missing}")
    if extra := sorted(active - expected):
        problems.append(
            f"instances running that the record ({record.color} {list(record.instances)}) does "
            f"not name (a second color left running?): {extra}"
        )
    if problems:
        for unit in sorted((expected - active) | (active - expected)):
            problems.append(diagnose(host, unit, record.port))
    _fail(problems)


def test_instances_active_notify_ready_and_check_ok(host: Any, layout: Any, record: Record) -> None:
    problems = []
    for i in record.instances:
        unit = f"{layout.name}@{i}.service"
        props = show(host, unit, "Type", "ActiveState", "SubState", "MainPID")
        wrong = []
        if props.get("Type") != "notify":
            wrong.append(f"Type={props.get('Type')}, expected notify")
        if props.get("ActiveState") != "active" or props.get("MainPID", "0") == "0":
            wrong.append(
                f"ActiveState={props.get('ActiveState')}/{props.get('SubState')} "
                f"MainPID={props.get('MainPID')}"
            )
        admin = _admin(host, layout, i)
        status, body = _get(host, f"http://{admin}/ready")
        if status != 200:
            wrong.append(f"/ready on {admin}: HTTP {status} {body.strip()[:200]}")
        status, body = _get(host, f"http://{admin}/check")
        try:
            ok = json.loads(body).get("ok") is True
        except (ValueError, AttributeError):
            ok = False
        if status != 200 or not ok:
            wrong.append(f"/check on {admin}: HTTP {status} {body.strip()[:300]}")
        if wrong:
            problems.append(f"{unit}: " + "; ".join(wrong) + diagnose(host, unit, record.port))
    _fail(problems)


# --------------------------------------------------------------------------- the main port


def test_main_port_held_by_the_recorded_instances(host: Any, layout: Any, record: Record) -> None:
    found, raw = listeners(host, record.port)
    pids = _main_pids(host, layout, record)
    problems = []
    if record.listen == "reuseport":
        # one SO_REUSEPORT listener per instance, each owned by that instance alone
        holders = [lst.pids for lst in found]
        owners = set().union(*holders) if holders else set()
        if len(found) != len(record.instances):
            problems.append(
                f"{len(found)} listener(s) on :{record.port}, expected one per instance "
                f"({len(record.instances)})"
            )
        if owners != set(pids.values()) or any(len(h) != 1 for h in holders):
            problems.append(f"listener owners {sorted(owners)} != MainPIDs {pids} (instance: pid)")
    else:
        active = show(host, f"{layout.name}.socket", "ActiveState").get("ActiveState")
        if active != "active":
            problems.append(f"{layout.name}.socket is {active}, expected active")
        if len(found) != 1:
            problems.append(f"{len(found)} listener(s) on :{record.port}, expected 1 (the socket)")
        for lst in found:
            if 1 not in lst.pids:
                problems.append(f"{lst.local} not held by systemd (pid 1): {lst.holders}")
            if missing := {i: p for i, p in pids.items() if p not in lst.pids}:
                problems.append(f"{lst.local}: instances without the inherited fd: {missing}")
            if strangers := lst.pids - set(pids.values()) - {1}:
                problems.append(f"{lst.local}: also held by unexpected pids {sorted(strangers)}")
    if problems:
        problems.append(f"--- ss -ltnpH 'sport = :{record.port}'\n{raw}")
        unit = (
            f"{layout.name}.socket" if record.listen == "socket" else record.units(layout.name)[0]
        )
        problems.append(diagnose(host, unit))
    _fail(problems)


def test_tcp_migrate_req_where_reuseport(host: Any, layout: Any, record: Record) -> None:
    if record.listen != "reuseport":
        pytest.skip("socket mode: the queue belongs to the shared socket, no sysctl needed")
    value = host.run("sysctl -n net.ipv4.tcp_migrate_req").stdout.strip()
    dropin = host.file(layout.sysctl_file)
    persisted = dropin.is_file and re.search(
        r"^\s*net\.ipv4\.tcp_migrate_req\s*=\s*1\s*$", dropin.content_string, re.M
    )
    if not persisted:
        pytest.fail(
            f"{layout.sysctl_file} does not set net.ipv4.tcp_migrate_req = 1: the setting "
            "would not survive a reboot",
            pytrace=False,
        )
    if value != "1":
        pytest.fail(
            f"net.ipv4.tcp_migrate_req = {value!r}, expected 1: stopping an instance resets "
            f"the connections queued on its listener. Load {layout.sysctl_file} "
            f"(sysctl -p {layout.sysctl_file})." + diagnose(host, record.units(layout.name)[0]),
            pytrace=False,
        )


# --------------------------------------------------------------------------- hardening


def test_hardening_of_running_units_matches_unit_file(
    host: Any, layout: Any, record: Record
) -> None:
    path = f"{layout.unit_dir}/{layout.name}@.service"
    installed = hardening(host.file(path).content_string)
    # what sockact itself renders for this layout: catches a hand-weakened unit file
    opts = UnitOptions(
        name=layout.name,
        user=layout.user,
        config_dir=layout.config_dir,
        release_root=layout.release_root,
        listen=record.listen,
        port=record.port,
    )
    rendered = hardening(render_units(opts)[f"{layout.name}@.service"])
    problems = []
    for key in sorted(set(rendered) | set(installed)):
        if rendered.get(key) != installed.get(key):
            problems.append(
                f"{path}: {key}={installed.get(key)} but sockact renders {key}={rendered.get(key)}"
            )
    groups = syscall_groups(host)
    keys = [k for k in HARDENING_KEYS if k in installed]
    for unit in record.units(layout.name):
        shown = show(host, unit, *keys)
        wrong = []
        for key in keys:
            got = shown.get(key)
            if key == "SystemCallFilter":
                want_set = expected_syscalls(installed[key], groups)
                got_set = set((got or "").lstrip("~").split())
                # systemd drops names its libseccomp does not know (riscv_hwprobe...), so
                # fewer calls is fine; an allowed call the unit file does not allow is not
                if (got or "").startswith("~") or not got_set or got_set - want_set:
                    wrong.append(
                        f"SystemCallFilter is not the unit file's allow-list: "
                        f"{'deny-list ' if (got or '').startswith('~') else ''}"
                        f"allowed beyond it: {sorted(got_set - want_set)[:20]}"
                    )
                continue
            want = normalize(key, installed[key])
            if normalize_shown(key, got or "") != want:
                wrong.append(f"{key}: running {got!r}, unit file {want!r}")
        exposure = host.run("systemd-analyze security --no-pager %s", unit)
        last = exposure.stdout.strip().splitlines()[-1:] or ["(no output)"]
        try:
            score = float(last[0].split("level for")[1].split(":")[1].split()[0])
        except (IndexError, ValueError):
            score = None
        if score is None or score > layout.max_exposure:
            wrong.append(
                f"systemd-analyze security: {last[0]} (allowed <= {layout.max_exposure})"
                + ("" if score is not None else f"\n{exposure.stderr.strip()}")
            )
        if wrong:
            problems.append(f"{unit}:\n  " + "\n  ".join(wrong) + diagnose(host, unit))
    _fail(problems)


# --------------------------------------------------------------------------- release


def test_instances_run_the_recorded_release(host: Any, layout: Any, record: Record) -> None:
    """The release directory is a complete install of the recorded digest, every instance
    links to it, runs from the link, and reports that digest at its admin ``/release``
    (computed by the process from its own installed distributions)."""
    problems = []
    meta = host.file(f"{record.release_dir}/release.json")
    try:
        installed = json.loads(meta.content_string).get("digest") if meta.is_file else None
    except ValueError:
        installed = None
    if installed != record.digest:
        problems.append(
            f"{record.release_dir}/release.json says digest {installed!r}, "
            f"the record {record.digest!r} ({record.label})"
        )
    pids = _main_pids(host, layout, record)
    for i in record.instances:
        unit = f"{layout.name}@{i}.service"
        wrong = []
        link = host.file(f"{layout.release_root}/instances/{i}")
        if not link.is_symlink or link.linked_to != record.release_dir:
            target = link.linked_to if link.is_symlink else "(not a link)"
            wrong.append(f"{link.path} -> {target}, expected {record.release_dir}")
        pid = pids[i]
        if pid:
            cmdline = host.run("cat /proc/%s/cmdline", str(pid)).stdout.replace("\0", " ").strip()
            if f"{link.path}/" not in cmdline:
                wrong.append(f"pid {pid} command line is not from {link.path}: {cmdline}")
        else:
            wrong.append("not running (MainPID=0)")
        status, body = _get(host, f"http://{_admin(host, layout, i)}/release")
        try:
            runs = json.loads(body).get("digest")
        except (ValueError, AttributeError):
            runs = None
        if runs != record.digest:
            wrong.append(
                f"/release (HTTP {status}) says digest {runs!r}, "
                f"recorded {record.digest!r} ({record.label})"
            )
        if wrong:
            problems.append(
                f"{unit} (recorded release {record.label} {record.digest[:12]}): "
                + "; ".join(wrong)
                + diagnose(host, unit)
            )
    _fail(problems)


# --------------------------------------------------------------------------- journal


def test_journal_has_no_errors_since_start(host: Any, layout: Any, record: Record) -> None:
    problems = []
    for unit in record.units(layout.name):
        started = show(host, unit, "ExecMainStartTimestamp", unix_time=True).get(
            "ExecMainStartTimestamp", ""
        )
        if not started.startswith("@"):
            problems.append(
                f"{unit}: not running (no ExecMainStartTimestamp), no journal to check"
                + diagnose(host, unit)
            )
            continue
        res = host.run(
            "journalctl --no-pager -q -o short-iso -p err -u %s --since %s", unit, started
        )
        if res.rc != 0 or output(res):
            problems.append(
                f"{unit}: priority err or worse since its start ({started}):\n"
                f"{output(res)}" + diagnose(host, unit)
            )
    _fail(problems)
