"""What makes one lab host unique, written into its root before it boots.

A host's root is an overlay: a shared read-only lower layer (the minimal image, or ``/``
in clone mode) and the host's own upper layer. :func:`prepare_host_root` writes through
the mounted overlay, so everything lands in the upper layer: machine-id, hostname, hosts
and resolv.conf, unit masks, the sshd drop-in with the host's own ed25519 key, the lab's
authorized key, and the apt proxy the host reaches the Debian mirror through.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sockact_lab.errors import LabError
from sockact_lab.system import run_command

#: units masked in every host of the minimal image. None of them fails in the container
#: (booted without masks: "running", no failed unit); they are hygiene: a getty on
#: nspawn's read-only console, the first-boot wizard (prompts on the console should a host
#: ever boot with an empty /etc/machine-id), and timers whose work would race the tests
#: for apt's lock, dpkg's database or the disk.
IMAGE_MASKED_UNITS = (
    "systemd-firstboot.service",
    "console-getty.service",
    "getty@tty1.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "systemd-tmpfiles-clean.timer",
)

#: units masked in every clone host: not needed, slow, or wrong inside a container that
#: shares the machine's root filesystem (a second postgres/cron on the same files, apt
#: timers).
CLONE_MASKED_UNITS = (
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

APT_PROXY_CONF = "etc/apt/apt.conf.d/80sockact-lab-proxy"


@dataclass(frozen=True)
class HostConfig:
    """What makes one host unique."""

    hostname: str
    address: str
    gateway: str
    authorized_keys: str
    masked_units: tuple[str, ...] = IMAGE_MASKED_UNITS
    #: e.g. ``http://10.203.1.1:3142/``; None: no apt proxy configured
    apt_proxy: str | None = None
    #: link ssh.service into multi-user.target (the machine's "/" may not enable it; the
    #: image's openssh-server postinst did)
    enable_ssh: bool = False


def write_file(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    """Write ``root/rel`` as a new regular file, never following a symlink out of
    ``root`` (an absolute link in the tree would point into this machine)."""
    path = root
    parts = Path(rel).parts
    for part in parts[:-1]:
        path = path / part
        if path.is_symlink():
            raise LabError(f"lab: {path} is a symlink; not writing {rel} through it")
        path.mkdir(mode=0o755, exist_ok=True)
    path = path / parts[-1]
    if path.is_symlink() or path.exists():
        path.unlink()
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(mode)  # whatever the umask


def _symlink(root: Path, rel: str, target: str) -> None:
    path = root / rel
    if path.parent.is_symlink():
        raise LabError(f"lab: {path.parent} is a symlink; not linking {rel}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def prepare_host_root(root: Path, host: HostConfig) -> None:
    """Write one host's files through its mounted overlay ``root`` (they land in the upper
    layer; the lower layer is never written)."""
    machine_id = uuid.uuid4().hex
    write_file(root, "etc/machine-id", machine_id + "\n", 0o444)
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():  # a copy of its own ("/" in clone mode)
        write_file(root, "var/lib/dbus/machine-id", machine_id + "\n", 0o444)
    write_file(root, "etc/hostname", f"{host.hostname}\n")
    # no DNS: names come from /etc/hosts, a lookup fails at once (a nameserver behind the
    # veth would make every lookup wait for its timeout; apt goes through the proxy by
    # address and never resolves the mirror itself)
    write_file(
        root,
        "etc/hosts",
        "127.0.0.1 localhost\n"
        "::1 localhost ip6-localhost ip6-loopback\n"
        f"{host.address} {host.hostname}\n"
        f"{host.gateway} {host.hostname}-gw\n",
    )
    write_file(
        root,
        "etc/resolv.conf",
        "# sockact lab: no DNS inside test hosts\nnameserver 127.0.0.1\n"
        "options timeout:1 attempts:1\n",
    )
    for unit in host.masked_units:
        _symlink(root, f"etc/systemd/system/{unit}", "/dev/null")
    if host.enable_ssh:
        wants = "etc/systemd/system/multi-user.target.wants/ssh.service"
        if not (root / wants).exists():
            _symlink(root, wants, "/lib/systemd/system/ssh.service")
    write_file(
        root,
        "etc/ssh/sshd_config.d/sockact-lab.conf",
        f"ListenAddress {host.address}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n",
    )
    # the host's own ed25519 key (milliseconds, where ssh-keygen -A, RSA too, takes seconds)
    key = root / "etc/ssh/ssh_host_ed25519_key"
    for path in (key, key.with_name(key.name + ".pub")):
        if path.exists() or path.is_symlink():
            path.unlink()
    comment = f"root@{host.hostname}"
    run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])
    dot_ssh = root / "root/.ssh"
    dot_ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    dot_ssh.chmod(0o700)
    write_file(root, "root/.ssh/authorized_keys", host.authorized_keys, 0o600)
    if host.apt_proxy is not None:
        write_file(
            root,
            APT_PROXY_CONF,
            f'Acquire::http::Proxy "{host.apt_proxy}";\n'
            'Acquire::http::Timeout "30";\n'
            'Acquire::Retries "3";\n'
            'Acquire::Languages "none";\n',  # no Translation-* indexes to fetch and parse
        )
