"""``sockact verify``'s checks of what the service can reach, run on this machine through
testinfra's local backend: real ``stat`` and ``find`` over a release and a config
directory made under ``tmp_path`` (every directory above it is root's: /tmp is sticky).
The same checks against lab hosts: tests/infra_selftest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import testinfra

from sockact import layout
from sockact.controller.verify import checks
from sockact.controller.verify.facts import Record
from sockact.controller.verify.plugin import Checked
from tests.needs import need_root

DIGEST = "ab" * 32
INSTANCE = 1


@pytest.fixture(scope="module")
def local() -> Any:
    return testinfra.get_host("local://")


def lay(tmp_path: Path) -> layout.HostLayout:
    return layout.HostLayout(
        "api",
        config_dir=str(tmp_path / "etc" / "api"),
        release_root=str(tmp_path / "opt" / "api"),
        unit_dir=str(tmp_path / "units"),
    )


def record(host_layout: layout.HostLayout) -> Record:
    return Record(
        "blue",
        "1.0",
        DIGEST,
        host_layout.release_dir("1.0"),
        (INSTANCE,),
        "reuseport",
        8080,
    )


def _dir(path: str, mode: int = 0o755, group: str = "root") -> None:
    os.makedirs(path, exist_ok=True)
    shutil.chown(path, "root", group)
    os.chmod(path, mode)


def _file(path: str, mode: int = 0o644, group: str = "root") -> None:
    Path(path).write_text("x\n")
    shutil.chown(path, "root", group)
    os.chmod(path, mode)


def installed_release(tmp_path: Path) -> tuple[layout.HostLayout, Record]:
    """A right release on this machine: root's, writable by root alone, one instance link."""
    need_root("the release and the links must be root's, as on a host")
    _dir(str(tmp_path))
    host_layout = lay(tmp_path)
    rec = record(host_layout)
    for path in (
        str(tmp_path / "opt"),
        host_layout.release_root,
        host_layout.releases_dir,
        rec.release_dir,
        f"{rec.release_dir}/bin",
        host_layout.instances_dir,
    ):
        _dir(path)
    _file(f"{rec.release_dir}/bin/python")
    os.symlink(rec.release_dir, host_layout.instance_link(INSTANCE))
    return host_layout, rec


def reach_failure(local: Any, checked: Checked, rec: Record) -> str:
    with pytest.raises(AssertionError) as failed:
        checks.test_release_is_not_writable_by_the_service(local, checked, rec)
    return str(failed.value).partition("\n=====")[0]  # without the diagnosis


def test_a_right_release_passes(local: Any, tmp_path: Path) -> None:
    host_layout, rec = installed_release(tmp_path)
    checks.test_release_is_not_writable_by_the_service(local, Checked(host_layout, "api", 0.0), rec)


def test_a_group_writable_release_dir_is_named_once(local: Any, tmp_path: Path) -> None:
    host_layout, rec = installed_release(tmp_path)
    os.chmod(rec.release_dir, 0o775)
    message = reach_failure(local, Checked(host_layout, "api", 0.0), rec)
    assert message.count(f"{rec.release_dir}:") == 1, message
    assert f"{rec.release_dir}: root:root 0775" in message, message


def test_a_problem_inside_is_named_beside_the_release_dirs_own(local: Any, tmp_path: Path) -> None:
    """The release dir's own problem does not hide the first one inside it."""
    host_layout, rec = installed_release(tmp_path)
    os.chmod(rec.release_dir, 0o777)
    os.chmod(f"{rec.release_dir}/bin/python", 0o664)
    message = reach_failure(local, Checked(host_layout, "api", 0.0), rec)
    assert message.count(f"{rec.release_dir}:") == 1, message
    assert f"{rec.release_dir}/bin/python: not root's, or group/other writable" in message


def test_a_sticky_release_dir_others_can_write_is_named_once(local: Any, tmp_path: Path) -> None:
    """The sticky exception is for directories above the release (``/tmp``), not for the
    release itself: the service could add files to it."""
    host_layout, rec = installed_release(tmp_path)
    os.chmod(rec.release_dir, 0o1777)
    message = reach_failure(local, Checked(host_layout, "api", 0.0), rec)
    assert message.count(f"{rec.release_dir}:") == 1, message
    assert f"{rec.release_dir}: root:root 1777" in message, message
