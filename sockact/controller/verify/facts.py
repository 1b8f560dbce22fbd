"""What the host checks read, parsed: the deploy record, an instance's config, ``ss``
output, unit files and the system call groups of systemd.

Pure functions of text: no pytest, no testinfra, no host (the checks fetch the text).

>>> rec, problems = parse_record('{"color": "green", "instances": [1]}')
>>> rec is None, problems[0]
(True, 'release=None: must be an object with label, digest and dir')
"""

from __future__ import annotations

import errno
import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from sockact import layout, settings

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
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Record:
    """``deploy.json`` of a host: what the last finished switch left running."""

    color: str
    #: the release: its label, its digest (of its distributions' content), its directory
    label: str
    digest: str
    release_dir: str
    instances: tuple[int, ...]
    listen: str
    port: int


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
    if color not in layout.COLOR_OFFSETS:
        problems.append(f"color={color!r}: must be one of {sorted(layout.COLOR_OFFSETS)}")
    if not isinstance(rel, dict):
        problems.append(f"release={rel!r}: must be an object with label, digest and dir")
        rel = {}
    label, digest, rdir = rel.get("label"), rel.get("digest"), rel.get("dir")
    if rel and (not isinstance(label, str) or not label):
        problems.append(f"release.label={label!r}: must be a non-empty string")
    if rel and (not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest)):
        problems.append(f"release.digest={digest!r}: must be a sha256 in hex")
    if rel and (not isinstance(rdir, str) or not rdir.startswith("/")):
        problems.append(f"release.dir={rdir!r}: must be an absolute path")
    if (
        not isinstance(instances, list)
        or not instances
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in instances)
    ):
        problems.append(f"instances={instances!r}: must be a non-empty list of integers")
    elif color in layout.COLOR_OFFSETS:
        wrong = [i for i in instances if _color(i) != color]
        if wrong:
            first = layout.COLOR_OFFSETS[color] + 1
            last = first + layout.MAX_PER_COLOR - 1
            problems.append(f"instances {wrong} are not {color} ({first}..{last})")
    if listen not in layout.DEPLOY_LISTEN_MODES:
        problems.append(f"listen={listen!r}: must be one of {list(layout.DEPLOY_LISTEN_MODES)}")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        problems.append(f"port={port!r}: must be an integer 1-65535")
    if problems or not isinstance(instances, list) or not isinstance(port, int):
        return None, problems
    record = Record(
        str(color), str(label), str(digest), str(rdir), tuple(instances), str(listen), port
    )
    return record, []


def _color(instance: int) -> str | None:
    try:
        return layout.color_of(instance)
    except ValueError:
        return None


# --------------------------------------------------------------------------- instance config


def instance_settings(toml_text: str | None) -> dict[str, Any]:
    """An instance's config file as a dict; empty when missing or not TOML (the instance
    would not start then, and another check says so)."""
    if not toml_text:
        return {}
    try:
        return tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError:
        return {}


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def admin_url(cfg: dict[str, Any], instance: int) -> str:
    """``http://host:port`` of the admin server of ``instance`` with config ``cfg``."""
    address = str(cfg.get("admin_host") or settings.SERVE["admin_host"].default)
    port = cfg.get("admin_port") or layout.admin_port(instance)
    return f"http://{_url_host(address)}:{port}"


def main_address(cfg: dict[str, Any]) -> str:
    """The address the main listener binds (``host``), as testinfra's socket spec wants it."""
    return str(cfg.get("host") or settings.SERVE["host"].default)


# --------------------------------------------------------------------------- command output

#: what ssh itself prints on stderr with UserKnownHostsFile=/dev/null: not the host's output
_SSH_NOISE = re.compile(r"^Warning: Permanently added .* to the list of known hosts\.?$")


def without_ssh_noise(text: str) -> str:
    """``text`` without ssh's own warnings, stripped."""
    lines = text.splitlines()
    return "\n".join(line for line in lines if not _SSH_NOISE.match(line.strip())).strip()


#: what ``stat`` prints for a path that does not exist (it runs with ``LC_ALL=C``)
_STAT_MISSING = "No such file or directory"


def parse_stat(stdout: str, stderr: str) -> tuple[dict[str, tuple[str, str, int]], list[str]]:
    """The output of ``LC_ALL=C stat -c '%n|%U|%G|%a' -- PATH...``: path -> (owner, group,
    mode) of each path that exists, and stat's complaints about the paths it could not read
    (a check that cannot look must fail, not pass). A path that does not exist is no
    complaint (the caller knows which must exist). Only stat's own lines count: the same
    stderr carries ssh's warnings ("Warning: Permanently added ... to the list of known
    hosts.", once per connection without a known_hosts file), sudo's, a login script's.
    """
    found = {}
    for line in stdout.splitlines():
        parts = line.rsplit("|", 3)
        if len(parts) == 4 and re.fullmatch(r"[0-7]{3,4}", parts[3]):
            found[parts[0]] = (parts[1], parts[2], int(parts[3], 8))
    unreadable = [
        line.strip()
        for line in stderr.splitlines()
        if line.startswith("stat:") and _STAT_MISSING not in line
    ]
    return found, unreadable


_USERS_RE = re.compile(r'\("([^"]*)",pid=(\d+),fd=(\d+)\)')


@dataclass(frozen=True)
class Listener:
    """One listening socket as ``ss -ltnpH`` shows it."""

    local: str
    #: (process name, pid, fd) of every process holding the socket
    holders: tuple[tuple[str, int, int], ...]

    @property
    def pids(self) -> set[int]:
        return {pid for _comm, pid, _fd in self.holders}


def parse_listeners(ss_output: str) -> list[Listener]:
    """The listening sockets of ``ss -ltnpH`` output."""
    found = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        holders = tuple((comm, int(pid), int(fd)) for comm, pid, fd in _USERS_RE.findall(line))
        found.append(Listener(fields[3], holders))
    return found


def is_loopback(local: str) -> bool:
    """Whether ``ss``'s local address (``127.0.0.1:9001``, ``[::1]:9001``, with an interface
    scope ``[::1]%lo:9001`` when the socket is bound to a device, ``*:9001``) is a loopback
    address; a wildcard or a name is not."""
    address = local.rpartition(":")[0] if ":" in local else local
    address = address.partition("%")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


_EXPOSURE_RE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def parse_exposure(text: str) -> float | None:
    """The overall exposure of ``systemd-analyze security UNIT`` output, or None."""
    match = _EXPOSURE_RE.search(text)
    return float(match.group(1)) if match else None


# --------------------------------------------------------------------------- unit files


def unit_settings(text: str, section: str = "Service") -> dict[str, list[str]]:
    """Assignments in one section of a unit file; an empty assignment resets a list key."""
    found: dict[str, list[str]] = {}
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
            found[key] = [""]
        else:
            found[key] = [v for v in found.get(key, []) if v != ""] + [value]
    return found


def hardening(text: str) -> dict[str, list[str]]:
    """The sandbox settings (:data:`HARDENING_KEYS`) of an instance unit file."""
    found = unit_settings(text)
    return {key: found[key] for key in HARDENING_KEYS if key in found}


def syscall_groups(text: str) -> dict[str, set[str]]:
    """``systemd-analyze syscall-filter`` output: every ``@group`` -> its members (groups
    inside groups not expanded)."""
    groups: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), set())
        elif current is not None and line.startswith(" ") and line.strip()[:1] not in ("#", ""):
            current.add(line.strip())
    return groups


def expand_syscalls(words: list[str], groups: dict[str, set[str]]) -> set[str]:
    """System call names and ``@groups`` -> the system calls they name."""
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
    if key != "UMask" and value.lower() in _TRUE:
        return "yes"
    if key != "UMask" and value.lower() in _FALSE:
        return "no"
    return value


def normalize_shown(key: str, value: str) -> str:
    """A ``systemctl show`` value in the form :func:`normalize` gives."""
    if key in _SET_KEYS:
        return " ".join(sorted(value.split()))
    return value
