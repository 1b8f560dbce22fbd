"""One frozen :class:`Config` for ``sockact serve``, merged from three sources.

Precedence: TOML file (``--config``) < environment ``SOCKACT_<KEY>`` < command-line flags.
Every problem is collected and reported at once, naming the key and where the value came
from, before anything binds::

    $ SOCKACT_PORT=http sockact check-config --config api.toml --instance 0
    sockact: error: 2 problems in the configuration
    sockact: error: port = 'http' (env SOCKACT_PORT): not an integer
    sockact: error: instance = 0 (flag --instance): must be >= 1
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sockact import layout
from sockact.errors import BadInput

ENV_PREFIX = "SOCKACT_"
LOG_LEVELS = ("debug", "info", "warning", "error")
_TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Invalid(ValueError):
    """A value that does not convert; the message completes 'key = value (source): ...'."""


def _parse_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise _Invalid("not an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
        return int(raw.strip())
    raise _Invalid("not an integer")


def _parse_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise _Invalid("not a number")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise _Invalid("not a number")


def _parse_bool(raw: Any) -> bool:
    # Strict on purpose: a typo must not silently become False.
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    raise _Invalid("not a boolean (use true/false, yes/no, on/off or 1/0)")


def _parse_str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Invalid("not a string")
    return raw.strip()


def _parse_target(raw: Any) -> str:
    value = _parse_str(raw)
    if not _TARGET_RE.match(value):
        raise _Invalid("must look like 'package.module:callable'")
    return value


def _parse_optional_target(raw: Any) -> str | None:
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    return _parse_target(raw)


def _parse_path(raw: Any) -> str:
    value = _parse_str(raw)
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise _Invalid("must start with / and contain no whitespace")
    return value


def _parse_host(raw: Any) -> str:
    value = _parse_str(raw)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", value):
            raise _Invalid("not an IP address or host name") from None
    return value


_STATUS_ITEM = re.compile(r"([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?")


def status_ranges(spec: str) -> list[tuple[int, int]]:
    """``"200-399,404"`` -> ``[(200, 399), (404, 404)]``; raises ValueError when malformed.

    >>> status_ranges("200-299, 404")
    [(200, 299), (404, 404)]
    """
    ranges = []
    for item in spec.split(","):
        match = _STATUS_ITEM.fullmatch(item.strip())
        if not match:
            raise ValueError(f"{item.strip()!r} is not a status (100-599) or a range like 200-399")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if low > high:
            raise ValueError(f"{item.strip()!r}: the range is reversed")
        ranges.append((low, high))
    return ranges


def accepts_status(spec: str, status: int) -> bool:
    """Whether ``status`` is in the set ``spec`` (a valid ``check_status``)."""
    return any(low <= status <= high for low, high in status_ranges(spec))


def _parse_statuses(raw: Any) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    value = _parse_str(raw)
    try:
        ranges = status_ranges(value)
    except ValueError as exc:
        raise _Invalid(f"{exc} (use codes and ranges like '200-399,404')") from None
    return ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = _parse_str(raw).lower()
        if value not in options:
            raise _Invalid("must be one of " + ", ".join(options))
        return value

    return parse


@dataclass(frozen=True)
class Config:
    """Settings of one ``sockact serve`` instance (see README.md, "Settings")."""

    app: str
    instance: int
    warmup: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 0  # 0 means 9000 + instance, resolved by load()
    listen: str = "auto"
    socket_name: str = layout.SOCKET_NAME
    threads: int = 8
    backlog: int = 1024
    connection_limit: int = 1000
    drain_timeout: float = 20.0
    idle_grace: float = 1.0
    warmup_timeout: float = 300.0
    require_migrate_req: bool = False
    log_level: str = "info"
    check_path: str = "/"
    check_status: str = "100-499"
    #: key -> where its value came from ("default", "file api.toml", "env SOCKACT_PORT", ...)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


#: key -> (converter, help text); the table that drives files, env and flags alike
SETTINGS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "app": (_parse_target, "WSGI app factory, module:callable (required)"),
    "instance": (_parse_int, "instance number >= 1, systemd's %%i (required)"),
    "warmup": (_parse_optional_target, "module:function called with the app before listening"),
    "host": (_parse_host, "address of the main listener (default 0.0.0.0)"),
    "port": (_parse_int, "port of the main listener (default 8080)"),
    "admin_host": (_parse_host, "address of the admin server (default 127.0.0.1)"),
    "admin_port": (_parse_int, "admin port (default 9000 + instance)"),
    "listen": (_choice(layout.SERVE_LISTEN_MODES), "auto | reuseport | inherit (default auto)"),
    "socket_name": (_parse_str, "FileDescriptorName of the inherited socket (default http)"),
    "threads": (_parse_int, "worker threads (default 8)"),
    "backlog": (_parse_int, "listen() backlog in reuseport mode (default 1024)"),
    "connection_limit": (_parse_int, "open connections before accept pauses (default 1000)"),
    "drain_timeout": (_parse_float, "seconds to drain on stop before cutting (default 20)"),
    "idle_grace": (_parse_float, "seconds idle keep-alive clients get when draining (default 1)"),
    "warmup_timeout": (_parse_float, "seconds the factory and warm-up may take (default 300)"),
    "require_migrate_req": (
        _parse_bool,
        "refuse to start in reuseport mode when net.ipv4.tcp_migrate_req is 0 (default false)",
    ),
    "log_level": (_choice(LOG_LEVELS), "debug | info | warning | error (default info)"),
    "check_path": (
        _parse_path,
        "path the health gate (before listening) and the admin /check endpoint request "
        "from the app in-process (default /)",
    ),
    "check_status": (
        _parse_statuses,
        "statuses the health gate accepts from check_path, codes and ranges like "
        "200-399,404 (default 100-499: anything below 500)",
    ),
}

_RANGES: dict[str, tuple[float, float]] = {
    "instance": (1, 65535),
    "port": (1, 65535),
    "admin_port": (1, 65535),
    "threads": (1, 1024),
    "backlog": (1, 65535),
    "connection_limit": (1, 1_000_000),
    "drain_timeout": (0.1, 86400),
    "idle_grace": (0, 3600),
    "warmup_timeout": (0.1, 86400),
}


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        problems.append(f"config file {path}: not found")
        return {}
    except PermissionError:
        problems.append(f"config file {path}: permission denied")
        return {}
    except IsADirectoryError:
        problems.append(f"config file {path}: is a directory")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file {path}: invalid TOML: {exc}")
        return {}
    for key in sorted(set(data) - set(SETTINGS)):
        hint = _close_key(key)
        problems.append(f"config file {path}: unknown key {key!r}{hint}")
    return {k: v for k, v in data.items() if k in SETTINGS}


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
        elif key == "release":
            continue  # the release label the deploy writes into <i>.env (docs/architecture.md)
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
            raw[key] = (value, f"file {path}")
    for key, value in _read_env(os.environ if env is None else env, problems).items():
        raw[key] = (value, f"env {ENV_PREFIX}{key.upper()}")
    for key, value in (flags or {}).items():
        if value is not None:
            raw[key] = (value, f"flag --{key.replace('_', '-')}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, (value, source) in raw.items():
        parse = SETTINGS[key][0]
        try:
            parsed = parse(value)
        except _Invalid as exc:
            problems.append(f"{key} = {value!r} ({source}): {exc}")
            continue
        bounds = _RANGES.get(key)
        if bounds and parsed is not None and not bounds[0] <= parsed <= bounds[1]:
            low, high = (int(b) if float(b).is_integer() else b for b in bounds)
            problems.append(f"{key} = {value!r} ({source}): must be between {low} and {high}")
            continue
        values[key] = parsed
        sources[key] = source

    for key in ("app", "instance"):
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
    same_host = cfg.admin_host == cfg.host or "0.0.0.0" in (cfg.host, cfg.admin_host)
    if cfg.admin_port == cfg.port and same_host:
        problems.append(
            f"admin_port = {cfg.admin_port} ({cfg.sources['admin_port']}) is the main port "
            f"({cfg.sources['port']}): the admin server needs a port of its own"
        )
    if cfg.idle_grace >= cfg.drain_timeout:
        problems.append(
            f"idle_grace = {cfg.idle_grace} ({cfg.sources['idle_grace']}) must be shorter than "
            f"drain_timeout = {cfg.drain_timeout} ({cfg.sources['drain_timeout']})"
        )
    return problems


def describe(cfg: Config) -> str:
    """The merged settings as TOML, each line commented with its source."""
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
            rendered = f"{f.name} = {value}"
        else:
            rendered = f"{f.name} = {_toml_str(str(value))}"
        lines.append(f"{rendered:<40} # {cfg.sources.get(f.name, 'default')}")
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
