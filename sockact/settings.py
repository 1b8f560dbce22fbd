"""The one table of settings: type, default, range and help of every value that
``sockact serve`` reads (its config) and that ``sockact units render`` takes (its flags).

A setting that both read (``host``, ``port``, ``backlog``, ``drain_timeout``) is ONE entry
with ``used_by = ("serve", "render")``, so the two can never disagree on what is valid.
Each default is written here once: :class:`sockact.runtime.config.Config`, the
:class:`sockact.controller.units.UnitOptions` and every help text take theirs from here.
``sockact settings`` prints the table as JSON (the Ansible role's argument specs are
checked against it).

Ranges for values that end up in a unit file are the ones systemd really applies:
systemd parses a time span into microseconds in a 64-bit integer and ignores a line
whose value does not fit (>= 18446744073709 s), or that is not a plain number of seconds
(``1e23``), with only a warning in the journal: the unit then runs on systemd's default
(90 s for ``TimeoutStartSec=``/``TimeoutStopSec=``, no watchdog). A value of 0 turns the
timeout or the watchdog off. So every time span here is finite, positive and bounded
far below that limit.

>>> SERVE["port"].default, SERVE["port"].low, SERVE["port"].high
(8080, 1, 65535)
>>> parse(RENDER["watchdog_sec"], "1e23")
Traceback (most recent call last):
...
sockact.settings.Invalid: not an integer
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sockact import layout

SERVE_SIDE: Final = "serve"
RENDER_SIDE: Final = "render"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

#: systemd's FDNAME_MAX: a FileDescriptorName= has at most 255 characters.
FDNAME_MAX: Final = 255


class Invalid(ValueError):
    """A value that does not fit its setting; the message completes '<key> = <value>: ...'."""


# --- formats (checked after the type; each raises Invalid) -----------------------------

_TARGET_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)


def check_target(value: str) -> None:
    """``package.module:callable``."""
    if not _TARGET_RE.fullmatch(value):
        raise Invalid("must look like 'package.module:callable'")


def check_host(value: str) -> None:
    """An IPv4 or IPv6 address (no zone), or a DNS host name (RFC 1123 labels).

    A name whose last label is all digits (``1.2.3``, ``999.1.1.1``) is refused: it is
    neither an address nor a name, and the resolver would read it as an odd IPv4 address.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise Invalid("scoped IPv6 addresses ('%zone') are not supported")
        return
    if value.startswith("[") and value.endswith("]"):
        raise Invalid("write an IPv6 address without brackets")
    labels = value.removesuffix(".").split(".")
    if (
        len(value) > 253
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise Invalid("not an IP address or host name")


def check_url_path(value: str) -> None:
    """An absolute HTTP path: printable ASCII without spaces."""
    if not value.startswith("/") or not all("!" <= c <= "~" for c in value):
        raise Invalid("must start with / and hold printable ASCII without spaces")


def check_fdname(value: str) -> None:
    """systemd's fdname_is_valid(): up to 255 printable ASCII characters, no ':'.

    systemd also takes an empty name; sockact does not (it could never be matched).
    """
    if not value:
        raise Invalid("must not be empty")
    bad = next((c for c in value if not " " <= c <= "~" or c == ":"), None)
    if bad is not None:
        raise Invalid(
            f"{bad!r} is not allowed in a FileDescriptorName (printable ASCII without ':')"
        )
    if len(value) > FDNAME_MAX:
        raise Invalid(f"too long ({len(value)} > {FDNAME_MAX} characters)")


_STATUS_ITEM = re.compile(r"([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?", re.ASCII)


def status_ranges(spec: str) -> list[tuple[int, int]]:
    """``"200-399,404"`` -> ``[(200, 399), (404, 404)]``; raises :class:`Invalid`.

    >>> status_ranges("200-299, 404")
    [(200, 299), (404, 404)]
    """
    ranges = []
    for item in spec.split(","):
        match = _STATUS_ITEM.fullmatch(item.strip())
        if not match:
            raise Invalid(f"{item.strip()!r} is not a status (100-599) or a range like 200-399")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if low > high:
            raise Invalid(f"{item.strip()!r}: the range is reversed")
        ranges.append((low, high))
    return ranges


def accepts_status(spec: str, status: int) -> bool:
    """Whether ``status`` is in the set ``spec`` (a valid ``check_status``)."""
    return any(low <= status <= high for low, high in status_ranges(spec))


def parse_statuses(raw: Any) -> str:
    """A ``check_status`` value (a string, or one TOML integer) in its normal form."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise Invalid("not a string")
    try:
        ranges = status_ranges(raw.strip())
    except Invalid as exc:
        raise Invalid(f"{exc} (use codes and ranges like '200-399,404')") from None
    return ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


# --- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting. ``low``/``high`` bound numbers (inclusive); ``check`` a string's format."""

    name: str
    type: type
    default: Any
    help: str
    used_by: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    #: required: no default (``default`` is None)
    required: bool = False
    #: None is a valid value (an optional setting that is not set)
    optional: bool = False
    #: how the default reads when it is derived from other values ("9000 + instance")
    default_text: str = ""
    #: why the range is what it is
    why: str = ""
    check: Callable[[str], None] | None = None
    #: converts the raw value instead of the type's own conversion (and normalizes it)
    parser: Callable[[Any], Any] | None = None
    #: what the value does on one side only (appended to ``help`` there)
    serve_help: str = ""
    render_help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def default_shown(self) -> str:
        if self.required:
            return "required"
        if self.default_text:
            return self.default_text
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)

    def range_shown(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.low is None or self.high is None:
            return ""
        return f"{_number(self.low)} to {_number(self.high)}"

    def side_help(self, side: str) -> str:
        """What the value does for ``side`` (serve or render)."""
        note = self.serve_help if side == SERVE_SIDE else self.render_help
        return f"{self.help}: {note}" if note else self.help

    def help_text(self, side: str) -> str:
        """The help line of the flag on ``side``: meaning, range and default, all from here."""
        parts = [self.range_shown(), "required" if self.required else ""]
        if not self.required:
            parts.append(f"default {self.default_shown()}")
        text = f"{self.side_help(side)} ({'; '.join(p for p in parts if p)})"
        return text.replace("%", "%%")  # argparse expands %(...)s in help

    def describe(self) -> dict[str, Any]:
        """This entry as plain data (``sockact settings``)."""
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": None if self.required else self.default,
            "default_text": self.default_shown(),
            "required": self.required,
            "min": self.low,
            "max": self.high,
            "choices": list(self.choices) or None,
            "used_by": list(self.used_by),
            "flag": self.flag,
            "env": f"SOCKACT_{self.name.upper()}" if SERVE_SIDE in self.used_by else None,
            "help": {side: self.side_help(side) for side in self.used_by},
            "why": self.why or None,
        }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


_BOTH = (SERVE_SIDE, RENDER_SIDE)
_SERVE = (SERVE_SIDE,)
_RENDER = (RENDER_SIDE,)
#: a time span in a unit file: whole seconds, at most a day (see the module docstring)
_UNIT_SECONDS = (
    "systemd ignores a time span it cannot hold (>= 18446744073709 s, or '1e23') and "
    "falls back to its default; 0 turns it off; a day is far more than any start or "
    "watchdog period needs"
)

TABLE: Final[tuple[Setting, ...]] = (
    # --- sockact serve
    Setting("app", str, None, "WSGI app factory, module:callable", _SERVE, required=True,
            check=check_target),
    Setting("instance", int, None, "instance number, systemd's %i", _SERVE, low=1, high=65535,
            required=True),
    Setting("warmup", str, None, "module:function called with the app before listening",
            _SERVE, optional=True, check=check_target),
    Setting("host", str, "0.0.0.0", "address of the main listener", _BOTH, check=check_host,
            render_help="ListenStream= of the socket unit (an IP address here)"),
    Setting("port", int, 8080, "port of the main listener", _BOTH, low=1, high=65535,
            render_help="ListenStream= in socket mode; below 1024 reuseport mode adds "
            "CAP_NET_BIND_SERVICE"),
    Setting("admin_host", str, "127.0.0.1", "address of the admin server", _SERVE,
            check=check_host),
    Setting("admin_port", int, 0, "port of the admin server", _SERVE, low=1, high=65535,
            default_text=f"{layout.ADMIN_PORT_BASE} + instance"),
    Setting("listen", str, "auto", "how to get the main listener: inherit it from systemd, "
            "bind it with SO_REUSEPORT, or auto (inherit when systemd passed one)", _SERVE,
            choices=layout.SERVE_LISTEN_MODES),
    Setting("socket_name", str, layout.SOCKET_NAME,
            "FileDescriptorName of the inherited socket", _SERVE, check=check_fdname),
    Setting("threads", int, 8, "worker threads", _SERVE, low=1, high=1024),
    Setting("backlog", int, 1024, "listen() backlog of the main listener", _BOTH, low=1, high=65535,
            serve_help="in reuseport mode", render_help="Backlog= of the socket unit",
            why="the kernel caps it at net.core.somaxconn (4096 by default)"),
    Setting("connection_limit", int, 1000, "open connections before accept pauses", _SERVE,
            low=2, high=1_000_000),
    Setting("drain_timeout", float, 20.0, "seconds to drain on stop before cutting", _BOTH,
            low=0.1, high=86400, render_help="TimeoutStopSec= is this plus 10 s, rounded down",
            why="below 0.1 s no request can finish; TimeoutStopSec= = drain + 10 s must stay "
            "a span systemd accepts, and a drain longer than a day is a typo"),
    Setting("idle_grace", float, 1.0, "seconds idle keep-alive clients get when draining",
            _SERVE, low=0, high=3600),
    Setting("warmup_timeout", float, 300.0, "seconds the factory and warm-up may take",
            _SERVE, low=0.1, high=86400),
    Setting("require_migrate_req", bool, False,
            "refuse to start in reuseport mode when net.ipv4.tcp_migrate_req is not 1", _SERVE),
    Setting("log_level", str, "info", "log level", _SERVE, choices=LOG_LEVELS),
    Setting("check_path", str, "/",
            "path the health gate and the admin /check endpoint request from the app "
            "in-process", _SERVE, check=check_url_path),
    Setting("check_status", str, "100-499",
            "statuses the health gate accepts from check_path before the listener opens "
            "(codes and ranges, e.g. 200-399,404)", _SERVE, parser=parse_statuses),
    # --- sockact units render
    Setting("name", str, layout.DEFAULT_NAME, "unit name prefix: <name>@.service", _RENDER),
    Setting("user", str, layout.DEFAULT_NAME, "static system user every instance runs as",
            _RENDER),
    Setting("group", str, "", "group of the instances", _RENDER, default_text="same as user"),
    Setting("config_dir", str, "", "config directory", _RENDER, default_text="/etc/<name>"),
    Setting("release_root", str, "", "releases and instance links", _RENDER,
            default_text="/opt/<name>"),
    Setting("listen", str, "reuseport", "reuseport: each instance binds the port with "
            "SO_REUSEPORT; socket: systemd holds it in <name>.socket", _RENDER,
            choices=layout.DEPLOY_LISTEN_MODES),
    Setting("unix_socket", str, "", "socket mode: listen on this unix socket path instead of "
            "host:port (ListenStream=<path>)", _RENDER, default_text="none (TCP)"),
    Setting("socket_user", str, "root", "owner of the unix socket file (SocketUser=)", _RENDER),
    Setting("socket_group", str, "root",
            "group of the unix socket file (SocketGroup=): the front end's group, e.g. "
            "www-data", _RENDER),
    Setting("socket_mode", str, "0660", "access mode of the unix socket file (SocketMode=)",
            _RENDER),
    Setting("start_timeout", int, 300, "TimeoutStartSec=, room for the warm-up", _RENDER,
            low=1, high=86400, why=_UNIT_SECONDS),
    Setting("watchdog_sec", int, 10, "WatchdogSec=", _RENDER, low=1, high=3600, why=_UNIT_SECONDS),
    Setting("limit_nofile", int, 65536, "LimitNOFILE= (soft and hard) of each instance",
            _RENDER, low=1024, high=1048576,
            why="below 1024 the default connection_limit has no room; above the kernel's "
            "fs.nr_open (1048576 by default) systemd cannot set it and silently sets the "
            "closest value it can"),
)  # fmt: skip


def _side(side: str) -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for setting in TABLE:
        if side in setting.used_by:
            assert setting.name not in out, f"{setting.name} twice for {side}"
            out[setting.name] = setting
    return out


#: what ``sockact serve`` reads, by key
SERVE: Final = _side(SERVE_SIDE)
#: what ``sockact units render`` takes, by option
RENDER: Final = _side(RENDER_SIDE)


# --- parsing and checking ----------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse(setting: Setting, raw: Any) -> Any:
    """Convert ``raw`` (a TOML value, or a string from the environment or a flag) and check
    it against ``setting``; raise :class:`Invalid` with the reason.

    Strict: integers are ASCII digits only (an Arabic-Indic one is not 1), numbers are
    finite, booleans are one of a few words (a typo must not become False).
    """
    if setting.optional and (raw is None or (isinstance(raw, str) and not raw.strip())):
        return None
    value = setting.parser(raw) if setting.parser else _convert(setting.type, raw)
    if setting.choices and isinstance(value, str):
        value = value.lower()
    problem = check(setting, value)
    if problem:
        raise Invalid(problem)
    return value


def _convert(kind: type, raw: Any) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise Invalid("not a boolean (use true/false, yes/no, on/off or 1/0)")
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
            return int(raw.strip())
        raise Invalid("not an integer")
    if kind is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, str) and _FLOAT_RE.fullmatch(raw.strip()):
            value = float(raw.strip())
        else:
            raise Invalid("not a number")
        if not math.isfinite(value):
            raise Invalid("not a finite number")
        return value
    if not isinstance(raw, str):
        raise Invalid("not a string")
    return raw.strip()


def check(setting: Setting, value: Any) -> str | None:
    """Why the already typed ``value`` does not fit ``setting``, or None when it does."""
    if setting.optional and value is None:
        return None
    kind = setting.type
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            return "must be a finite number"
    elif kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        return "must be an integer"
    elif kind is bool and not isinstance(value, bool):
        return "must be true or false"
    elif kind is str and not isinstance(value, str):
        return "must be a string"
    if setting.choices:
        if value not in setting.choices:
            return "must be one of " + ", ".join(setting.choices)
    elif (
        setting.low is not None
        and setting.high is not None
        and not setting.low <= value <= setting.high
    ):
        return f"must be between {_number(setting.low)} and {_number(setting.high)}"
    if setting.check is not None:
        try:
            setting.check(value)
        except Invalid as exc:
            return str(exc)
    return None


def describe() -> dict[str, Any]:
    """The table as plain data: ``{"serve": {name: entry}, "render": {name: entry}}``."""
    return {
        SERVE_SIDE: {name: s.describe() for name, s in SERVE.items()},
        RENDER_SIDE: {name: s.describe() for name, s in RENDER.items()},
    }


def _settings_command(args: argparse.Namespace) -> int:
    print(json.dumps(describe(), indent=2, sort_keys=True))
    return 0


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact settings``."""
    p = sub.add_parser(
        "settings",
        help="print every setting of serve and units render (type, default, range) as JSON",
        description="Print the one table of settings that sockact serve and sockact units "
        "render share: type, default, min/max or choices, help, and why each range is what "
        "it is, as JSON (the Ansible role's argument specs are checked against it).",
        epilog="example: sockact settings | jq .render.drain_timeout",
    )
    p.set_defaults(func=_settings_command)
