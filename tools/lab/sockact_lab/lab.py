"""Throwaway test hosts with a real systemd: ``sockact-lab up | list | down | image``.

Each host is a ``systemd-nspawn -b`` container booted on an overlay, in its own network
namespace ``sockact-<n>`` joined to the root namespace by a veth pair:

* root side ``sa<n>h`` = ``10.203.<n>.1/24``, container side ``sa<n>c`` = ``10.203.<n>.2/24``
* sshd in the container listens on ``10.203.<n>.2:22``, root login with the lab's ed25519 key
* ``/proc/sys/net`` is writable inside (``SYSTEMD_NSPAWN_API_VFS_WRITABLE=network``), so
  per-namespace sysctls such as ``net.ipv4.tcp_migrate_req`` can be set by the host's
  systemd-sysctl without touching the root namespace.

Two kinds of host (``up(image=...)``, ``sockact-lab up --image``):

* ``minimal`` (default): the overlay's lower layer is the minimal Debian 12 image
  (:mod:`sockact_lab.image`, built once and cached): systemd, sshd, python3 and nothing of
  this machine, like a freshly installed server. apt reaches Debian's mirror through the
  lab's caching proxy (:mod:`sockact_lab.aptproxy`, one process per lab, listening on the
  lab's gateway addresses); nothing else leaves the hosts.
* ``clone``: the lower layer is this machine's ``/`` (its python3 with venv, the checkout
  and its venv are visible inside): boots without an image, for tests where the OS's
  realism does not matter.

``n`` is the lowest index whose netns and veth do not exist yet (allocated under
``/run/sockact-lab.lock``), so two labs can coexist. State lives in ``<dir>/lab.json``
and ``<dir>/inventory.ini`` (ansible, group ``api``); ``down`` removes every mount,
container, netns, veth and process the lab made (the apt proxy too), also after a killed
run.

Needs root and systemd-nspawn (Debian: ``apt-get install systemd-container``); building
the image needs debootstrap.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from sockact_lab import aptproxy
from sockact_lab.errors import LabError, LabUsageError
from sockact_lab.hostroot import (
    CLONE_MASKED_UNITS,
    IMAGE_MASKED_UNITS,
    HostConfig,
    prepare_host_root,
)
from sockact_lab.image import DEFAULT_RECIPE, Image, ensure_image, find_image
from sockact_lab.system import Progress, run_command
from sockact_lab.system import alive as _alive
from sockact_lab.system import all_pids as _all_pids
from sockact_lab.system import cmdline as _cmdline
from sockact_lab.system import flock as _flock
from sockact_lab.system import kill_until_gone as _kill_until_gone
from sockact_lab.system import last_line as _last_line
from sockact_lab.system import mounts_under as _mounts_under
from sockact_lab.system import proc_stat as _proc_stat

DEFAULT_DIR = Path("/var/tmp/sockact-lab")
LOCK_FILE = Path("/run/sockact-lab.lock")
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "sockact-"
SUBNET_PREFIX = "10.203"
MIN_INDEX = 1
MAX_INDEX = 254
MAX_HOSTS = 32
CGROUP_PARENT = "sockact-lab"
STATE_FILE = "lab.json"
INVENTORY_FILE = "inventory.ini"
KEY_FILE = "id_ed25519"
INVENTORY_GROUP = "api"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BOOT_TIMEOUT = 60.0
SSH_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

#: what a host boots on: the minimal Debian image (default) or an overlay of this machine's /
IMAGE_MINIMAL = "minimal"
IMAGE_CLONE = "clone"
IMAGE_MODES = (IMAGE_MINIMAL, IMAGE_CLONE)
PROXY_LOG = "apt-proxy.log"

SSH_OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=5",
)

# --------------------------------------------------------------------------- pure helpers


def host_name(index: int) -> str:
    """Machine name, hostname and inventory name of host ``index`` (unique across labs)."""
    return f"{NETNS_PREFIX}{index}"


def netns_name(index: int) -> str:
    return f"{NETNS_PREFIX}{index}"


def veth_names(index: int) -> tuple[str, str]:
    """(root side, container side) interface names, at most 15 characters."""
    return f"sa{index}h", f"sa{index}c"


def host_address(index: int) -> str:
    """The container side address: where sshd and the app listen."""
    return f"{SUBNET_PREFIX}.{index}.2"


def gateway_address(index: int) -> str:
    """The root namespace side of the veth pair."""
    return f"{SUBNET_PREFIX}.{index}.1"


def validate_image_mode(image: str) -> None:
    if image not in IMAGE_MODES:
        raise LabUsageError(f"lab: --image must be one of {', '.join(IMAGE_MODES)}, got {image!r}")


def validate_count(count: int) -> None:
    if not MIN_INDEX <= count <= MAX_HOSTS:
        raise LabUsageError(f"lab: --hosts must be between 1 and {MAX_HOSTS}, got {count}")


def allocate_indices(count: int, taken: Iterable[int]) -> list[int]:
    """The ``count`` lowest indices in ``MIN_INDEX..MAX_INDEX`` that are not ``taken``."""
    validate_count(count)
    used = set(taken)
    free = [i for i in range(MIN_INDEX, MAX_INDEX + 1) if i not in used]
    if len(free) < count:
        raise LabError(
            f"lab: only {len(free)} free network indices left, {count} needed "
            f"(run 'sockact-lab down' for stale labs, see 'ip netns')"
        )
    return free[:count]


def indices_in_use(netns: Iterable[str], links: Iterable[str]) -> set[int]:
    """Indices held by an existing ``sockact-<n>`` netns or ``sa<n>h``/``sa<n>c`` link."""
    used: set[int] = set()
    for name in netns:
        m = re.fullmatch(rf"{re.escape(NETNS_PREFIX)}(\d+)", name)
        if m:
            used.add(int(m.group(1)))
    for name in links:
        m = re.fullmatch(r"sa(\d+)[hc]", name)
        if m:
            used.add(int(m.group(1)))
    return used


@dataclass
class Host:
    """One running test host."""

    name: str
    index: int
    address: str
    init_pid: int
    nspawn_pid: int
    root: Path
    key: Path
    #: inode of the host's network namespace; identifies it, as indices are reused
    netns_inode: int = 0

    @property
    def gateway(self) -> str:
        return gateway_address(self.index)

    @property
    def netns(self) -> str:
        return netns_name(self.index)

    def nsenter_args(self, *cmd: str) -> list[str]:
        """Command line running ``cmd`` inside the host (all its namespaces)."""
        return ["nsenter", "-t", str(self.init_pid), "-a", *cmd]

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the host as root with a clean environment (via nsenter)."""
        env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
        return run_command(
            self.nsenter_args(*cmd), check=check, timeout=timeout, env=env, where=f"in {self.name}"
        )

    def ssh_args(self, *cmd: str) -> list[str]:
        """``ssh`` command line reaching this host as root with the lab key; ``cmd`` is
        quoted for the remote shell."""
        remote = [shlex.join(cmd)] if cmd else []
        return ["ssh", "-i", str(self.key), *SSH_OPTIONS, f"root@{self.address}", *remote]

    def ssh(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on the host over ssh (as Ansible would)."""
        return run_command(
            self.ssh_args(*cmd), check=check, timeout=timeout, where=f"over ssh to {self.name}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["root"] = str(self.root)
        data["key"] = str(self.key)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Host:
        try:
            return cls(
                name=str(data["name"]),
                index=int(data["index"]),
                address=str(data["address"]),
                init_pid=int(data["init_pid"]),
                nspawn_pid=int(data["nspawn_pid"]),
                root=Path(data["root"]),
                key=Path(data["key"]),
                netns_inode=int(data.get("netns_inode", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(f"lab: bad host entry in state file: {exc!r}") from exc


def render_inventory(hosts: Iterable[Host], key: Path) -> str:
    """Ansible ini inventory: group ``api``, one line per host."""
    lines = [f"[{INVENTORY_GROUP}]"]
    for h in hosts:
        lines.append(
            f"{h.name} ansible_host={h.address} ansible_port=22 ansible_user=root "
            f"ansible_ssh_private_key_file={key} "
            "ansible_python_interpreter=/usr/bin/python3 "
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null'"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- system helpers


def _sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_command(list(cmd), check=check, timeout=timeout)


def _list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _list_links() -> list[str]:
    try:
        return sorted(os.listdir("/sys/class/net"))
    except FileNotFoundError:
        return []


def _is_nspawn_for(pid: int, root: Path) -> bool:
    """True if ``pid`` is a systemd-nspawn running ``-D root`` (guards against PID reuse)."""
    args = _cmdline(pid)
    if not args or not args[0].endswith("systemd-nspawn"):
        return False
    return any(a == "-D" and b == str(root) for a, b in itertools.pairwise(args))


def is_running(host: Host) -> bool:
    """True while ``host``'s systemd-nspawn runs."""
    return _is_nspawn_for(host.nspawn_pid, host.root)


#: the commands ``up`` runs on the lab's paths besides nspawn: a SIGKILLed ``up`` leaves
#: them running, and a ``mount`` of a host's overlay may land after ``down`` looked
HELPER_COMMANDS = frozenset({"mount", "umount", "ssh-keygen"})
#: how long ``down`` waits for them before SIGKILL (each takes milliseconds when alone)
HELPER_TIMEOUT = 15.0


def _helpers_under(directory: Path) -> list[int]:
    """Running :data:`HELPER_COMMANDS` with a path inside ``directory`` in their arguments
    (``down`` holds the lab's lock, so no live ``up`` of this lab runs them)."""
    prefix = str(directory).rstrip("/") + "/"
    found: list[int] = []
    for pid in _all_pids():
        args = _cmdline(pid)
        named = args and os.path.basename(args[0]) in HELPER_COMMANDS
        if named and any(prefix in a for a in args[1:]):
            found.append(pid)
    return found


def _nspawn_pids_under(directory: Path) -> list[int]:
    """Every systemd-nspawn whose ``-D`` lies inside ``directory`` (leftovers of a killed
    run), and the shell that becomes one (``up`` starts nspawn through ``sh -c 'exec'``)."""
    prefix = str(directory).rstrip("/") + "/"
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        args = _cmdline(int(entry))
        if not any(a.endswith("systemd-nspawn") for a in args):
            continue
        for a, b in itertools.pairwise(args):
            if a == "-D" and b.startswith(prefix):
                pids.append(int(entry))
    return pids


def _netns_inode(name: str) -> int:
    """Inode of the named network namespace, 0 if it does not exist."""
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except FileNotFoundError:
        return 0


def _pids_in_netns(inode: int) -> list[int]:
    """Processes whose network namespace has inode ``inode`` (a lab host's processes)."""
    pids: list[int] = []
    if inode == 0:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                pids.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def _container_init(nspawn_pid: int) -> int | None:
    """The container's PID 1 (seen from here): the child of nspawn that is PID 1 of a new
    PID namespace."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _proc_stat(pid)
        if stat is None or stat[1] != nspawn_pid:
            continue
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) >= 2 and ids[-1] == "1":
                            return pid
        except FileNotFoundError:
            continue
    return None


def _cgroup_hierarchies() -> list[Path]:
    """Mount points of the hierarchies systemd uses: cgroup2 and the named ``systemd`` one."""
    found: list[Path] = []
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            _src, target, fstype, options = line.split()[:4]
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
                found.append(Path(target))
    return found


def host_cgroups(name: str) -> list[Path]:
    """The cgroup (one per hierarchy) each host's nspawn runs in. Without it every nspawn
    started from one cgroup shares ``<cgroup>/payload``, and the containers' systemds
    remove each other's cgroups (failed units with "Failed at step CGROUP")."""
    return [h / CGROUP_PARENT / name for h in _cgroup_hierarchies()]


def _cgroup_pids(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(x) for x in procs.read_text(encoding="utf-8").split())
    return pids


def _remove_cgroup(cgroup: Path) -> None:
    """rmdir a cgroup and its children, deepest first (they hold no real files)."""
    if not cgroup.is_dir():
        return
    dirs = sorted((d for d in cgroup.rglob("*") if d.is_dir()), key=lambda d: len(d.parts))
    for d in [*reversed(dirs), cgroup]:
        with contextlib.suppress(OSError):
            d.rmdir()


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(empty log)"


def check_requirements(image: str = IMAGE_MINIMAL) -> list[str]:
    """Reasons the lab cannot boot hosts of kind ``image`` here (empty when it can)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("lab: needs root (network namespaces, mounts, systemd-nspawn)")
    for tool in ("systemd-nspawn", "nsenter", "ip", "mount", "umount", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            problems.append(
                f"lab: {tool} not found (apt-get install systemd-container openssh-client iproute2)"
            )
    if image == IMAGE_CLONE and not Path("/usr/sbin/sshd").exists():
        problems.append("lab: /usr/sbin/sshd missing (apt-get install openssh-server)")
    if image == IMAGE_MINIMAL and find_image() is None:
        for tool in ("debootstrap", "unshare", "chroot"):
            if shutil.which(tool) is None:
                problems.append(
                    f"lab: {tool} not found, needed to build the host image "
                    "(apt-get install debootstrap)"
                )
    return problems


# --------------------------------------------------------------------------- the lab


class Lab:
    """A set of test hosts whose state lives in ``directory``."""

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.directory = Path(directory).absolute()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        #: what this run booted on and its apt proxy (kept in the state file)
        self._meta: dict[str, Any] | None = None

    # ---- paths and state

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def inventory_path(self) -> Path:
        return self.directory / INVENTORY_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    def host_dir(self, name: str) -> Path:
        return self.directory / name

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LabError(f"lab: cannot read {self.state_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise LabError(f"lab: {self.state_path} is not a JSON object")
        return data

    def hosts(self) -> list[Host]:
        """Hosts recorded in the state file (running or left over)."""
        return [Host.from_json(h) for h in self._read_state().get("hosts", [])]

    def info(self) -> dict[str, Any]:
        """What the lab booted on: ``image`` (minimal or clone), ``image_name`` (the
        minimal image's name) and ``apt_proxy_pid`` (0: none)."""
        if self._meta is not None:
            return dict(self._meta)
        data = self._read_state()
        return {
            "image": str(data.get("image", IMAGE_CLONE)),
            "image_name": str(data.get("image_name", "")),
            "apt_proxy_pid": int(data.get("apt_proxy_pid", 0)),
        }

    def _write_state(self, hosts: list[Host]) -> None:
        data = {
            "directory": str(self.directory),
            **self.info(),
            "hosts": [h.to_json() for h in hosts],
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state_path)
        tmp_inv = self.inventory_path.with_suffix(".tmp")
        tmp_inv.write_text(render_inventory(hosts, self.key_path), encoding="utf-8")
        tmp_inv.replace(self.inventory_path)

    # ---- up

    def up(
        self, count: int, progress: Progress | None = None, *, image: str = IMAGE_MINIMAL
    ) -> list[Host]:
        """Boot ``count`` hosts on ``image`` (:data:`IMAGE_MINIMAL`: the minimal Debian
        image, built first if it is not cached; :data:`IMAGE_CLONE`: an overlay of this
        machine's /); on any failure everything made so far is removed."""
        say = progress or (lambda _msg: None)
        validate_count(count)
        validate_image_mode(image)
        problems = check_requirements(image)
        if problems:
            raise LabError(problems[0], details=problems[1:])
        # before the lab's lock: minutes on first use, and other labs may wait for it too
        base = ensure_image(progress=say) if image == IMAGE_MINIMAL else None
        self.directory.mkdir(parents=True, exist_ok=True)
        with _flock(self.directory / ".lock"):
            self._refuse_or_clean_stale(say)
            self._ensure_key()
            self._meta = {
                "image": image,
                "image_name": base.name if base is not None else "",
                "apt_proxy_pid": 0,
            }
            try:
                return self._up(count, say, base)
            except BaseException:
                say("boot failed: removing what was made")
                with contextlib.suppress(Exception):
                    self._down(say)
                raise

    def _refuse_or_clean_stale(self, say: Progress) -> None:
        old = self.hosts()
        running = [h.name for h in old if _is_nspawn_for(h.nspawn_pid, h.root)]
        if running:
            raise LabError(
                f"lab: {self.directory} already has running hosts ({', '.join(running)}); "
                f"run 'sockact-lab down --dir {self.directory}' first"
            )
        leftovers = _mounts_under(self.directory) or _nspawn_pids_under(self.directory)
        if old or leftovers or aptproxy.proxy_pids(str(self.directory)):
            say(f"cleaning stale state of a previous run in {self.directory}")
            self._down(say)

    def _ensure_key(self) -> None:
        if self.key_path.exists():
            return
        _sh(
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "sockact-lab",
            "-f",
            str(self.key_path),
        )

    def _up(self, count: int, say: Progress, base: Image | None) -> list[Host]:
        started = time.monotonic()
        hosts: list[Host] = []
        with _flock(LOCK_FILE):
            indices = allocate_indices(count, indices_in_use(_list_netns(), _list_links()))
            for index in indices:
                name = host_name(index)
                hosts.append(
                    Host(
                        name=name,
                        index=index,
                        address=host_address(index),
                        init_pid=0,
                        nspawn_pid=0,
                        root=self.host_dir(name) / "root",
                        key=self.key_path,
                    )
                )
            # record first, so that 'down' finds whatever exists after a kill
            self._write_state(hosts)
            for h in hosts:
                self._make_netns(h)
                self._write_state(hosts)
        proxy = None
        if base is not None:  # after the veths: it listens on their gateway addresses
            proxy = self._start_proxy(hosts)
            self._write_state(hosts)
            say(f"apt proxy (pid {proxy.pid}) on {', '.join(h.gateway for h in hosts)}")
        for h in hosts:
            self._prepare_root(h, base, proxy)
            say(f"{h.name}: overlay ready at {h.root}")
        boot_started: dict[str, float] = {}
        for h in hosts:
            boot_started[h.name] = time.monotonic()
            self._start_nspawn(h)
            self._write_state(hosts)
        for h in hosts:
            self._wait_booted(h, say)
            self._write_state(hosts)
            self._wait_ssh(h)
            say(
                f"{h.name}: up at {h.address} "
                f"({time.monotonic() - boot_started[h.name]:.1f}s since nspawn start)"
            )
        say(f"{len(hosts)} host(s) up in {time.monotonic() - started:.1f}s")
        return hosts

    def _make_netns(self, h: Host) -> None:
        outer, inner = veth_names(h.index)
        gw = gateway_address(h.index)
        _sh("ip", "netns", "add", h.netns)
        h.netns_inode = _netns_inode(h.netns)
        _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _sh("ip", "link", "set", inner, "netns", h.netns)
        _sh("ip", "addr", "add", f"{gw}/24", "dev", outer)
        _sh("ip", "link", "set", outer, "up")
        _sh("ip", "-n", h.netns, "link", "set", "lo", "up")
        _sh("ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", inner)
        _sh("ip", "-n", h.netns, "link", "set", inner, "up")
        _sh("ip", "-n", h.netns, "route", "add", "default", "via", gw)

    def _start_proxy(self, hosts: list[Host]) -> aptproxy.ProxyProcess:
        proxy = aptproxy.start_proxy_process(
            [h.gateway for h in hosts],
            owner=str(self.directory),
            log_path=self.directory / PROXY_LOG,
            allowed_hosts=DEFAULT_RECIPE.mirror_hosts(),
        )
        assert self._meta is not None
        self._meta["apt_proxy_pid"] = proxy.pid
        if proxy.popen is not None:
            self._procs[proxy.pid] = proxy.popen
        return proxy

    def _prepare_root(
        self, h: Host, base: Image | None, proxy: aptproxy.ProxyProcess | None
    ) -> None:
        """Mount the host's overlay (lower layer: the image, or / in clone mode) and write
        what makes the host unique into its upper layer."""
        host_dir = self.host_dir(h.name)
        upper, work, root = host_dir / "upper", host_dir / "work", host_dir / "root"
        for d in (upper, work, root):
            d.mkdir(parents=True, exist_ok=True)
        lower = base.rootfs if base is not None else Path("/")
        _sh(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}",
            str(root),
        )
        config = HostConfig(
            hostname=h.name,
            address=h.address,
            gateway=h.gateway,
            authorized_keys=self.key_path.with_suffix(".pub").read_text(encoding="utf-8"),
            masked_units=IMAGE_MASKED_UNITS if base is not None else CLONE_MASKED_UNITS,
            apt_proxy=proxy.url(h.gateway) if proxy is not None else None,
            enable_ssh=base is None,
        )
        prepare_host_root(root, config)

    def _start_nspawn(self, h: Host) -> None:
        log_path = self.host_dir(h.name) / "nspawn.log"
        env = dict(os.environ)
        env["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] = "network"  # /proc/sys/net writable
        cgroups = host_cgroups(h.name)
        for cg in cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        # join the host's own cgroups, then become nspawn (same PID)
        join = "".join(f'echo $$ > "{cg}/cgroup.procs" && ' for cg in cgroups)
        log: IO[bytes]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    "/bin/sh",
                    "-c",
                    f'{join}exec "$@"',
                    "sh",
                    "systemd-nspawn",
                    "-D",
                    str(h.root),
                    "--register=no",
                    "--keep-unit",
                    f"--machine={h.name}",
                    f"--network-namespace-path={NETNS_DIR / h.netns}",
                    "--console=read-only",
                    "--resolv-conf=off",
                    "--timezone=off",
                    "-b",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._procs[proc.pid] = proc
        h.nspawn_pid = proc.pid

    def _boot_failed(self, h: Host, why: str) -> LabError:
        log = self.host_dir(h.name) / "nspawn.log"
        return LabError(f"lab: {h.name} {why}; nspawn log: {_tail(log)}")

    def _wait_booted(self, h: Host, say: Progress) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            if not _alive(h.nspawn_pid):
                raise self._boot_failed(h, "systemd-nspawn exited during boot")
            init = _container_init(h.nspawn_pid)
            if init is not None:
                h.init_pid = init
                break
            if time.monotonic() > deadline:
                raise self._boot_failed(h, f"no container init after {BOOT_TIMEOUT:.0f}s")
            time.sleep(0.05)
        state = ""
        while time.monotonic() < deadline:
            if not _alive(h.nspawn_pid):
                raise self._boot_failed(h, "systemd-nspawn exited during boot")
            left = max(1.0, deadline - time.monotonic())
            try:
                proc = h.run("systemctl", "is-system-running", "--wait", check=False, timeout=left)
            except subprocess.TimeoutExpired:
                break
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                break
            if state in ("maintenance", "stopping"):
                raise self._boot_failed(h, f"systemd state is {state!r}")
            time.sleep(0.1)  # not up far enough to answer yet (no bus): ask again
        else:
            state = state or "unknown"
        if state not in ("running", "degraded"):
            raise self._boot_failed(
                h, f"systemd not running after {BOOT_TIMEOUT:.0f}s (state {state!r})"
            )
        if state == "degraded":
            failed = h.run("systemctl", "--failed", "--no-legend", "--plain", check=False)
            units = " ".join(line.split()[0] for line in failed.stdout.splitlines() if line)
            msg = f"{h.name}: systemd degraded, failed units: {units or '?'}"
            say(msg)
            with open(self.host_dir(h.name) / "lab.log", "a", encoding="utf-8") as fh:
                fh.write(msg + "\n" + failed.stdout)

    def _wait_ssh(self, h: Host) -> None:
        deadline = time.monotonic() + SSH_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            proc = h.ssh("true", check=False, timeout=10)
            if proc.returncode == 0:
                return
            last = _last_line(proc.stderr)
            time.sleep(0.2)
        raise self._boot_failed(h, f"ssh to {h.address} failed for {SSH_TIMEOUT:.0f}s: {last}")

    # ---- reboot

    def reboot(self, name: str, progress: Progress | None = None) -> Host:
        """Reboot host ``name`` for real: ``systemctl reboot`` in it (systemd stops every
        unit, systemd-nspawn exits, as it does on a reboot), then boot it again on the same
        root and network namespace (what ``systemd-nspawn@.service`` does on exit 133).
        Returns the host with its new PIDs; the state file is updated."""
        say = progress or (lambda _msg: None)
        with _flock(self.directory / ".lock"):
            hosts = self.hosts()
            found = [h for h in hosts if h.name == name]
            if not found:
                raise LabError(f"lab: no host {name} in {self.state_path}")
            h = found[0]
            say(f"{name}: systemctl reboot")
            h.run("systemctl", "reboot", check=False)
            if not self._wait_exit(h.nspawn_pid, BOOT_TIMEOUT):
                raise LabError(f"lab: {name} did not go down within {BOOT_TIMEOUT:.0f}s")
            self._forget_proc(h.nspawn_pid)
            self._start_nspawn(h)
            self._wait_booted(h, say)
            self._wait_ssh(h)
            self._write_state(hosts)
            say(f"{name}: booted again")
            return h

    # ---- down

    def down(self, progress: Progress | None = None, *, purge: bool = False) -> None:
        """Stop every host of this lab and remove its mounts, netns, veth and files.

        Works from the state file and from what is found under the lab directory, so it
        also cleans up after a killed run. ``purge`` also removes the key and the directory.
        """
        say = progress or (lambda _msg: None)
        if not self.directory.exists():
            return
        with _flock(self.directory / ".lock"):
            self._down(say)
            if purge:
                self._purge()

    def _down(self, say: Progress) -> None:
        errors: list[str] = []
        self._wait_helpers(say)
        hosts = self.hosts()
        for h in hosts:
            try:
                self._stop_host(h, say)
            except Exception as exc:
                errors.append(str(exc))
        # leftovers not in the state file (killed between steps)
        for pid in _nspawn_pids_under(self.directory):
            self._kill_nspawn(pid, say)
        # the apt proxy: the recorded PID, and any other proxy of this lab (a killed run)
        owner = str(self.directory)
        recorded = int(self.info().get("apt_proxy_pid", 0))
        for pid in sorted({recorded, *aptproxy.proxy_pids(owner)} - {0}):
            try:
                if aptproxy.stop_proxy_process(pid, owner, say):
                    say(f"apt proxy {pid}: stopped")
            except LabError as exc:
                errors.append(exc.message)
            self._forget_proc(pid)
        for mnt in _mounts_under(self.directory):
            try:
                self._umount(Path(mnt))
            except LabError as exc:
                errors.append(exc.message)
        if errors:
            raise LabError(errors[0], details=errors[1:])
        for path in (self.state_path, self.inventory_path):
            path.unlink(missing_ok=True)
        self._meta = None

    def _purge(self) -> None:
        if _mounts_under(self.directory):
            raise LabError(f"lab: mounts left under {self.directory}; not removing it")
        shutil.rmtree(self.directory, ignore_errors=True)

    def _wait_helpers(self, say: Progress) -> None:
        """Let the commands a killed ``up`` left on this lab's paths end (their mounts are
        then there to be removed), SIGKILL them after :data:`HELPER_TIMEOUT`."""
        helpers = _helpers_under(self.directory)
        if not helpers:
            return
        names = ", ".join(f"{os.path.basename((_cmdline(p) or ['?'])[0])} {p}" for p in helpers)
        say(f"waiting for what a killed run left running: {names}")
        deadline = time.monotonic() + HELPER_TIMEOUT
        while time.monotonic() < deadline:
            if not _helpers_under(self.directory):  # an exited one has no command line
                return
            time.sleep(0.1)
        _kill_until_gone(lambda: _helpers_under(self.directory), str(self.directory), "lab", say)

    def _stop_host(self, h: Host, say: Progress) -> None:
        if _is_nspawn_for(h.nspawn_pid, h.root):
            started = time.monotonic()
            init = _container_init(h.nspawn_pid)
            asked = False
            if init is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    poweroff = ["nsenter", "-t", str(init), "-a", "systemctl", "poweroff"]
                    asked = run_command(poweroff, check=False, timeout=10).returncode == 0
            # systemctl fails early in boot (no bus yet): then go on to SIGTERM soon
            if self._wait_exit(h.nspawn_pid, STOP_TIMEOUT if asked else 1.0):
                say(f"{h.name}: powered off in {time.monotonic() - started:.1f}s")
            else:
                self._kill_nspawn(h.nspawn_pid, say)
        self._forget_proc(h.nspawn_pid)
        # only touch the netns if it is still the one this host made (indices are reused)
        ours = h.netns_inode != 0 and _netns_inode(h.netns) == h.netns_inode
        if ours:
            self._kill_netns_processes(h, say)
        self._kill_cgroup_processes(h, say)
        base = self.host_dir(h.name)
        if h.root in [Path(m) for m in _mounts_under(h.root)]:
            # nspawn's lock on the image dir, left behind when nspawn was killed
            st = os.stat(h.root)
            Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}").unlink(missing_ok=True)
        for mnt in _mounts_under(base):
            self._umount(Path(mnt))
        if ours:
            self._remove_netns(h.index)
        propagate = Path("/run/systemd/nspawn/propagate") / h.name
        with contextlib.suppress(OSError):
            propagate.rmdir()
        if _mounts_under(base):  # never rm -rf through a mounted overlay of /
            raise LabError(f"lab: {base} still has mounts; not removing it")
        if base.exists():
            shutil.rmtree(base)
        say(f"{h.name}: removed")

    def _kill_cgroup_processes(self, h: Host, say: Progress) -> None:
        """SIGKILL what is left in the host's cgroups, then remove them."""
        for cg in host_cgroups(h.name):
            _kill_until_gone(functools.partial(_cgroup_pids, cg), f"cgroup {cg}", h.name, say)
            _remove_cgroup(cg)
            with contextlib.suppress(OSError):  # still used by another lab: fine
                cg.parent.rmdir()

    def _kill_netns_processes(self, h: Host, say: Progress) -> None:
        """SIGKILL what still runs in the host's netns, e.g. a container init orphaned
        by a killed nspawn (killing a PID namespace's init ends the whole namespace)."""
        _kill_until_gone(lambda: _pids_in_netns(h.netns_inode), h.netns, h.name, say)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        proc = self._procs.get(pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return True
            elif not _alive(pid):
                return True
            time.sleep(0.1)
        return False

    def _forget_proc(self, pid: int) -> None:
        proc = self._procs.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def _kill_nspawn(self, pid: int, say: Progress) -> None:
        """SIGTERM (nspawn then halts the container), then SIGKILL nspawn and its init."""
        if not _alive(pid):
            return
        init = _container_init(pid)
        say(f"nspawn {pid}: no clean poweroff, sending SIGTERM")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._wait_exit(pid, 10):
            return
        say(f"nspawn {pid}: sending SIGKILL")
        for target in (init, pid):
            if target is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
        self._wait_exit(pid, 10)

    def _umount(self, mnt: Path) -> None:
        for _ in range(10):
            if not _mounts_under(mnt):
                return
            if _sh("umount", str(mnt), check=False).returncode == 0:
                continue
            time.sleep(0.5)
        if _mounts_under(mnt):
            _sh("umount", "-l", str(mnt), check=False)
        if _mounts_under(mnt):
            raise LabError(f"lab: cannot unmount {mnt}")

    def _remove_netns(self, index: int) -> None:
        outer, _inner = veth_names(index)
        if netns_name(index) in _list_netns():
            _sh("ip", "netns", "delete", netns_name(index), check=False)
        if outer in _list_links():
            _sh("ip", "link", "delete", outer, check=False)
        if netns_name(index) in _list_netns() or outer in _list_links():
            raise LabError(f"lab: cannot remove netns {netns_name(index)} / {outer}")
