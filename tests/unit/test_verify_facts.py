"""What ``sockact verify``'s checks read from a host, parsed (sockact/controller/verify/facts.py):
the deploy record against the host layout, an instance's admin address, ``ss`` output, the
exposure line, unit files and system call groups."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sockact import layout
from sockact.controller.verify import facts

DIGEST = "ab" * 32


def record_text(**changes: Any) -> str:
    doc: dict[str, Any] = {
        "color": "green",
        "release": {"label": "v2", "digest": DIGEST, "dir": "/opt/api/releases/v2-abababababab"},
        "instances": layout.instances_of("green", 2),
        "listen": "reuseport",
        "port": 8080,
        "previous": None,
        "deployed_at": "2026-01-01T00:00:00Z",
    }
    doc.update(changes)
    return json.dumps(doc)


def test_a_valid_record() -> None:
    rec, problems = facts.parse_record(record_text())
    assert problems == []
    assert rec == facts.Record(
        color="green",
        label="v2",
        digest=DIGEST,
        release_dir="/opt/api/releases/v2-abababababab",
        instances=(101, 102),
        listen="reuseport",
        port=8080,
    )


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"color": "red"}, "color='red': must be one of ['blue', 'green']"),
        ({"instances": [1, 2]}, "instances [1, 2] are not green (101..199)"),
        ({"color": "blue", "instances": [1, 101]}, "instances [101] are not blue (1..99)"),
        ({"instances": []}, "instances=[]: must be a non-empty list of integers"),
        ({"instances": [True]}, "instances=[True]: must be a non-empty list of integers"),
        ({"listen": "inherit"}, "listen='inherit': must be one of ['reuseport', 'socket']"),
        ({"port": True}, "port=True: must be an integer 1-65535"),
        ({"port": 0}, "port=0: must be an integer 1-65535"),
        ({"release": "v2"}, "release='v2': must be an object with label, digest and dir"),
        (
            {"release": {"label": "v2", "digest": "abc", "dir": "/x"}},
            "release.digest='abc': must be a sha256 in hex",
        ),
        (
            {"release": {"label": "", "digest": DIGEST, "dir": "x"}},
            "release.label='': must be a non-empty string",
        ),
    ],
)
def test_an_invalid_record_names_each_problem(changes: dict[str, Any], problem: str) -> None:
    rec, problems = facts.parse_record(record_text(**changes))
    assert rec is None and problem in problems, problems


def test_a_record_that_is_not_a_json_object() -> None:
    assert facts.parse_record("[1]") == (None, ["not a JSON object"])
    rec, problems = facts.parse_record("{")
    assert rec is None and problems[0].startswith("not JSON: ")


def test_admin_url_from_the_config_or_the_layout() -> None:
    assert facts.admin_url({}, 102) == f"http://127.0.0.1:{layout.admin_port(102)}"
    assert facts.admin_url({"admin_port": 7001}, 1) == "http://127.0.0.1:7001"
    assert facts.admin_url({"admin_host": "::1"}, 3) == f"http://[::1]:{layout.admin_port(3)}"
    assert facts.instance_settings('admin_port = 7001\napp = "a:b"\n')["admin_port"] == 7001
    assert facts.instance_settings("not = = toml") == {} == facts.instance_settings(None)
    assert facts.main_address({}) == "0.0.0.0" and facts.main_address({"host": "::"}) == "::"


SS_REUSEPORT = """\
LISTEN 0      1024         0.0.0.0:8080      0.0.0.0:*    users:(("sockact",pid=2925,fd=7))
LISTEN 0      1024         0.0.0.0:8080      0.0.0.0:*    users:(("sockact",pid=2926,fd=7))
"""
SS_SOCKET = (
    'LISTEN 0 1024 *:8080 *:* users:(("sockact",pid=300,fd=3),("sockact",pid=301,fd=3),'
    '("systemd",pid=1,fd=45))\n'
)


def test_listeners_and_their_holders() -> None:
    two = facts.parse_listeners(SS_REUSEPORT)
    assert [(lst.local, lst.pids) for lst in two] == [
        ("0.0.0.0:8080", {2925}),
        ("0.0.0.0:8080", {2926}),
    ]
    (shared,) = facts.parse_listeners(SS_SOCKET)
    assert shared.pids == {1, 300, 301}
    assert shared.holders[2] == ("systemd", 1, 45)
    assert facts.parse_listeners("") == []


def test_exposure_line() -> None:
    text = "  NAME DESCRIPTION EXPOSURE\n→ Overall exposure level for api@1.service: 1.2 OK 🙂\n"
    assert facts.parse_exposure(text) == 1.2
    assert facts.parse_exposure("Failed to ...") is None


UNIT = """\
[Unit]
Description=x
User=not-service-section
[Service]
User=api
NoNewPrivileges=true
RestrictAddressFamilies=AF_INET6 AF_UNIX AF_INET
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallFilter=setpriority
CapabilityBoundingSet=
ExecStart=/bin/true
"""


def test_hardening_of_a_unit_file() -> None:
    found = facts.hardening(UNIT)
    assert found["User"] == ["api"]  # the [Unit] section's key is not the service's
    assert "ExecStart" not in found
    assert found["CapabilityBoundingSet"] == [""]
    assert facts.normalize("NoNewPrivileges", found["NoNewPrivileges"]) == "yes"
    families = facts.normalize("RestrictAddressFamilies", found["RestrictAddressFamilies"])
    assert families == facts.normalize_shown("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6")
    assert facts.normalize("SystemCallErrorNumber", ["EPERM"]) == "1"
    assert facts.normalize("UMask", ["0077"]) == "0077"


def test_an_empty_assignment_resets_a_list() -> None:
    found = facts.unit_settings(
        "[Service]\nSystemCallFilter=a\nSystemCallFilter=\nSystemCallFilter=b\n"
    )
    assert found["SystemCallFilter"] == ["b"]


GROUPS = """\
@privileged
    # All system calls which need super-user capabilities
    @chown
    chroot
    setuid

@chown
    chown
    fchown

@system-service
    @chown
    read
    setuid
    write
"""


def test_the_allow_list_systemd_builds() -> None:
    groups = facts.syscall_groups(GROUPS)
    assert groups["@privileged"] == {"@chown", "chroot", "setuid"}
    values = facts.hardening(UNIT)["SystemCallFilter"]
    # allowed: @system-service (chown, fchown, read, setuid, write), minus @privileged
    # (chown, fchown, chroot, setuid), plus setpriority
    assert facts.expected_syscalls(values, groups) == {"read", "write", "setpriority"}


def test_ssh_noise_is_not_the_hosts_output() -> None:
    text = "Warning: Permanently added '10.203.1.2' (ED25519) to the list of known hosts.\nreal\n"
    assert facts.without_ssh_noise(text) == "real"


#: stderr of the reach checks' ``stat`` on a role-deployed host, as the clean-clone CI run
#: got it (testinfra's ssh without a known_hosts file, one connection per command): ssh's
#: warning, and stat's own line for the instance's env file, which a host may lack
SSH_WARNING = "Warning: Permanently added '10.203.2.2' (ED25519) to the list of known hosts."
STAT_STDOUT = """\
/etc/api/instances|root|api|750
/etc/api/instances/101.toml|root|api|640
"""


def test_stat_output_with_ssh_noise_is_read_as_readable() -> None:
    stderr = (
        f"{SSH_WARNING}\n"
        "stat: cannot statx '/etc/api/instances/101.env': No such file or directory\n"
    )
    found, unreadable = facts.parse_stat(STAT_STDOUT, stderr)
    assert unreadable == []
    assert found == {
        "/etc/api/instances": ("root", "api", 0o750),
        "/etc/api/instances/101.toml": ("root", "api", 0o640),
    }


def test_a_path_stat_cannot_read_is_a_complaint_among_the_noise() -> None:
    denied = "stat: cannot statx '/etc/api/instances/101.toml': Permission denied"
    stderr = f"{SSH_WARNING}\nsudo: unable to resolve host sockact-2\n{denied}\n"
    found, unreadable = facts.parse_stat("/etc/api/instances|root|api|750\n", stderr)
    assert unreadable == [denied]
    assert found == {"/etc/api/instances": ("root", "api", 0o750)}


def test_stat_of_a_path_with_the_separator_and_of_a_sticky_directory() -> None:
    found, _ = facts.parse_stat("/srv/a|b|root|root|755\n/tmp|root|root|1777\n", "")
    assert found == {"/srv/a|b": ("root", "root", 0o755), "/tmp": ("root", "root", 0o1777)}


@pytest.mark.parametrize(
    ("local", "loopback"),
    [
        ("127.0.0.1:9001", True),
        ("127.0.0.53%lo:53", True),
        ("[::1]:9001", True),
        # an admin server bound to the loopback device as well: ss shows the interface
        ("[::1]%lo:9001", True),
        ("[::ffff:127.0.0.1]:9001", True),
        ("0.0.0.0:9001", False),
        ("*:9001", False),
        ("[::]:9001", False),
        ("10.203.1.2:9001", False),
        ("[fe80::1]%eth0:9001", False),
        ("[::ffff:10.0.0.1]:9001", False),
    ],
)
def test_which_listeners_are_on_loopback(local: str, loopback: bool) -> None:
    assert facts.is_loopback(local) is loopback
