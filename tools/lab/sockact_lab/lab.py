"""Throwaway test hosts with a real systemd: ``sockact-lab up | list | down``.

Each host is a ``systemd-nspawn -b`` container booted on an overlay of ``/`` (so the
machine's ``/usr/bin/python3``, the checkout and its venv are visible inside), in its own
network namespace ``sockact-<n>`` joined to the root namespace by a veth pair:

* root side ``sa<n>h`` = ``10.203.<n>.1/24``, container side ``sa<n>c`` = ``10.203.<n>.2/24``
* sshd in the container listens on ``10.203.<n>.2:22``, root login with the lab's ed25519 key
* ``/proc/sys/net`` is writable inside (``SYSTEMD_NSPAWN_API_VFS_WRITABLE=network``), so
  per-namespace sysctls such as ``net.ipv4.tcp_migrate_req`` can be set by the host's
  systemd-sysctl without touching the root namespace.

``n`` is the lowest index whose netns and veth do not exist yet (allocated under
``/run/sockact-lab.lock``), so two labs can coexist. State lives in ``<dir>/lab.json``
and ``<dir>/inventory.ini`` (ansible, group ``api``); ``down`` removes every mount,
container, netns, veth and process the lab made, also after a killed run.

Needs root and systemd-nspawn (Debian: ``apt-get install systemd-container``).
"""

from __future__ import annotations

import contextlib
import fcntl
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
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from sockact_lab.errors import LabError, LabUsageError

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

#: units masked in every host: not needed, slow, or wrong inside a container that shares
#: the machine's root filesystem (a second postgres/cron on the same files, apt timers).
MASKED_UNITS = (
    "postgresql.service",
    "postgresql@.service",
    "networking.service",
    "ifupdown-pre.service",
    "ifup@.service",
    "systemd-networkd-wait-online.service",
    "NetworkManager-wait-online.service",
    "systemd-timesyncd.service",
    "console-getty.service",
    "cron.service",
    "anacron.service",
    "anacron.timer",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "systemd-tmpfiles-clean.timer",
)

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

Progress = Callable[[str], None]


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


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------- system helpers


def run_command(
    argv: list[str],
    *,
    check: bool = True,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    where: str = "",
) -> subprocess.CompletedProcess[str]:
    """The lab's one way to run a command: captured text output, no stdin, a timeout, and
    with ``check`` a :class:`LabError` naming the command, ``where`` it ran and its last
    line of output."""
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        place = f" {where}" if where else ""
        raise LabError(
            f"lab: {shlex.join(argv)}{place} exited {proc.returncode}: "
            f"{_last_line(proc.stderr or proc.stdout)}"
        )
    return proc


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


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in our mount namespace, deepest first."""
    prefix = str(path).rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return sorted(set(found), key=len, reverse=True)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_nspawn_for(pid: int, root: Path) -> bool:
    """True if ``pid`` is a systemd-nspawn running ``-D root`` (guards against PID reuse)."""
    args = _cmdline(pid)
    if not args or not args[0].endswith("systemd-nspawn"):
        return False
    return any(a == "-D" and b == str(root) for a, b in itertools.pairwise(args))


def is_running(host: Host) -> bool:
    """True while ``host``'s systemd-nspawn runs."""
    return _is_nspawn_for(host.nspawn_pid, host.root)


def _nspawn_pids_under(directory: Path) -> list[int]:
    """Every systemd-nspawn whose ``-D`` lies inside ``directory`` (leftovers of a killed run)."""
    prefix = str(directory).rstrip("/") + "/"
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        args = _cmdline(int(entry))
        if not args or not args[0].endswith("systemd-nspawn"):
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


def _kill_until_gone(
    list_pids: Callable[[], list[int]], where: str, host: str, say: Progress
) -> None:
    """SIGKILL every process ``list_pids`` returns until it returns none (10 s at most)."""
    deadline = time.monotonic() + 10
    while pids := list_pids():
        if time.monotonic() > deadline:
            raise LabError(f"lab: processes {pids} in {where} do not die")
        say(f"{host}: killing {len(pids)} leftover process(es) in {where}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_requirements() -> list[str]:
    """Reasons the lab cannot run here (empty when it can)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("lab: needs root (network namespaces, mounts, systemd-nspawn)")
    for tool in ("systemd-nspawn", "nsenter", "ip", "mount", "umount", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            problems.append(
                f"lab: {tool} not found (apt-get install systemd-container "
                "openssh-server openssh-client iproute2)"
            )
    if not Path("/usr/sbin/sshd").exists():
        problems.append("lab: /usr/sbin/sshd missing (apt-get install openssh-server)")
    return problems


# --------------------------------------------------------------------------- the lab


class Lab:
    """A set of test hosts whose state lives in ``directory``."""

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.directory = Path(directory).absolute()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

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

    def hosts(self) -> list[Host]:
        """Hosts recorded in the state file (running or left over)."""
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise LabError(f"lab: cannot read {self.state_path}: {exc}") from exc
        return [Host.from_json(h) for h in data.get("hosts", [])]

    def _write_state(self, hosts: list[Host]) -> None:
        data = {"directory": str(self.directory), "hosts": [h.to_json() for h in hosts]}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state_path)
        tmp_inv = self.inventory_path.with_suffix(".tmp")
        tmp_inv.write_text(render_inventory(hosts, self.key_path), encoding="utf-8")
        tmp_inv.replace(self.inventory_path)

    # ---- up

    def up(self, count: int, progress: Progress | None = None) -> list[Host]:
        """Boot ``count`` hosts; on any failure everything made so far is removed."""
        say = progress or (lambda _msg: None)
        validate_count(count)
        problems = check_requirements()
        if problems:
            raise LabError(problems[0], details=problems[1:])
        self.directory.mkdir(parents=True, exist_ok=True)
        with _flock(self.directory / ".lock"):
            self._refuse_or_clean_stale(say)
            self._ensure_key()
            try:
                return self._up(count, say)
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
        if old or _mounts_under(self.directory) or _nspawn_pids_under(self.directory):
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

    def _up(self, count: int, say: Progress) -> list[Host]:
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
        for h in hosts:
            self._prepare_root(h)
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

    def _prepare_root(self, h: Host) -> None:
        base = self.host_dir(h.name)
        upper, work, root = base / "upper", base / "work", base / "root"
        for d in (upper, work, root):
            d.mkdir(parents=True, exist_ok=True)
        _sh(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir=/,upperdir={upper},workdir={work}",
            str(root),
        )
        # everything below is written through the overlay, so it lands in the upper layer
        system = root / "etc/systemd/system"
        system.mkdir(parents=True, exist_ok=True)
        for unit in MASKED_UNITS:
            link = system / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")
        wants = system / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        ssh_unit = wants / "ssh.service"
        if not ssh_unit.exists():
            ssh_unit.unlink(missing_ok=True)
            ssh_unit.symlink_to("/lib/systemd/system/ssh.service")
        (root / "etc/hostname").write_text(f"{h.name}\n", encoding="utf-8")
        # no egress from the hosts: names resolve from /etc/hosts, DNS fails at once
        # (a nameserver behind the veth would make every lookup wait for its timeout)
        hosts_file = root / "etc/hosts"
        hosts_file.write_text(
            "127.0.0.1 localhost\n"
            "::1 localhost ip6-localhost ip6-loopback\n"
            f"{h.address} {h.name}\n"
            f"{h.gateway} {h.name}-gw\n",
            encoding="utf-8",
        )
        resolv = root / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text(
            "# sockact lab: no DNS inside test hosts\nnameserver 127.0.0.1\n"
            "options timeout:1 attempts:1\n",
            encoding="utf-8",
        )
        machine_id = uuid.uuid4().hex
        (root / "etc/machine-id").write_text(machine_id + "\n", encoding="utf-8")
        dbus_id = root / "var/lib/dbus/machine-id"
        if dbus_id.exists() or dbus_id.is_symlink():
            dbus_id.unlink()
            dbus_id.write_text(machine_id + "\n", encoding="utf-8")
        sshd_dir = root / "etc/ssh/sshd_config.d"
        sshd_dir.mkdir(parents=True, exist_ok=True)
        (sshd_dir / "sockact-lab.conf").write_text(
            f"ListenAddress {h.address}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n",
            encoding="utf-8",
        )
        if not (root / "etc/ssh/ssh_host_ed25519_key").exists():
            _sh("ssh-keygen", "-A", "-f", str(root))
        dot_ssh = root / "root/.ssh"
        dot_ssh.mkdir(parents=True, exist_ok=True)
        dot_ssh.chmod(0o700)
        auth = dot_ssh / "authorized_keys"
        auth.write_text(
            self.key_path.with_suffix(".pub").read_text(encoding="utf-8"), encoding="utf-8"
        )
        auth.chmod(0o600)

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
        hosts = self.hosts()
        for h in hosts:
            try:
                self._stop_host(h, say)
            except Exception as exc:
                errors.append(str(exc))
        # leftovers not in the state file (killed between steps)
        for pid in _nspawn_pids_under(self.directory):
            self._kill_nspawn(pid, say)
        for mnt in _mounts_under(self.directory):
            try:
                self._umount(Path(mnt))
            except LabError as exc:
                errors.append(exc.message)
        if errors:
            raise LabError(errors[0], details=errors[1:])
        for path in (self.state_path, self.inventory_path):
            path.unlink(missing_ok=True)

    def _purge(self) -> None:
        if _mounts_under(self.directory):
            raise LabError(f"lab: mounts left under {self.directory}; not removing it")
        shutil.rmtree(self.directory, ignore_errors=True)

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
