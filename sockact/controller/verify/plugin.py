"""The pytest plugin of ``sockact verify``: options, the host layout, each host's deploy
record, and the parametrization of every check over hosts (and instances).

testinfra's own plugin stays loaded (``--hosts``, ``--ansible-inventory``, ``--ssh-config``,
``--sudo``... all work), but the checks do not take their ``host`` from it: testinfra
parametrizes over hosts only, and a check of one instance must run once per instance *of
that host*. So this plugin reads each host's record while collecting (one ``cat`` per
host) and parametrizes ``sockact_host`` (and ``instance``, for the checks that take it)
with the pairs that exist; :mod:`~sockact.controller.verify.checks` turns ``sockact_host``
into the usual ``host`` fixture.

Run by ``sockact verify`` (:mod:`~sockact.controller.verify.command`); by hand::

    pytest -p sockact.controller.verify.plugin --hosts=ansible://api \\
        --ansible-inventory=inventory.ini "$(python -c 'import sockact.controller.verify.checks
        as c; print(c.__file__)')"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import testinfra

from sockact import layout, settings
from sockact.controller.units import UnitOptions, group_of
from sockact.controller.verify.facts import Record, parse_record, without_ssh_noise

#: the options of the host layout and of the checks: name -> (default, help)
OPTIONS: dict[str, tuple[Any, str]] = {
    "name": (layout.DEFAULT_NAME, "unit name, as in `sockact units render --name` (default api)"),
    "user": (settings.RENDER["user"].default, "system user the instances run as (default api)"),
    "group": (
        settings.RENDER["group"].default,
        "group of the instances, as in `sockact units render --group` (default: the user's "
        "name, as units render and the role derive it)",
    ),
    "config_dir": ("", "config directory holding deploy.json (default /etc/<name>)"),
    "release_root": ("", "releases and instance links (default /opt/<name>)"),
    "unit_dir": (layout.HostLayout().unit_dir, "where the unit files are installed"),
    "sysctl_dir": (layout.HostLayout().sysctl_dir, "where the sysctl drop-in is installed"),
    "max_exposure": (
        0.0,
        "highest `systemd-analyze security` exposure accepted for a running instance "
        "(default: what systemd-analyze gives the installed unit file itself, offline)",
    ),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sockact", "sockact verify: the host layout")
    for key, (default, help_text) in OPTIONS.items():
        kwargs: dict[str, Any] = {"default": default, "help": help_text}
        if isinstance(default, float):
            kwargs["type"] = float
        group.addoption(f"--sockact-{key.replace('_', '-')}", dest=f"sockact_{key}", **kwargs)


@dataclass(frozen=True)
class Checked:
    """What the checks are told about the hosts besides the layout."""

    layout: layout.HostLayout
    #: ``User=`` the units were rendered with
    user: str
    #: ``Group=`` the units were rendered with (the role's ``sockact_group``); empty: the
    #: default of ``units render``, see :attr:`service_group`
    group: str = ""
    #: 0: compare with the installed unit file's own exposure
    max_exposure: float = 0.0

    @property
    def service_group(self) -> str:
        """The instances' group: ``--group``, or the default ``units render`` gives an
        empty one (:func:`~sockact.controller.units.group_of`: the user's name)."""
        return group_of(self.user, self.group)

    def unit_options(self, record: Record) -> UnitOptions:
        """The options ``sockact units render`` was given for a host with ``record``, as
        far as the checks know them (the rest at their defaults). Raises
        :class:`~sockact.errors.BadInput` for options ``units render`` would refuse."""
        return UnitOptions(
            name=self.layout.name,
            user=self.user,
            group=self.group,
            config_dir=self.layout.config_dir,
            release_root=self.layout.release_root,
            listen=record.listen,
            port=record.port,
        )


def checked_from(config: pytest.Config) -> Checked:
    def opt(key: str) -> Any:
        return config.getoption(f"sockact_{key}", OPTIONS[key][0])

    lay = layout.HostLayout(
        name=opt("name"),
        config_dir=opt("config_dir"),
        release_root=opt("release_root"),
        unit_dir=opt("unit_dir"),
        sysctl_dir=opt("sysctl_dir"),
    )
    return Checked(lay, opt("user"), opt("group"), float(opt("max_exposure")))


@dataclass
class HostFacts:
    """A host's deploy record as read while collecting: the record, or why there is none."""

    record: Record | None
    problems: list[str] = field(default_factory=list)


_FACTS = pytest.StashKey[dict[str, HostFacts]]()
_HOSTS = pytest.StashKey[list[Any]]()
_UNMATCHED = pytest.StashKey[str]()


def target_hosts(config: pytest.Config) -> list[Any]:
    """The testinfra hosts of ``--hosts`` (the same call, and cache, as testinfra's)."""
    if _HOSTS in config.stash:
        return config.stash[_HOSTS]
    opt = config.option
    specs = opt.hosts.split(",") if opt.hosts else []
    hosts = (
        testinfra.get_hosts(
            specs,
            connection=opt.connection,
            ssh_config=opt.ssh_config,
            ssh_identity_file=opt.ssh_identity_file,
            sudo=opt.sudo,
            sudo_user=opt.sudo_user,
            ansible_inventory=opt.ansible_inventory,
            force_ansible=opt.force_ansible,
        )
        if specs or opt.connection
        else []
    )
    hosts = sorted(hosts, key=host_id)
    config.stash[_HOSTS] = hosts
    if not hosts:
        config.stash[_UNMATCHED] = opt.hosts or ""
    return hosts


def host_id(host: Any) -> str:
    """testinfra's name of ``host`` (``ansible://sockact-1``)."""
    name: str = host.backend.get_pytest_id()
    return name


def facts_of(config: pytest.Config, host: Any) -> HostFacts:
    """The deploy record of ``host``, read once per run."""
    cache = config.stash.setdefault(_FACTS, {})
    key = host_id(host)
    if key not in cache:
        path = checked_from(config).layout.deploy_record
        res = host.run("cat %s", path)
        if res.rc != 0:
            why = without_ssh_noise(res.stderr) or f"exit {res.rc}"
            cache[key] = HostFacts(
                None, [f"{path} unreadable: {why} -- has a deploy finished on this host?"]
            )
        else:
            record, problems = parse_record(res.stdout)
            cache[key] = HostFacts(record, [f"{path} is invalid: {p}" for p in problems])
    return cache[key]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every check once per host; a check that takes ``instance`` once per instance that
    the host's record names (ids ``<host>/<name>@<i>``)."""
    if "sockact_host" not in metafunc.fixturenames:
        return
    config = metafunc.config
    hosts = target_hosts(config)
    if "instance" not in metafunc.fixturenames:
        metafunc.parametrize("sockact_host", hosts, ids=[host_id(h) for h in hosts], scope="module")
        return
    lay = checked_from(config).layout
    pairs, ids = [], []
    for h in hosts:
        record = facts_of(config, h).record
        for i in record.instances if record else ():
            pairs.append((h, i))
            ids.append(f"{host_id(h)}/{lay.name}@{i}")
    metafunc.parametrize(("sockact_host", "instance"), pairs, ids=ids, scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # a pattern that matches nothing leaves one "empty parameter set" skip per check: a run
    # that checked no host must not look green
    if _UNMATCHED in config.stash:
        raise pytest.UsageError(
            f"--hosts={config.stash[_UNMATCHED]!r} matched no host "
            f"(inventory {config.option.ansible_inventory})"
        )


@pytest.fixture(scope="session")
def checked(pytestconfig: pytest.Config) -> Checked:
    """The layout and options the checks use."""
    return checked_from(pytestconfig)


@pytest.fixture(scope="module")
def record(request: pytest.FixtureRequest, sockact_host: Any) -> Record:
    """The deploy record of this host; every check but the record's own starts from it."""
    facts = facts_of(request.config, sockact_host)
    if facts.record is None:
        pytest.fail("\n".join(facts.problems), pytrace=False)
    return facts.record
