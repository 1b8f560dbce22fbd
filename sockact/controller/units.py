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
import json
import math
import os
import posixpath
import re
import shlex
import shutil
import stat
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jinja2

from sockact import layout, settings
from sockact.errors import BadInput

LISTEN_MODES = layout.DEPLOY_LISTEN_MODES
#: every option of ``units render``, by name, from the one table of settings
OPTIONS = settings.RENDER
_D = {name: s.default for name, s in OPTIONS.items()}

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
#: sun_path holds 108 bytes with the terminating NUL.
UNIX_PATH_MAX = 107
_SOCKET_MODE_RE = re.compile(r"0?[0-7]{3}")
#: Options that only mean something with a unix socket.
_UNIX_OPTIONS = ("socket_user", "socket_group", "socket_mode")
#: Users that must not run the app: root defeats the hardening; nobody is shared with
#: other services, any of which could then bind the port with SO_REUSEPORT and steal traffic.
_FORBIDDEN_USERS = ("root", "nobody")


def group_of(user: str, group: str = "") -> str:
    """``Group=`` of the instances: ``group``, or when empty (``units render`` without
    ``--group``) the user's name. The one place that default is made: the role's
    ``sockact_group`` defaults to ``sockact_user`` the same way, and ``sockact verify``
    checks the instances' files against this group."""
    return group or user


@dataclass(frozen=True)
class UnitOptions:
    """Everything the unit files depend on; construction validates all fields at once.

    Empty ``group``, ``config_dir`` and ``release_root`` take their defaults from ``user``
    and ``name``: ``group=user``, ``config_dir=/etc/<name>``, ``release_root=/opt/<name>``.
    ``host`` and ``port`` go into the socket unit's ListenStream= (socket mode), unless
    ``unix_socket`` names a path to listen on instead (socket mode only); in reuseport mode
    the port only decides whether CAP_NET_BIND_SERVICE is needed (< 1024). They, and
    ``drain_timeout``, must match the instances' config files. Types, defaults and ranges
    come from :data:`sockact.settings.RENDER`.

    >>> UnitOptions(name="web").config_dir
    '/etc/web'

    Raises :class:`sockact.errors.BadInput` with one detail line per problem.
    """

    name: str = _D["name"]
    user: str = _D["user"]
    group: str = _D["group"]
    config_dir: str = _D["config_dir"]
    release_root: str = _D["release_root"]
    listen: str = _D["listen"]
    host: str = _D["host"]
    port: int = _D["port"]
    unix_socket: str = _D["unix_socket"]
    socket_user: str = _D["socket_user"]
    socket_group: str = _D["socket_group"]
    socket_mode: str = _D["socket_mode"]
    backlog: int = _D["backlog"]
    drain_timeout: float = _D["drain_timeout"]
    start_timeout: int = _D["start_timeout"]
    watchdog_sec: int = _D["watchdog_sec"]
    limit_nofile: int = _D["limit_nofile"]

    def __post_init__(self) -> None:
        # Fill derived defaults; frozen, so through object.__setattr__.
        derived = {
            "group": group_of(self.user),
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

    @property
    def needs_bind_capability(self) -> bool:
        """Reuseport mode binds the port itself: below 1024 that takes CAP_NET_BIND_SERVICE."""
        return self.listen == "reuseport" and self.port < 1024

    def command_line(self) -> str:
        """The ``sockact units render`` flags that reproduce these options (without --out).

        The unix socket's options are left out when there is no unix socket.
        """
        parts: list[str] = []
        for f in fields(self):
            if f.name in ("unix_socket", *_UNIX_OPTIONS) and not self.unix_socket:
                continue
            parts += [OPTIONS[f.name].flag, str(getattr(self, f.name))]
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

    def table(option: str) -> None:
        """Type, range and choices from the one table of settings."""
        value = getattr(opts, option)
        reason = settings.check(OPTIONS[option], value)
        if reason:
            bad(option, value, reason)

    table("listen")
    try:
        address = ipaddress.ip_address(opts.host)
    except ValueError:
        bad("host", opts.host, "must be an IPv4 or IPv6 address (not a host name)")
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            bad("host", opts.host, "scoped IPv6 addresses ('%zone') are not supported")
    table("port")
    _unix_problems(opts, bad)
    for option in ("backlog", "drain_timeout", "start_timeout", "watchdog_sec", "limit_nofile"):
        table(option)
    return problems


def _unix_problems(opts: UnitOptions, bad: Any) -> None:
    """The unix socket's path, owner and mode (all ignored without a unix socket)."""
    path = opts.unix_socket
    if not isinstance(path, str):
        bad("unix_socket", path, "must be a string")
        return
    if path:
        if opts.listen != "socket":
            bad("unix_socket", path, "needs --listen socket (reuseport mode is TCP only)")
        elif not path.startswith("/"):
            bad("unix_socket", path, "must be an absolute path (no abstract '@' sockets)")
        elif not _PATH_RE.fullmatch(path):
            bad(
                "unix_socket",
                path,
                "only letters, digits and '._+-:/' are allowed (systemd interprets the rest)",
            )
        elif posixpath.normpath(path) != path or path.startswith("//") or path == "/":
            bad("unix_socket", path, "must be a normalized path to a file")
        elif len(path.encode()) > UNIX_PATH_MAX:
            bad("unix_socket", path, f"too long ({len(path.encode())} > {UNIX_PATH_MAX} bytes)")
    for option in ("socket_user", "socket_group"):
        value = getattr(opts, option)
        if not isinstance(value, str) or not _USER_RE.fullmatch(value) or len(value) > USER_MAX:
            bad(option, value, "not a valid user/group name")
    if not isinstance(opts.socket_mode, str) or not _SOCKET_MODE_RE.fullmatch(opts.socket_mode):
        bad("socket_mode", opts.socket_mode, "must be an octal mode such as 0660")


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
    """The socket unit's ListenStream=: a unix socket path, or the port alone for a
    wildcard host, or address:port."""
    if opts.unix_socket:
        return opts.unix_socket
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
    host = layout.HostLayout(opts.name, opts.config_dir, opts.release_root)
    context: dict[str, Any] = {
        "o": opts,
        "command_line": opts.command_line(),
        "stop_timeout": opts.stop_timeout,
        "drain_display": f"{opts.drain_timeout:g}",
        "needs_bind_capability": opts.needs_bind_capability,
        "listen_stream": listen_stream(opts),
        "socket_name": layout.SOCKET_NAME,
        "layout": host,
    }
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
    """Render every file, then write them all into ``out`` or none (see :func:`write_all`)."""
    return write_all(out, render_units(opts))


def _shown(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else ascii(text)


def _fail(what: str, path: Path, exc: OSError) -> BadInput:
    reason = exc.strerror or type(exc).__name__
    return BadInput(f"--out {_shown(path)}: cannot {what}: {reason}; nothing was written")


def write_all(out: Path, files: dict[str, str], mode: int = 0o644) -> list[Path]:
    """Write every file of ``files`` (name -> content) into ``out``, or none of them.

    The guarantee: when this raises, every target holds what it held before (or is still
    absent) and nothing this run made is left behind, unless the process is killed during
    the final renames or restoring a file fails too (the message then names the files).

    How: ``out`` is created if missing; every target is checked first (a directory in the
    way is refused before anything is written); all files are written and fsynced into a
    temporary directory inside ``out``; each existing target is hard-linked aside; then
    each file is renamed over its target (atomic per file). If a rename fails, the targets
    already replaced are restored from their links (or removed when they were new).
    """
    created = _make_dirs(out)
    try:
        return _write_all(out, files, mode)
    except BaseException:
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError:
                break
        raise


def _make_dirs(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; returns those created, outermost first."""
    missing: list[Path] = []
    probe = out
    while not os.path.lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if not missing and not out.is_dir():
        raise BadInput(f"--out {_shown(out)} exists and is not a directory")
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except OSError as exc:
            for made in reversed(created):
                made.rmdir()
            raise _fail(f"create directory {_shown(directory)}", out, exc) from None
        created.append(directory)
    return created


def _write_all(out: Path, files: dict[str, str], mode: int) -> list[Path]:
    targets = {name: out / name for name in files}
    for target in targets.values():
        try:
            st = target.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _fail(f"check {target.name}", out, exc) from None
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(
                f"--out {_shown(out)}: {target.name} is a directory; nothing was written"
            )
    try:
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".sockact-render-"))
    except OSError as exc:
        raise _fail("write into it", out, exc) from None
    try:
        backups: dict[str, Path] = {}
        try:
            for name, content in files.items():
                _write_synced(staging / name, content, mode)
            for name, target in targets.items():
                if os.path.lexists(target):
                    backups[name] = staging / f"{name}.previous"
                    os.link(target, backups[name], follow_symlinks=False)
        except OSError as exc:
            raise _fail("write the files", out, exc) from None
        done: list[str] = []
        for name, target in targets.items():
            try:
                os.replace(staging / name, target)
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                left = _roll_back(done, targets, backups)
                state = (
                    "nothing was changed"
                    if not left
                    else f"could not restore {', '.join(left)}: check them"
                )
                raise BadInput(
                    f"--out {_shown(out)}: cannot replace {name}: {reason}; {state}"
                ) from None
            done.append(name)
        _sync_dir(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return list(targets.values())


def _write_synced(path: Path, content: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, mode)  # whatever the umask


def _roll_back(done: list[str], targets: dict[str, Path], backups: dict[str, Path]) -> list[str]:
    """Put back what the renames in ``done`` replaced; returns the names that failed."""
    failed: list[str] = []
    for name in reversed(done):
        try:
            if name in backups:
                os.replace(backups[name], targets[name])
            else:
                targets[name].unlink()
        except OSError:
            failed.append(name)
    return failed


def _sync_dir(directory: Path) -> None:
    """fsync ``directory`` so the renames survive a crash (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- command line --------------------------------------------------------------------

_METAVARS = {
    "drain_timeout": "SECONDS",
    "start_timeout": "SECONDS",
    "watchdog_sec": "SECONDS",
    "config_dir": "DIR",
    "release_root": "DIR",
    "unix_socket": "PATH",
    "socket_mode": "MODE",
}


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``units render`` to the top-level ``sockact`` parser."""
    units = sub.add_parser(
        "units",
        help="systemd unit files for sockact instances",
        description="Work with the systemd unit files that run sockact instances.",
    )
    units_sub = units.add_subparsers(dest="units_command", required=True, metavar="ACTION")
    render = units_sub.add_parser(
        "render",
        help="write the unit files for one API name and listen mode",
        description=(
            "Write <name>@.service plus, in reuseport mode, the sysctl drop-in "
            "60-<name>-reuseport.conf, or, in socket mode, <name>.socket and its holder "
            "<name>.service. All options are checked at once; nothing is written when one "
            "is wrong, and either every file is written or none. Values that sockact serve "
            "reads (host, port, backlog, drain_timeout) must match the instances' config "
            "files; 'sockact settings' prints every option's type, default and range."
        ),
        epilog=(
            "Example: sockact units render --out /etc/systemd/system --listen socket; "
            "then systemctl daemon-reload. See docs/units.md."
        ),
    )
    render.add_argument(
        "--out", required=True, metavar="DIR", help="directory to write into (created if missing)"
    )
    for f in fields(UnitOptions):
        option = OPTIONS[f.name]
        render.add_argument(
            option.flag,
            dest=f.name,
            default=None,
            metavar=_METAVARS.get(f.name, f.name.upper()),
            help=option.help_text(settings.RENDER_SIDE),
        )
    render.set_defaults(func=render_command)


def options_from_args(args: argparse.Namespace) -> UnitOptions:
    """Build :class:`UnitOptions` from parsed flags, reporting every bad one at once.

    Numbers are parsed by the table's rules (ASCII digits, finite, in range); a flag that
    was not given takes the table's default.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(UnitOptions):
        option = OPTIONS[f.name]
        raw = getattr(args, f.name)
        if raw is None:
            values[f.name] = option.default
        elif option.type is str:
            values[f.name] = raw
        else:
            try:
                values[f.name] = settings.parse(option, raw)
            except settings.Invalid as exc:
                problems.append(f"{f.name}={raw!r}: {exc}")
                # Keep checking the other options against a valid stand-in.
                values[f.name] = option.default
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


def layout_command(args: argparse.Namespace) -> int:
    """``sockact layout``: the host layout as JSON, after the same checks as ``units
    render`` (a name or path systemd would not take is exit 2)."""
    opts = UnitOptions(name=args.name, config_dir=args.config_dir, release_root=args.release_root)
    host_layout = layout.HostLayout(opts.name, opts.config_dir, opts.release_root)
    print(json.dumps(host_layout.describe(), indent=2, sort_keys=True))
    return 0


def add_layout_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact layout`` (what the Ansible role reads on the controller)."""
    p = sub.add_parser(
        "layout",
        help="print the host layout (paths, colors, admin ports, unit names) as JSON",
        description="Print where a deploy keeps its files on a host, the colors' instance "
        "numbers and the admin ports, as JSON: the Ansible role reads it on the controller.",
        epilog="example: sockact layout --name api",
    )
    p.add_argument("--name", default=layout.DEFAULT_NAME, help="unit name (default api)")
    p.add_argument("--config-dir", default="", help="default /etc/<name>")
    p.add_argument("--release-root", default="", help="default /opt/<name>")
    p.set_defaults(func=layout_command)
