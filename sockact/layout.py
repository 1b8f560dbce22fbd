"""The host layout: the one home of every name, path and number that the runtime, the
unit files, the Ansible role, the tests and the host checks share.

Nothing else writes these facts down: the runtime takes the admin port from here, the
units and the role take paths, colors and file names from here (the role through
``sockact layout`` on the controller: sockact/controller/units.py prints
:meth:`HostLayout.describe`), and so do the tests.

>>> HostLayout("api").instance_config(101)
'/etc/api/instances/101.toml'
>>> admin_port(101), color_of(101), instances_of("green", 2)
(9101, 'green', [101, 102])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

#: How the instances of a host share the main port (``sockact units render --listen``,
#: the role's ``sockact_listen``): each binds it with SO_REUSEPORT, or systemd's socket unit
#: holds it and every instance inherits it.
DEPLOY_LISTEN_MODES: Final = ("reuseport", "socket")
#: What ``sockact serve`` does about the listener (its ``listen`` setting): ``inherit`` the
#: socket systemd passed, bind with SO_REUSEPORT, or ``auto`` (inherit when one was passed).
SERVE_LISTEN_MODES: Final = ("auto", "reuseport", "inherit")
#: The ``listen`` setting each deploy mode writes into the instances' config files.
SERVE_MODE_OF: Final = {"reuseport": "reuseport", "socket": "inherit"}

DEFAULT_NAME: Final = "api"
#: FileDescriptorName= of the socket unit, and the ``socket_name`` an instance looks for.
SOCKET_NAME: Final = "http"

#: An instance's admin server listens on 127.0.0.1:ADMIN_PORT_BASE + instance.
ADMIN_PORT_BASE: Final = 9000
#: Blue/green: the instances of a color are offset + 1 .. offset + N.
COLOR_OFFSETS: Final = {"blue": 0, "green": 100}
#: At most this many instances per color (so the colors never overlap).
MAX_PER_COLOR: Final = 99
#: In each release directory: what the release is (label, digest, wheels), written last by
#: the install, so a directory without it is an incomplete install.
RELEASE_META: Final = "release.json"
#: In the config dir: the Prometheus file_sd targets file of the host (docs/metrics.md).
PROMETHEUS_TARGETS: Final = "prometheus-targets.json"


def admin_port(instance: int) -> int:
    """The default admin port of ``instance``."""
    return ADMIN_PORT_BASE + instance


def instances_of(color: str, count: int) -> list[int]:
    """The instance numbers of ``color`` when each color runs ``count`` instances."""
    offset = COLOR_OFFSETS[color]
    return list(range(offset + 1, offset + 1 + count))


def color_of(instance: int) -> str:
    """The color ``instance`` belongs to."""
    for color, offset in sorted(COLOR_OFFSETS.items(), key=lambda kv: -kv[1]):
        if offset < instance <= offset + MAX_PER_COLOR:
            return color
    raise ValueError(f"instance {instance} belongs to no color")


def other_color(color: str) -> str:
    """Blue for green and green for blue."""
    (other,) = (c for c in COLOR_OFFSETS if c != color)
    return other


@dataclass(frozen=True)
class HostLayout:
    """Where a deploy of unit name ``name`` keeps its files on a host.

    Empty ``config_dir`` and ``release_root`` default to ``/etc/<name>`` and ``/opt/<name>``.
    """

    name: str = DEFAULT_NAME
    config_dir: str = ""
    release_root: str = ""
    unit_dir: str = "/etc/systemd/system"
    sysctl_dir: str = "/etc/sysctl.d"

    def __post_init__(self) -> None:
        if not self.config_dir:
            object.__setattr__(self, "config_dir", f"/etc/{self.name}")
        if not self.release_root:
            object.__setattr__(self, "release_root", f"/opt/{self.name}")

    # -- files of the config dir (root-owned, readable by the service group)
    @property
    def deploy_record(self) -> str:
        """The record of the last finished switch (color, release, instances...)."""
        return f"{self.config_dir}/deploy.json"

    @property
    def deploy_intent(self) -> str:
        """What a switch in progress is about to do (written before it starts or stops an
        instance, removed when it is done): a run that finds it was interrupted."""
        return f"{self.config_dir}/deploy.intent.json"

    @property
    def instance_config_dir(self) -> str:
        return f"{self.config_dir}/instances"

    @property
    def prometheus_targets(self) -> str:
        """The Prometheus file_sd targets file: the admin endpoint of every instance of the
        colors that run, with their labels (docs/metrics.md); mode 0644, written by the
        role at each switch."""
        return f"{self.config_dir}/{PROMETHEUS_TARGETS}"

    def instance_config(self, instance: int | str) -> str:
        return f"{self.instance_config_dir}/{instance}.toml"

    def instance_env(self, instance: int | str) -> str:
        return f"{self.instance_config_dir}/{instance}.env"

    # -- the release root
    @property
    def releases_dir(self) -> str:
        return f"{self.release_root}/releases"

    def release_dir(self, release: str) -> str:
        return f"{self.releases_dir}/{release}"

    def release_meta(self, release: str) -> str:
        return f"{self.release_dir(release)}/{RELEASE_META}"

    @property
    def wheelhouse_dir(self) -> str:
        """Where an install unpacks a release's wheels (root only), removed after it."""
        return f"{self.release_root}/wheelhouse"

    @property
    def instances_dir(self) -> str:
        """Where the instance links are."""
        return f"{self.release_root}/instances"

    def instance_link(self, instance: int | str) -> str:
        """Symlink to the release directory (a venv) that ``instance`` runs."""
        return f"{self.instances_dir}/{instance}"

    # -- systemd
    @property
    def instance_unit_file(self) -> str:
        return f"{self.name}@.service"

    def instance_unit(self, instance: int | str) -> str:
        return f"{self.name}@{instance}.service"

    @property
    def socket_unit(self) -> str:
        return f"{self.name}.socket"

    @property
    def holder_unit(self) -> str:
        return f"{self.name}.service"

    @property
    def sysctl_file(self) -> str:
        """Name of the sysctl drop-in of reuseport mode (net.ipv4.tcp_migrate_req = 1)."""
        return f"60-{self.name}-reuseport.conf"

    def unit_files(self, listen: str) -> list[str]:
        """The unit files ``units render`` writes for ``listen`` (into ``unit_dir``)."""
        if listen == "socket":
            return [self.instance_unit_file, self.socket_unit, self.holder_unit]
        return [self.instance_unit_file]

    def describe(self) -> dict[str, Any]:
        """Everything above as plain data (what ``sockact layout`` prints as JSON)."""
        return {
            **asdict(self),
            "deploy_record": self.deploy_record,
            "deploy_intent": self.deploy_intent,
            "prometheus_targets": self.prometheus_targets,
            "release_meta_file": RELEASE_META,
            "wheelhouse_dir": self.wheelhouse_dir,
            "releases_dir": self.releases_dir,
            "instances_dir": self.instances_dir,
            "instance_config_dir": self.instance_config_dir,
            "instance_unit_file": self.instance_unit_file,
            "socket_unit": self.socket_unit,
            "holder_unit": self.holder_unit,
            "sysctl_file": self.sysctl_file,
            "unit_files": {mode: self.unit_files(mode) for mode in DEPLOY_LISTEN_MODES},
            "socket_name": SOCKET_NAME,
            "admin_port_base": ADMIN_PORT_BASE,
            "color_offsets": dict(COLOR_OFFSETS),
            "max_per_color": MAX_PER_COLOR,
            "listen_modes": list(DEPLOY_LISTEN_MODES),
            "serve_mode_of": dict(SERVE_MODE_OF),
        }
