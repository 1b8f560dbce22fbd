"""Bare Debian 12 hosts: what preflight refuses, then the example app from nothing.

A lab of 2 fresh hosts of the minimal image (systemd, sshd, python3; no venv module, no
compiler, nothing of this checkout). In file order:

1. a host whose python3 is gone, and a wheelhouse built for another Python: provision.yml
   fails with one line naming each host that does not qualify and why, before any host
   changed (the files of both hosts' systems are the same before and after);
2. provision.yml makes both bare hosts ready (the Debian packages with apt, through the
   lab's proxy to Debian's mirror);
3. the example app examples/catalog (its own distribution ``catalog-api``, not sockact's
   demo) deploys as release 1.0.0, then 2.0.0 under load with no failed request; each
   release is the catalog built at that version (a copy of examples/catalog with its
   version changed), so the app reports the version of its own metadata and the role's
   verify checks that, not a version the role wrote;
4. the testinfra suite passes against the hosts.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from sockact.runtime import release
from sockact_lab.lab import Host, Lab
from tests.ansible.playbooks import (
    BLUE,
    GREEN,
    PORT,
    REPO,
    active,
    assert_converged,
    assert_load_ok,
    assert_serves_only,
    deploy_under_load,
    diagnose,
    playbook,
    run_infra_suite,
    say,
)
from tests.releases import releases as build_releases

pytestmark = [pytest.mark.system, pytest.mark.ansible, pytest.mark.root, pytest.mark.slow]

CATALOG = REPO / "examples" / "catalog"
VERSIONS = ("1.0.0", "2.0.0")
#: the documented role variables for an app of your own (README, "Deploy your own app")
CATALOG_VARS: dict[str, Any] = {
    "sockact_app": "catalog:create_app",
    "sockact_warmup": "catalog:warm_up",
    "sockact_verify_path": "/healthz",
    "sockact_drain_timeout": 5.0,
    # the canary is tested in test_fleet.py; here it would only lengthen the switch
    "sockact_canary_seconds": 0,
}
#: what provisioning changes on a host; a run that stopped at preflight changes none of it
SYSTEM_DIRS = ("etc", "opt", "usr", "var/lib/dpkg", "var/lib/apt", "var/cache/apt")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Version -> wheelhouse of sockact, the locked dependencies and the catalog built at
    that version (tests/releases.py): two releases of different content."""
    houses = build_releases(VERSIONS, tmp_path_factory.mktemp("catalog"), app=CATALOG)
    for version, house in houses.items():
        assert (house / f"catalog_api-{version}-py3-none-any.whl").exists(), sorted(house.iterdir())
    return houses


def _vars(releases: dict[str, Path], version: str) -> dict[str, Any]:
    return {
        **CATALOG_VARS,
        "sockact_wheelhouse": str(releases[version]),
        "sockact_release": f"catalog-{version}",
    }


def system_files(lab: Lab, h: Host) -> dict[str, tuple[int, int, int]]:
    """What the host's system directories hold in its own overlay layer (path -> mode,
    size, mtime): the image below never changes, so this is everything that changed."""
    upper = lab.host_dir(h.name) / "upper"
    found = {}
    for top in SYSTEM_DIRS:
        for path in sorted((upper / top).rglob("*")):
            st = path.lstat()
            found[str(path.relative_to(upper))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def installed(h: Host, package: str) -> bool:
    proc = h.run("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return proc.stdout == "install ok installed"


def refused(run_output: str, h: Host, reason: str) -> list[str]:
    """The output's lines that say, whole, that ``h`` does not qualify because ``reason``."""
    line = re.compile(rf"(^|: ){re.escape(h.name)} does not qualify for sockact: {reason}$")
    return [text for text in run_output.splitlines() if line.search(text)]


def assert_stopped_before_any_change(
    run_output: str,
    before: dict[str, dict[str, tuple[int, int, int]]],
    after: dict[str, dict[str, tuple[int, int, int]]],
    hosts: list[Host],
) -> None:
    assert "PLAY [Provision sockact hosts]" not in run_output, run_output[-3000:]
    for h in hosts:
        assert after[h.name] == before[h.name], f"{h.name} changed"
        assert not installed(h, "python3-venv")
        assert h.run("id", "api", check=False).returncode != 0


# --------------------------------------------------------------------------- preflight


def test_a_host_without_python3_fails_before_any_host_changes(
    alab: Lab, hosts: list[Host], releases: dict[str, Path]
) -> None:
    good, broken = hosts
    broken.run("mv", "/usr/bin/python3", "/usr/bin/python3.away")
    try:
        before = {h.name: system_files(alab, h) for h in hosts}
        run = playbook("provision.yml", alab.inventory_path, _vars(releases, "1.0.0"))
        after = {h.name: system_files(alab, h) for h in hosts}
    finally:
        broken.run("mv", "/usr/bin/python3.away", "/usr/bin/python3")
    assert run.rc != 0, run.tail()
    lines = refused(run.output, broken, r"no /usr/bin/python3 \([^;]*\)")
    assert lines, run.tail()
    print(f"{broken.name} refused in {run.seconds:.0f} s: {lines[0]}")
    assert f"{good.name} does not qualify" not in run.output, run.tail()
    assert run.recap[good.name]["failed"] == 0 and run.recap[good.name]["changed"] == 0
    assert run.recap[broken.name]["failed"] == 1, run.tail()
    assert_stopped_before_any_change(run.output, before, after, hosts)


def test_a_wheelhouse_for_another_python_fails_on_every_host(
    alab: Lab, hosts: list[Host], tmp_path: Path
) -> None:
    wheelhouse = tmp_path / "wheelhouse-cp312"
    wheelhouse.mkdir()
    with zipfile.ZipFile(wheelhouse / "fast-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "w") as zf:
        zf.writestr("fast/__init__.py", "")
    before = {h.name: system_files(alab, h) for h in hosts}
    extra = {**CATALOG_VARS, "sockact_wheelhouse": str(wheelhouse), "sockact_release": "fast"}
    run = playbook("provision.yml", alab.inventory_path, extra)
    after = {h.name: system_files(alab, h) for h in hosts}
    assert run.rc != 0, run.tail()
    for h in hosts:
        reason = (
            r"/usr/bin/python3 is Python 3\.11\.\d+, but the wheels are built for CPython "
            rf"3\.12 \(the wheelhouse {re.escape(str(wheelhouse))}\)"
        )
        assert refused(run.output, h, reason), run.tail()
    assert_stopped_before_any_change(run.output, before, after, hosts)


# --------------------------------------------------------------------------- from bare to deployed


@pytest.fixture(scope="module")
def provisioned(alab: Lab, hosts: list[Host], releases: dict[str, Path]) -> Path:
    for h in hosts:
        assert not installed(h, "python3-venv"), f"{h.name} is not a bare host"
    run = playbook("provision.yml", alab.inventory_path, _vars(releases, "1.0.0"))
    assert run.rc == 0, run.tail()
    say(f"provisioned {len(hosts)} bare hosts in {run.seconds:.0f} s")
    print(f"provision.yml on {len(hosts)} bare hosts: {run.seconds:.0f} s")
    for h in hosts:
        assert installed(h, "python3-venv") and installed(h, "python3-apt"), h.name
        assert h.run("cat", "/proc/sys/net/ipv4/tcp_migrate_req").stdout.strip() == "1"
    return alab.inventory_path


def test_the_catalog_v1_then_v2_under_load_without_a_failed_request(
    provisioned: Path, hosts: list[Host], releases: dict[str, Path]
) -> None:
    run = playbook("deploy.yml", provisioned, _vars(releases, "1.0.0"))
    assert run.rc == 0, run.tail()
    v1 = release.from_wheelhouse(releases["1.0.0"]).digest
    for h in hosts:
        assert assert_converged(h, v1)["color"] == "blue", diagnose(hosts)
        assert active(h, BLUE) == ["active", "active"], diagnose(hosts)

    run, report = deploy_under_load(
        "catalog 1.0.0 -> 2.0.0 (bare hosts)", provisioned, _vars(releases, "2.0.0"), hosts
    )
    assert run.rc == 0, run.tail()
    assert_load_ok(report, "catalog 1.0.0 -> 2.0.0")
    assert {ver for (_inst, ver) in report.samples} == set(VERSIONS), report.samples
    v2 = release.from_wheelhouse(releases["2.0.0"]).digest
    for h in hosts:
        rec = assert_converged(h, v2)
        assert (rec["color"], rec["port"]) == ("green", PORT), rec
        assert active(h, GREEN) == ["active", "active"], diagnose(hosts)
        assert active(h, BLUE) == ["inactive", "inactive"], diagnose(hosts)
        # the app's own answer: its metadata's version, its instance, its data loaded
        assert_serves_only(h, GREEN, "2.0.0")


def test_the_testinfra_suite_passes_on_the_catalog_hosts(provisioned: Path) -> None:
    proc = run_infra_suite(provisioned)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
