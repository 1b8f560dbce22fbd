"""What the role requires of a host: the wheelhouse's needs (library/sockact_wheelhouse.py)
and the host probe's verdict (filter_plugins/sockact_host.py), without a host.

The end-to-end cases (a real host without python3, a wheelhouse for another Python: one
line naming the host, no host changed) are in tests/ansible/test_bare_hosts.py.
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "sockact"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelhouse = _load("sockact_wheelhouse", ROLE / "library" / "sockact_wheelhouse.py")
host = _load("sockact_host_filters", ROLE / "filter_plugins" / "sockact_host.py")

#: what Debian 12's hosts of the lab image print (the probe script of host_requirements.yml)
DEBIAN12 = """\
os_id=debian\r
os_version=12
os_name=Debian GNU/Linux 12 (bookworm)
systemd_booted=yes
systemd_version=252
apt=/usr/bin/apt-get
machine=x86_64
python=3.11.2
python_impl=CPython
arch=x86_64
libc=glibc 2.36
probe=done
"""
NEEDS = {
    "python": "3.11",
    "abi3_min": "",
    "arch": ["x86_64"],
    "glibc": "2.17",
    "source": "the wheelhouse /w",
}


def _probe(**changes: str | None) -> str:
    facts = host.probe_facts(DEBIAN12)
    for key, value in changes.items():
        if value is None:
            facts.pop(key, None)
        else:
            facts[key] = value
    return "".join(f"{k}={v}\n" for k, v in facts.items() if k != "probe") + "probe=done\n"


def _wheel(directory: Path, name: str, files: dict[str, bytes] | None = None) -> Path:
    path = directory / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in (files or {"pkg/__init__.py": b""}).items():
            zf.writestr(member, data)
    return path


# --------------------------------------------------------------------------- the host


def test_a_debian_12_host_with_the_wheelhouse_python_qualifies() -> None:
    assert host.host_problems(DEBIAN12, NEEDS) == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"python": None, "python_impl": None, "arch": None, "libc": None}, "no /usr/bin/python3"),
        ({"python": "3.12.1"}, "is Python 3.12.1, but the wheels are built for CPython 3.11"),
        ({"systemd_booted": None}, "systemd is not the init system"),
        ({"systemd_version": "247"}, "systemd 247 is older than 252"),
        ({"apt": ""}, "no apt-get"),
        (
            {"os_id": "ubuntu", "os_version": "24.04", "os_name": "Ubuntu 24.04 LTS"},
            "runs Ubuntu 24.04 LTS, not Debian 12 (bookworm)",
        ),
        ({"os_version": "11", "os_name": "Debian GNU/Linux 11 (bullseye)"}, "bullseye"),
        ({"arch": "aarch64"}, "the CPU is aarch64, but the wheels are for x86_64"),
        ({"libc": "glibc 2.12"}, "glibc 2.12 is older than 2.17"),
        ({"python_impl": "PyPy"}, "is PyPy, not CPython"),
    ],
)
def test_each_reason_a_host_does_not_qualify(changes: dict[str, str | None], reason: str) -> None:
    problems = host.host_problems(_probe(**changes), NEEDS)
    assert len(problems) == 1, problems
    assert reason in problems[0]
    assert "\n" not in problems[0]


def test_several_reasons_are_all_named() -> None:
    problems = host.host_problems(_probe(apt="", systemd_booted=None), NEEDS)
    assert len(problems) == 2, problems


def test_a_probe_that_did_not_finish_is_a_problem() -> None:
    problems = host.host_problems("os_id=debian\nsh: 3: syntax error\n", NEEDS)
    assert problems == ["the host probe did not finish (sh: 3: syntax error)"]


def test_pure_wheels_need_no_particular_python() -> None:
    pure = {"python": "", "abi3_min": "", "arch": [], "glibc": "", "source": "x"}
    assert host.host_problems(_probe(python="3.13.0", libc="musl 1.2"), pure) == []


def test_probe_facts_tolerate_carriage_returns_and_noise() -> None:
    facts = host.probe_facts("os_id=debian\r\nWarning: something\nlibc=glibc 2.36\r\n")
    assert facts == {"os_id": "debian", "libc": "glibc 2.36"}


# --------------------------------------------------------------------------- the wheelhouse


def test_wheel_names_and_platform_tags() -> None:
    assert wheelhouse.parse_wheel_name("a_b-1.0-cp311-cp311-linux_x86_64.whl") == (
        ["cp311"],
        ["cp311"],
        ["linux_x86_64"],
    )
    assert wheelhouse.platform_needs("manylinux_2_28_aarch64") == ("aarch64", (2, 28), "glibc")
    assert wheelhouse.platform_needs("manylinux2014_x86_64") == ("x86_64", (2, 17), "glibc")
    assert wheelhouse.platform_needs("any") == ("", None, "")
    with pytest.raises(ValueError, match="not for Linux"):
        wheelhouse.platform_needs("win_amd64")


def test_wheelhouse_needs_read_from_tags_and_linked_glibc(tmp_path: Path) -> None:
    _wheel(tmp_path, "flask-3.1.3-py3-none-any.whl")
    # a compressed tag set: the lowest glibc of its alternatives is what it needs
    _wheel(tmp_path, "markupsafe-3.0.4-cp311-cp311-manylinux_2_28_x86_64.manylinux2014_x86_64.whl")
    # built locally (no manylinux tag): the glibc its shared object was linked against
    so = b"\x7fELF...libc.so.6\x00GLIBC_2.2.5\x00GLIBC_2.34\x00GLIBC_2.4\x00"
    _wheel(tmp_path, "systemd_python-235-cp311-cp311-linux_x86_64.whl", {"systemd/_j.so": so})
    needs: dict[str, Any] = wheelhouse.wheelhouse_needs(str(tmp_path))
    assert (needs["python"], needs["arch"], needs["glibc"]) == ("3.11", ["x86_64"], "2.34")
    assert needs["wheels"] == 3
    # and such a host qualifies for it, an older glibc does not
    assert host.host_problems(DEBIAN12, needs) == []
    (problem,) = host.host_problems(_probe(libc="glibc 2.31"), needs)
    assert "glibc 2.31 is older than 2.34" in problem


def test_a_wheelhouse_of_two_pythons_is_refused(tmp_path: Path) -> None:
    _wheel(tmp_path, "a-1-cp311-cp311-manylinux_2_17_x86_64.whl")
    _wheel(tmp_path, "b-1-cp312-cp312-manylinux_2_17_x86_64.whl")
    with pytest.raises(ValueError, match=r"mixes CPython versions: 3\.11 \(a-1.*3\.12 \(b-1"):
        wheelhouse.wheelhouse_needs(str(tmp_path))


def test_an_empty_wheelhouse_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no wheels"):
        wheelhouse.wheelhouse_needs(str(tmp_path))


def test_without_a_wheelhouse_the_controller_python_decides() -> None:
    needs = wheelhouse.controller_needs(sys.executable)
    assert needs["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert needs["arch"] and needs["source"].startswith("the controller's")
