"""One frozen :class:`Config` for ``sockact serve``, merged from three sources.

Precedence: TOML file (``--config``) < environment ``SOCKACT_<KEY>`` < command-line flags.
Every problem is collected and reported at once, naming the key and where the value came
from, before anything binds::

    $ SOCKACT_PORT=http sockact check-config --config api.toml --instance 0
    sockact: error: 2 problems in the configuration
    sockact: error: port = 'http' (env SOCKACT_PORT): not an integer
    sockact: error: instance = '0' (flag --instance): must be between 1 and 65535

What is valid (type, default, range of each key) is the one table in
:mod:`sockact.settings`; this module reads the sources and checks the combination.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sockact import layout, settings
from sockact.errors import BadInput

ENV_PREFIX = "SOCKACT_"
#: A config file holds a few dozen short lines; anything bigger is a mistake (a log file,
#: a device), refused before it is read.
MAX_CONFIG_BYTES = 1 << 20

#: key -> its entry in the one table of settings (sockact/settings.py)
SETTINGS = settings.SERVE
_D = {key: s.default for key, s in SETTINGS.items()}


@dataclass(frozen=True)
class Config:
    """Settings of one ``sockact serve`` instance (see README.md, "Settings").

    Defaults come from :data:`sockact.settings.TABLE`, where they are written once.
    """

    app: str
    instance: int
    warmup: str | None = _D["warmup"]
    host: str = _D["host"]
    port: int = _D["port"]
    admin_host: str = _D["admin_host"]
    admin_port: int = _D["admin_port"]  # 0 means 9000 + instance, resolved by load()
    listen: str = _D["listen"]
    socket_name: str = _D["socket_name"]
    threads: int = _D["threads"]
    backlog: int = _D["backlog"]
    connection_limit: int = _D["connection_limit"]
    drain_timeout: float = _D["drain_timeout"]
    idle_grace: float = _D["idle_grace"]
    warmup_timeout: float = _D["warmup_timeout"]
    require_migrate_req: bool = _D["require_migrate_req"]
    log_level: str = _D["log_level"]
    check_path: str = _D["check_path"]
    check_status: str = _D["check_status"]
    #: key -> where its value came from ("default", "file api.toml", "env SOCKACT_PORT", ...)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


class _FileProblem(Exception):
    """Why a config file cannot be read; completes 'config file <path>: ...'."""


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"not a regular file ({kind})" if kind != "not a regular file" else kind


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; never blocks on a FIFO or a device, never reads more than the limit.

    stat() first (it opens nothing), then open with O_NONBLOCK and check again on the open
    file, in case the path was swapped in between.
    """
    try:
        before = os.stat(path)
        problem = _not_regular(before.st_mode)
        if problem:
            raise _FileProblem(problem)
        if before.st_size > MAX_CONFIG_BYTES:
            raise _FileProblem(f"too large ({before.st_size} bytes > {MAX_CONFIG_BYTES})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            problem = _not_regular(os.fstat(fd).st_mode)
            if problem:
                raise _FileProblem(problem)
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_CONFIG_BYTES:
                chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > MAX_CONFIG_BYTES:
                raise _FileProblem(f"too large (more than {MAX_CONFIG_BYTES} bytes)")
            return b"".join(chunks)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise _FileProblem("not found") from None
    except PermissionError:
        raise _FileProblem("permission denied") from None
    except ValueError:  # an embedded NUL byte
        raise _FileProblem("not a usable path") from None
    except OSError as exc:
        raise _FileProblem(exc.strerror or type(exc).__name__) from None


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    where = f"config file {_printable(str(path))}"
    try:
        data = _read_bytes(path)
    except _FileProblem as exc:
        problems.append(f"{where}: {exc}")
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problems.append(
            f"{where}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line})"
        )
        return {}
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{where}: invalid TOML: {exc}")
        return {}
    except RecursionError:
        problems.append(f"{where}: invalid TOML: nested too deeply")
        return {}
    for key in sorted(set(doc) - set(SETTINGS)):
        hint = _close_key(key)
        problems.append(f"{where}: unknown key {key!r}{hint}")
    return {k: v for k, v in doc.items() if k in SETTINGS}


def _close_key(key: str) -> str:
    import difflib

    match = difflib.get_close_matches(key.lower().replace("-", "_"), SETTINGS, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _read_env(env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in SETTINGS:
            out[key] = value
        else:
            problems.append(f"environment {name}: unknown setting{_close_key(key)}")
    return out


def load(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge file < env < flags into a :class:`Config`, or raise :class:`BadInput`.

    ``flags`` holds only the flags the user gave (``None`` values are ignored).
    """
    problems: list[str] = []
    raw: dict[str, tuple[Any, str]] = {}
    if path is not None:
        for key, value in _read_file(path, problems).items():
            raw[key] = (value, f"file {_printable(str(path))}")
    for key, value in _read_env(os.environ if env is None else env, problems).items():
        raw[key] = (value, f"env {ENV_PREFIX}{key.upper()}")
    for key, value in (flags or {}).items():
        if value is not None:
            raw[key] = (value, f"flag --{key.replace('_', '-')}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, (value, source) in raw.items():
        try:
            values[key] = settings.parse(SETTINGS[key], value)
        except settings.Invalid as exc:
            problems.append(f"{key} = {_shown(value)} ({source}): {exc}")
            continue
        sources[key] = source

    for key in (k for k, s in SETTINGS.items() if s.required):
        if key not in raw:
            problems.append(
                f"{key}: required (set it in the config file, as {ENV_PREFIX}{key.upper()} "
                f"or with --{key})"
            )
    if problems:
        raise BadInput(_summary(problems), details=problems)

    if "admin_port" not in values:
        values["admin_port"] = layout.admin_port(values["instance"])
        sources["admin_port"] = "default (9000 + instance)"
        if values["admin_port"] > 65535:
            problems.append(
                f"admin_port: default 9000 + instance = {values['admin_port']} is out of range; "
                "set admin_port"
            )
    for f in fields(Config):
        if f.name != "sources" and f.name not in sources:
            sources[f.name] = "default"
    cfg = Config(**values, sources=sources)
    problems.extend(_cross_checks(cfg))
    if problems:
        raise BadInput(_summary(problems), details=problems)
    return cfg


def _summary(problems: list[str]) -> str:
    n = len(problems)
    return f"{n} problem{'s' if n > 1 else ''} in the configuration"


def _cross_checks(cfg: Config) -> list[str]:
    problems = []
    if cfg.admin_port == cfg.port and may_overlap(cfg.host, cfg.admin_host):
        problems.append(
            f"admin_port = {cfg.admin_port} ({cfg.sources['admin_port']}) is the main port "
            f"({cfg.sources['port']}) and admin_host = {cfg.admin_host!r} may be the same "
            f"address as host = {cfg.host!r}: the admin server needs a port of its own"
        )
    if cfg.idle_grace >= cfg.drain_timeout:
        problems.append(
            f"idle_grace = {cfg.idle_grace} ({cfg.sources['idle_grace']}) must be shorter than "
            f"drain_timeout = {cfg.drain_timeout} ({cfg.sources['drain_timeout']})"
        )
    return problems


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def may_overlap(host: str, other: str) -> bool:
    """Could listeners on ``host`` and ``other`` (same port) collide? Resolves nothing.

    Conservative: a wildcard (``0.0.0.0``, ``::``) overlaps everything (``::`` is dual-stack
    on Linux); two addresses overlap when they are equal (``::ffff:127.0.0.1`` is
    ``127.0.0.1``); a host name may resolve to anything, so it overlaps everything, except
    that ``localhost`` (loopback) cannot be a specific non-loopback address.

    >>> may_overlap("::", "127.0.0.1"), may_overlap("api.example", "10.0.0.1")
    (True, True)
    >>> may_overlap("10.0.0.1", "127.0.0.1"), may_overlap("localhost", "10.0.0.1")
    (False, False)
    """
    a, b = _address(host), _address(other)
    if (a is not None and a.is_unspecified) or (b is not None and b.is_unspecified):
        return True
    if a is not None and b is not None:
        return a == b
    names = [h.lower().removesuffix(".") for h, ip in ((host, a), (other, b)) if ip is None]
    address = a if a is not None else b
    if address is not None and names == ["localhost"]:
        return address.is_loopback
    return True


def describe(cfg: Config) -> str:
    """The merged settings as TOML, each line commented with its source.

    Always valid TOML, whatever the values (strings are escaped, sources in comments too).
    """
    lines = []
    for f in fields(Config):
        if f.name == "sources":
            continue
        value = getattr(cfg, f.name)
        if value is None:
            rendered = f"# {f.name} = (not set)"
        elif isinstance(value, bool):
            rendered = f"{f.name} = {'true' if value else 'false'}"
        elif isinstance(value, int | float):
            rendered = f"{f.name} = {value!r}"
        else:
            rendered = f"{f.name} = {_toml_str(str(value))}"
        source = _printable(cfg.sources.get(f.name, "default"))
        lines.append(f"{rendered:<40} # {source}")
    return "\n".join(lines) + "\n"


_TOML_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_str(value: str) -> str:
    """A TOML basic string: control characters escaped, so it stays on one line."""
    out = []
    for c in value:
        if c in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[c])
        elif c < " " or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        elif "\ud800" <= c <= "\udfff":  # no TOML (nor UTF-8) for a lone surrogate
            out.append("\\ufffd")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _printable(text: str) -> str:
    """``text`` with anything that would break a line or an encoding escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a problem stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
