"""Helpers of the testinfra suite: the deploy record, ``systemctl show``, ``ss``, diagnosis.

Everything runs through testinfra's ``host`` (``host.run``), so the same code checks a
host over ssh/ansible or the local machine.
"""

from __future__ import annotations

import errno
import json
import re
from dataclasses import dataclass
from typing import Any

#: first instance number of each color (docs/architecture.md): blue 1..N, green 101..100+N
COLOR_BASE = {"blue": 1, "green": 101}
LISTEN_MODES = ("reuseport", "socket")

#: [Service] keys of the instance unit that make up its sandbox; compared key by key
#: between the installed unit file, what sockact renders, and the running unit.
HARDENING_KEYS = (
    "User",
    "Group",
    "DynamicUser",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "PrivateNetwork",
    "PrivateUsers",
    "DevicePolicy",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "ProcSubset",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RemoveIPC",
    "KeyringMode",
    "UMask",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
)
#: keys whose values are unordered word lists
_SET_KEYS = ("RestrictAddressFamilies", "CapabilityBoundingSet", "AmbientCapabilities")
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")


@dataclass(frozen=True)
class Record:
    """``/etc/<name>/deploy.json``: what the last finished switch left running."""

    color: str
    #: the release: its label, its digest (of its distributions' content), its directory
    label: str
    digest: str
    release_dir: str
    instances: tuple[int, ...]
    listen: str
    port: int

    @property
    def other_color(self) -> str:
        return "green" if self.color == "blue" else "blue"

    def units(self, name: str) -> list[str]:
        return [f"{name}@{i}.service" for i in self.instances]


def parse_record(text: str) -> tuple[Record | None, list[str]]:
    """The record, or None and one line per problem."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        return None, [f"not JSON: {exc}"]
    if not isinstance(data, dict):
        return None, ["not a JSON object"]
    problems = []
    color, rel = data.get("color"), data.get("release")
    instances, listen, port = data.get("instances"), data.get("listen"), data.get("port")
    if color not in COLOR_BASE:
        problems.append(f"color={color!r}: must be one of {sorted(COLOR_BASE)}")
    if not isinstance(rel, dict):
        problems.append(f"release={rel!r}: must be an object with label, digest and dir")
        rel = {}
    label, digest, rdir = rel.get("label"), rel.get("digest"), rel.get("dir")
    if rel and (not isinstance(label, str) or not label):
        problems.append(f"release.label={label!r}: must be a non-empty string")
    if rel and (not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest)):
        problems.append(f"release.digest={digest!r}: must be a sha256 in hex")
    if rel and (not isinstance(rdir, str) or not rdir.startswith("/")):
        problems.append(f"release.dir={rdir!r}: must be an absolute path")
    if (
        not isinstance(instances, list)
        or not instances
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in instances)
    ):
        problems.append(f"instances={instances!r}: must be a non-empty list of integers")
    elif color in COLOR_BASE:
        base = COLOR_BASE[color]
        wrong = [i for i in instances if not base <= i < base + 100]
        if wrong:
            problems.append(f"instances {wrong} are not {color} ({base}..{base + 99})")
    if listen not in LISTEN_MODES:
        problems.append(f"listen={listen!r}: must be one of {list(LISTEN_MODES)}")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        problems.append(f"port={port!r}: must be an integer 1-65535")
    if problems:
        return None, problems
    return (
        Record(
            str(color), str(label), str(digest), str(rdir), tuple(instances), str(listen), int(port)
        ),
        [],
    )


#: what ssh itself prints on stderr with UserKnownHostsFile=/dev/null: not the host's output
_SSH_NOISE = re.compile(r"^Warning: Permanently added .* to the list of known hosts\.?$")


def output(res: Any) -> str:
    """stdout + stderr of a command result, without ssh's own warnings."""
    lines = (res.stdout + res.stderr).splitlines()
    return "\n".join(line for line in lines if not _SSH_NOISE.match(line.strip())).strip()


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
        out = output(res) or "(no output)"
        sections.append(f"--- $ {command}  (exit {res.rc})\n{out}")
    return f"\n===== diagnosis of {unit} on this host =====\n" + "\n".join(sections)


def show(host: Any, unit: str, *props: str, unix_time: bool = False) -> dict[str, str]:
    """``systemctl show UNIT -p A,B`` as a dict (timestamps as ``@<epoch>`` if asked)."""
    flags = "--timestamp=unix " if unix_time else ""
    res = host.run(f"systemctl show {flags}%s -p %s", unit, ",".join(props))
    values: dict[str, str] = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


_USERS_RE = re.compile(r'\("([^"]*)",pid=(\d+),fd=(\d+)\)')


@dataclass(frozen=True)
class Listener:
    local: str
    #: (process name, pid, fd) of every process holding the socket
    holders: tuple[tuple[str, int, int], ...]

    @property
    def pids(self) -> set[int]:
        return {pid for _comm, pid, _fd in self.holders}


def listeners(host: Any, port: int) -> tuple[list[Listener], str]:
    """Listening TCP sockets on ``port`` (``ss -ltnpH 'sport = :PORT'``) and the raw output."""
    res = host.run("ss -ltnpH %s", f"sport = :{int(port)}")
    found = []
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        holders = tuple((comm, int(pid), int(fd)) for comm, pid, fd in _USERS_RE.findall(line))
        found.append(Listener(fields[3], holders))
    return found, res.stdout


def unit_settings(text: str, section: str = "Service") -> dict[str, list[str]]:
    """Assignments in one section of a unit file; an empty assignment resets a list key."""
    settings: dict[str, list[str]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        if current != section or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value == "":
            settings[key] = [""]
        else:
            settings.setdefault(key, [])
            settings[key] = [v for v in settings[key] if v != ""] + [value]
    return settings


def hardening(text: str) -> dict[str, list[str]]:
    """The sandbox settings (``HARDENING_KEYS``) of an instance unit file."""
    settings = unit_settings(text)
    return {key: settings[key] for key in HARDENING_KEYS if key in settings}


def syscall_groups(host: Any) -> dict[str, set[str]]:
    """Every ``@group`` systemd knows on this host -> its members (groups not expanded)."""
    res = host.run("systemd-analyze syscall-filter --no-pager")
    groups: dict[str, set[str]] = {}
    current = None
    for line in res.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), set())
        elif current is not None and line.startswith(" ") and line.strip()[:1] not in ("#", ""):
            current.add(line.strip())
    return groups


def expand_syscalls(words: list[str], groups: dict[str, set[str]]) -> set[str]:
    out: set[str] = set()
    todo = list(words)
    seen: set[str] = set()
    while todo:
        word = todo.pop()
        if word in seen:
            continue
        seen.add(word)
        if word.startswith("@"):
            todo.extend(groups.get(word, set()))
        else:
            out.add(word)
    return out


def expected_syscalls(values: list[str], groups: dict[str, set[str]]) -> set[str]:
    """The allow-list systemd builds from ``SystemCallFilter=`` lines (allow-list first)."""
    allowed: set[str] = set()
    for value in values:
        deny = value.startswith("~")
        words = value.lstrip("~").split()
        if deny:
            allowed -= expand_syscalls(words, groups)
        else:
            allowed |= expand_syscalls(words, groups)
    return allowed


def normalize(key: str, values: list[str]) -> str:
    """A unit-file value in the form ``systemctl show`` prints it."""
    value = " ".join(v for v in values if v)
    if key in _SET_KEYS:
        return " ".join(sorted(value.split()))
    if key == "SystemCallErrorNumber" and hasattr(errno, value):
        return str(getattr(errno, value))
    if value.lower() in _TRUE and key not in ("UMask",):
        return "yes"
    if value.lower() in _FALSE and key not in ("UMask",):
        return "no"
    return value


def normalize_shown(key: str, value: str) -> str:
    if key in _SET_KEYS:
        return " ".join(sorted(value.split()))
    return value
