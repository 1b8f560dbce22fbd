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
from sockact.controller.units import UnitOptions, render_units
from sockact.controller.verify import checks
from sockact.controller.verify.facts import Record
from sockact.controller.verify.plugin import Checked
from tests.needs import need_root

DIGEST = "ab" * 32
INSTANCE = 1
#: a group that exists on every Debian host, named unlike any service user
OTHER_GROUP = "adm"


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
    checks.test_release_is_not_writable_by_the_service(local, Checked(host_layout, "api", ""), rec)


def test_a_group_writable_release_dir_is_named_once(local: Any, tmp_path: Path) -> None:
    host_layout, rec = installed_release(tmp_path)
    os.chmod(rec.release_dir, 0o775)
    message = reach_failure(local, Checked(host_layout, "api", ""), rec)
    assert message.count(f"{rec.release_dir}:") == 1, message
    assert f"{rec.release_dir}: root:root 0775" in message, message


def test_a_problem_inside_is_named_beside_the_release_dirs_own(local: Any, tmp_path: Path) -> None:
    """The release dir's own problem does not hide the first one inside it."""
    host_layout, rec = installed_release(tmp_path)
    os.chmod(rec.release_dir, 0o777)
    os.chmod(f"{rec.release_dir}/bin/python", 0o664)
    message = reach_failure(local, Checked(host_layout, "api", ""), rec)
    assert message.count(f"{rec.release_dir}:") == 1, message
    assert f"{rec.release_dir}/bin/python: not root's, or group/other writable" in message


def test_a_sticky_release_dir_others_can_write_is_named_once(local: Any, tmp_path: Path) -> None:
    """The sticky exception is for directories above the release (``/tmp``), not for the
    release itself: the service could add files to it."""
    host_layout, rec = installed_release(tmp_path)
    os.chmod(rec.release_dir, 0o1777)
    message = reach_failure(local, Checked(host_layout, "api", ""), rec)
    assert message.count(f"{rec.release_dir}:") == 1, message
    assert f"{rec.release_dir}: root:root 1777" in message, message


def config_files(tmp_path: Path, group: str) -> layout.HostLayout:
    """The instance's settings and env file, root's in ``group``, 0640, in a root 0750 dir."""
    need_root("the files must be root's, in a group of this machine, as on a host")
    _dir(str(tmp_path))
    host_layout = lay(tmp_path)
    _dir(str(tmp_path / "etc"))
    _dir(host_layout.config_dir)
    _dir(host_layout.instance_config_dir, 0o750, group)
    _file(host_layout.instance_config(INSTANCE), 0o640, group)
    _file(host_layout.instance_env(INSTANCE), 0o640, group)
    return host_layout


def test_instance_files_in_the_configured_group_pass(local: Any, tmp_path: Path) -> None:
    """``--group`` (the role's ``sockact_group``) need not be named like the user."""
    host_layout = config_files(tmp_path, OTHER_GROUP)
    checked = Checked(host_layout, "api", OTHER_GROUP)
    checks.test_instance_files_belong_to_root_and_hide_from_others(local, checked, INSTANCE)


def test_instance_files_in_the_users_group_fail_when_another_is_configured(
    local: Any, tmp_path: Path
) -> None:
    host_layout = config_files(tmp_path, "root")
    checked = Checked(host_layout, "api", OTHER_GROUP)
    with pytest.raises(AssertionError) as failed:
        checks.test_instance_files_belong_to_root_and_hide_from_others(local, checked, INSTANCE)
    config = host_layout.instance_config(INSTANCE)
    assert f"{config}: root:root 0640 (want root:{OTHER_GROUP}, at most 0640)" in str(failed.value)


def test_without_a_group_the_files_are_in_the_users_group(local: Any, tmp_path: Path) -> None:
    """No ``--group``: the group ``units render`` gives (and the role makes), the user's name."""
    host_layout = config_files(tmp_path, OTHER_GROUP)
    checks.test_instance_files_belong_to_root_and_hide_from_others(
        local, Checked(host_layout, OTHER_GROUP, ""), INSTANCE
    )


def test_hardening_as_rendered_with_the_configured_group(local: Any, tmp_path: Path) -> None:
    """A unit rendered with ``--group web`` is as rendered when verify is told the group
    (no root needed: the check only reads the unit file)."""
    # the layout's own config and release dirs (units render refuses paths under /tmp)
    host_layout = layout.HostLayout("api", unit_dir=str(tmp_path / "units"))
    rec = record(host_layout)
    opts = UnitOptions(
        name=host_layout.name,
        user="api",
        group="web",
        config_dir=host_layout.config_dir,
        release_root=host_layout.release_root,
        listen=rec.listen,
        port=rec.port,
    )
    os.makedirs(host_layout.unit_dir)
    unit = Path(host_layout.unit_dir) / host_layout.instance_unit_file
    unit.write_text(render_units(opts)[host_layout.instance_unit_file])
    checks.test_unit_file_hardening_as_rendered(local, Checked(host_layout, "api", "web"), rec)
    with pytest.raises(AssertionError) as failed:
        checks.test_unit_file_hardening_as_rendered(local, Checked(host_layout, "api", ""), rec)
    assert "Group=['web'] but sockact renders Group=['api']" in str(failed.value)
