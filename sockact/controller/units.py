"""Render the systemd unit files that run sockact instances (``sockact units render``).

Two layouts, one per way of sharing the port (see docs/units.md):

- ``reuseport``: ``<name>@.service`` and the sysctl drop-in ``60-<name>-reuseport.conf``;
  each instance binds the port itself with SO_REUSEPORT.
- ``socket``: ``<name>@.service`` (``Sockets=<name>.socket``), ``<name>.socket`` and the
  holder ``<name>.service`` that anchors the socket without ever running the app.

Example::

    sockact units render --out /etc/systemd/system --listen socket --port 8080
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import posixpath
import re
import shlex
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jinja2

from sockact import layout
from sockact.errors import BadInput

LISTEN_MODES = layout.DEPLOY_LISTEN_MODES

#: Seconds TimeoutStopSec adds on top of drain_timeout: the idle grace, closing the admin
#: server and the interpreter's exit all happen after the drain deadline.
STOP_MARGIN = 10

#: systemd's UNIT_NAME_MAX is 256 with the NUL: a unit file name has at most 255 bytes.
UNIT_NAME_MAX = 255
#: Room kept for the longest instance file name, ``<name>@<instance>.service``.
INSTANCE_MAX = 10
NAME_MAX = UNIT_NAME_MAX - len("@.service") - INSTANCE_MAX

#: systemd's valid unit-name characters (unit-name.c VALID_CHARS), without ``@``.
_NAME_RE = re.compile(r"[A-Za-z0-9:_.\\-]+")
#: systemd's strict user/group name rule (valid_user_group_name without relaxed mode).
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
USER_MAX = 31
#: Paths go into ExecStart= and EnvironmentFile=, where systemd expands %specifiers,
#: $VARIABLES, quotes and backslash escapes: only allow characters with no meaning there.
_PATH_RE = re.compile(r"[A-Za-z0-9._+:/-]+")
PATH_MAX = 1024
#: Hidden or replaced by the hardening (ProtectHome, PrivateTmp, PrivateDevices, ...).
_HIDDEN_DIRS = ("/home", "/root", "/run/user", "/tmp", "/var/tmp", "/dev", "/proc", "/sys")
#: Users that must not run the app: root defeats the hardening; nobody is shared with
#: other services, any of which could then bind the port with SO_REUSEPORT and steal traffic.
_FORBIDDEN_USERS = ("root", "nobody")


@dataclass(frozen=True)
class UnitOptions:
    """Everything the unit files depend on; construction validates all fields at once.

    Empty ``group``, ``config_dir`` and ``release_root`` take their defaults from ``user``
    and ``name``: ``group=user``, ``config_dir=/etc/<name>``, ``release_root=/opt/<name>``.
    ``host`` and ``port`` go into the socket unit's ListenStream= (socket mode); in
    reuseport mode the port only decides whether CAP_NET_BIND_SERVICE is needed (< 1024).
    They, and ``drain_timeout``, must match the instances' config files.

    >>> UnitOptions(name="web").config_dir
    '/etc/web'

    Raises :class:`sockact.errors.BadInput` with one detail line per problem.
    """

    name: str = "api"
    user: str = "api"
    group: str = ""
    config_dir: str = ""
    release_root: str = ""
    listen: str = "reuseport"
    host: str = "0.0.0.0"
    port: int = 8080
    drain_timeout: float = 20.0
    start_timeout: int = 300
    watchdog_sec: int = 10

    def __post_init__(self) -> None:
        # Fill derived defaults; frozen, so through object.__setattr__.
        derived = {
            "group": self.user,
            "config_dir": f"/etc/{self.name}",
            "release_root": f"/opt/{self.name}",
        }
        defaulted: set[str] = set()
        for option, value in derived.items():
            if getattr(self, option) == "":
                object.__setattr__(self, option, value)
                defaulted.add(option)
        problems = _problems(self, defaulted)
        if problems:
            raise BadInput(f"invalid unit options ({len(problems)} problem(s))", details=problems)

    @property
    def stop_timeout(self) -> int:
        """TimeoutStopSec: whole seconds, strictly greater than ``drain_timeout``."""
        return math.floor(self.drain_timeout) + STOP_MARGIN

    def command_line(self) -> str:
        """The ``sockact units render`` flags that reproduce these options (without --out)."""
        parts: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            parts += [f"--{f.name.replace('_', '-')}", str(value)]
        return shlex.join(parts)


def _problems(opts: UnitOptions, defaulted: set[str]) -> list[str]:
    """One line per invalid option, naming the option and its value.

    A value ``defaulted`` from another option is not reported again when that one is bad.
    """
    problems: list[str] = []

    def bad(option: str, value: object, reason: str) -> None:
        problems.append(f"{option}={value!r}: {reason}")

    name = opts.name
    if not isinstance(name, str) or not name:
        bad("name", name, "must be a non-empty string")
    elif "@" in name:
        bad("name", name, "must not contain '@': it is the template's prefix, '@' is added")
    elif not _NAME_RE.fullmatch(name):
        bad("name", name, r"a unit name allows only letters, digits and ':-_.\'")
    elif len(name) > NAME_MAX:
        bad("name", name, f"too long ({len(name)} > {NAME_MAX}): unit names are <= 255 bytes")
    elif name in (".", ".."):
        bad("name", name, "is not a usable file name")

    name_ok = not problems
    for option in ("user", "group"):
        value = getattr(opts, option)
        if option in defaulted and option == "group":
            continue  # same value as user, checked just before
        if not isinstance(value, str) or not _USER_RE.fullmatch(value):
            bad(
                option,
                value,
                "not a valid user/group name (a letter or '_', then letters, digits, '_', '-')",
            )
        elif len(value) > USER_MAX:
            bad(option, value, f"too long ({len(value)} > {USER_MAX} characters)")
        elif value in _FORBIDDEN_USERS:
            bad(option, value, "instances need their own static system user (e.g. 'api')")

    for option in ("config_dir", "release_root"):
        value = getattr(opts, option)
        if option in defaulted and not name_ok:
            continue  # /etc/<name>: the bad name is already reported
        reason = _path_problem(value)
        if reason and option in defaulted:
            reason += f" (default from name: set {option} explicitly)"
        if reason:
            bad(option, value, reason)
    if not problems and opts.config_dir == opts.release_root:
        bad("config_dir", opts.config_dir, "must differ from release_root")

    if opts.listen not in LISTEN_MODES:
        bad("listen", opts.listen, f"must be one of {', '.join(LISTEN_MODES)}")

    try:
        address = ipaddress.ip_address(opts.host)
    except ValueError:
        bad("host", opts.host, "must be an IPv4 or IPv6 address (not a host name)")
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            bad("host", opts.host, "scoped IPv6 addresses ('%zone') are not supported")

    if not _is_int(opts.port) or not 1 <= opts.port <= 65535:
        bad("port", opts.port, "must be an integer from 1 to 65535")

    if (
        not isinstance(opts.drain_timeout, int | float)
        or isinstance(opts.drain_timeout, bool)
        or not math.isfinite(opts.drain_timeout)
        or opts.drain_timeout <= 0
    ):
        bad("drain_timeout", opts.drain_timeout, "must be a positive number of seconds")
    for option in ("start_timeout", "watchdog_sec"):
        value = getattr(opts, option)
        if not _is_int(value) or value <= 0:
            bad(option, value, "must be a positive whole number of seconds")
    return problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _path_problem(value: object) -> str | None:
    """Why ``value`` cannot go into a unit file as a directory, or None if it can."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty absolute path"
    if not _PATH_RE.fullmatch(value):
        return (
            "only letters, digits and '._+-:/' are allowed (no whitespace, newline, quotes, "
            "'%', '$' or '\\': systemd would interpret them)"
        )
    if not value.startswith("/"):
        return "must be an absolute path"
    if posixpath.normpath(value) != value or value.startswith("//"):
        return f"must be normalized (e.g. {posixpath.normpath(value)!r})"
    if value == "/":
        return "must not be the root directory"
    if len(value) > PATH_MAX:
        return f"too long ({len(value)} > {PATH_MAX})"
    for hidden in _HIDDEN_DIRS:
        if value == hidden or value.startswith(hidden + "/"):
            return f"is under {hidden}, which the unit's hardening hides from the service"
    return None


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("sockact.controller", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # unit files, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def listen_stream(opts: UnitOptions) -> str:
    """The socket unit's ListenStream=: the port alone for a wildcard host."""
    address = ipaddress.ip_address(opts.host)
    if address.is_unspecified:
        return str(opts.port)
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address}]:{opts.port}"
    return f"{address}:{opts.port}"


def render_units(opts: UnitOptions) -> dict[str, str]:
    """File name -> content of every unit file for ``opts.listen``.

    >>> sorted(render_units(UnitOptions(listen="socket")))
    ['api.service', 'api.socket', 'api@.service']
    """
    env = _environment()
    context: dict[str, Any] = {
        "o": opts,
        "command_line": opts.command_line(),
        "stop_timeout": opts.stop_timeout,
        "drain_display": f"{opts.drain_timeout:g}",
        "needs_bind_capability": opts.listen == "reuseport" and opts.port < 1024,
        "listen_stream": listen_stream(opts),
        "socket_name": layout.SOCKET_NAME,
        "layout": layout.HostLayout(opts.name, opts.config_dir, opts.release_root),
    }
    host = layout.HostLayout(opts.name, opts.config_dir, opts.release_root)
    templates = {host.instance_unit_file: "instance.service.j2"}
    if opts.listen == "socket":
        templates[host.socket_unit] = "socket.socket.j2"
        templates[host.holder_unit] = "holder.service.j2"
    else:
        templates[host.sysctl_file] = "reuseport-sysctl.conf.j2"
    return {
        file_name: env.get_template(template).render(context)
        for file_name, template in templates.items()
    }


def write_units(opts: UnitOptions, out: Path) -> list[Path]:
    """Render every file, then write each atomically (temp file + rename) into ``out``.

    Nothing is written if rendering fails. ``out`` is created if missing.
    """
    rendered = render_units(opts)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for file_name, content in rendered.items():
        target = out / file_name
        fd, tmp_name = tempfile.mkstemp(dir=out, prefix=f".{file_name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                tmp.write(content)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


# --- command line --------------------------------------------------------------------

_INT_OPTIONS = ("port", "start_timeout", "watchdog_sec")
_FLOAT_OPTIONS = ("drain_timeout",)


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``units render`` to the top-level ``sockact`` parser."""
    units = sub.add_parser(
        "units",
        help="systemd unit files for sockact instances",
        description="Work with the systemd unit files that run sockact instances.",
    )
    units_sub = units.add_subparsers(dest="units_command", required=True, metavar="ACTION")
    defaults = UnitOptions()
    render = units_sub.add_parser(
        "render",
        help="write the unit files for one API name and listen mode",
        description=(
            "Write <name>@.service plus, in reuseport mode, the sysctl drop-in "
            "60-<name>-reuseport.conf, or, in socket mode, <name>.socket and its holder "
            "<name>.service. All options are checked at once; nothing is written when one "
            "is wrong. Values that sockact serve reads (port, drain_timeout) must match "
            "the instances' config files."
        ),
        epilog=(
            "Example: sockact units render --out /etc/systemd/system --listen socket; "
            "then systemctl daemon-reload. See docs/units.md."
        ),
    )
    render.add_argument(
        "--out", required=True, metavar="DIR", help="directory to write into (created if missing)"
    )
    render.add_argument(
        "--name",
        default=defaults.name,
        help="unit name prefix: <name>@.service (default %(default)s)",
    )
    render.add_argument(
        "--user",
        default=defaults.user,
        help="static system user every instance runs as (default %(default)s)",
    )
    render.add_argument("--group", default="", help="group (default: same as --user)")
    render.add_argument("--config-dir", default="", help="config directory (default /etc/<name>)")
    render.add_argument(
        "--release-root", default="", help="releases and instance links (default /opt/<name>)"
    )
    render.add_argument(
        "--listen",
        default=defaults.listen,
        help="reuseport: each instance binds with SO_REUSEPORT; socket: systemd holds the "
        f"port in <name>.socket (one of: {', '.join(LISTEN_MODES)}; default %(default)s)",
    )
    render.add_argument(
        "--host",
        default=defaults.host,
        help="listen address for the socket unit (default %(default)s: all addresses)",
    )
    render.add_argument(
        "--port", default=str(defaults.port), help="main port (default %(default)s)"
    )
    render.add_argument(
        "--drain-timeout",
        default=str(defaults.drain_timeout),
        metavar="SECONDS",
        help="the instances' drain_timeout; TimeoutStopSec is this plus "
        f"{STOP_MARGIN} s, rounded down (default %(default)s)",
    )
    render.add_argument(
        "--start-timeout",
        default=str(defaults.start_timeout),
        metavar="SECONDS",
        help="TimeoutStartSec, room for the warm-up (default %(default)s)",
    )
    render.add_argument(
        "--watchdog-sec",
        default=str(defaults.watchdog_sec),
        metavar="SECONDS",
        help="WatchdogSec (default %(default)s)",
    )
    render.set_defaults(func=render_command)


def options_from_args(args: argparse.Namespace) -> UnitOptions:
    """Build :class:`UnitOptions` from parsed flags, reporting every bad one at once."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    defaults = UnitOptions()
    for f in fields(UnitOptions):
        raw = getattr(args, f.name)
        if f.name in _INT_OPTIONS or f.name in _FLOAT_OPTIONS:
            convert = int if f.name in _INT_OPTIONS else float
            try:
                values[f.name] = convert(raw)
            except ValueError:
                kind = "an integer" if convert is int else "a number"
                problems.append(f"{f.name}={raw!r}: must be {kind}")
                # Keep checking the other options against a valid stand-in.
                values[f.name] = getattr(defaults, f.name)
        else:
            values[f.name] = raw
    try:
        opts = UnitOptions(**values)
    except BadInput as exc:
        problems += exc.details
    if problems:
        raise BadInput(f"invalid unit options ({len(problems)} problem(s))", details=problems)
    return opts


def render_command(args: argparse.Namespace) -> int:
    """``sockact units render``: write the files and print each path written."""
    opts = options_from_args(args)
    for path in write_units(opts, Path(args.out)):
        print(path)
    return 0
