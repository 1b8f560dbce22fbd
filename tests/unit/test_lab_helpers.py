"""Pure parts of sockact_lab.lab: addressing, index allocation, inventory, state, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockact_lab import cli, lab
from sockact_lab.errors import LabError, LabUsageError


def _host(index: int, key: Path = Path("/l/id_ed25519")) -> lab.Host:
    return lab.Host(
        name=lab.host_name(index),
        index=index,
        address=lab.host_address(index),
        init_pid=100 + index,
        nspawn_pid=200 + index,
        root=Path(f"/l/{lab.host_name(index)}/root"),
        key=key,
        netns_inode=4026532000 + index,
    )


def test_addressing_scheme() -> None:
    assert lab.host_address(7) == "10.203.7.2"
    assert lab.gateway_address(7) == "10.203.7.1"
    assert lab.netns_name(7) == "sockact-7"
    assert lab.veth_names(7) == ("sa7h", "sa7c")


def test_interface_names_fit_in_ifnamsiz() -> None:
    for index in range(lab.MIN_INDEX, lab.MAX_INDEX + 1):
        assert all(len(name) <= 15 for name in lab.veth_names(index))


def test_allocate_takes_the_lowest_free_indices() -> None:
    assert lab.allocate_indices(2, []) == [1, 2]
    assert lab.allocate_indices(3, {1, 3, 4}) == [2, 5, 6]


def test_allocate_fails_when_the_range_is_full() -> None:
    with pytest.raises(LabError, match="free network indices"):
        lab.allocate_indices(2, range(1, 254))


@pytest.mark.parametrize("count", [0, -1, lab.MAX_HOSTS + 1])
def test_bad_counts_are_bad_input(count: int) -> None:
    with pytest.raises(LabUsageError):
        lab.allocate_indices(count, [])
    with pytest.raises(LabUsageError):
        lab.Lab(Path("/nonexistent/lab")).up(count)


def test_indices_in_use_reads_netns_and_links() -> None:
    used = lab.indices_in_use(
        ["sockact-1", "sockact-12", "other", "sockact-x"], ["lo", "eth0", "sa3h", "sa9c", "sab"]
    )
    assert used == {1, 12, 3, 9}


def test_inventory_lists_every_host_in_group_api() -> None:
    key = Path("/var/tmp/sockact-lab/id_ed25519")
    text = lab.render_inventory([_host(1, key), _host(2, key)], key)
    lines = text.splitlines()
    assert lines[0] == "[api]"
    assert lines[1] == (
        "sockact-1 ansible_host=10.203.1.2 ansible_port=22 ansible_user=root "
        "ansible_ssh_private_key_file=/var/tmp/sockact-lab/id_ed25519 "
        "ansible_python_interpreter=/usr/bin/python3 "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'"
    )
    assert lines[2].startswith("sockact-2 ansible_host=10.203.2.2 ")
    assert text.endswith("\n")


def test_host_state_round_trips_through_json() -> None:
    host = _host(4)
    assert lab.Host.from_json(host.to_json()) == host


def test_bad_state_entry_is_a_clear_error() -> None:
    with pytest.raises(LabError, match="bad host entry"):
        lab.Host.from_json({"name": "x"})


def test_state_and_inventory_files(tmp_path: Path) -> None:
    the_lab = lab.Lab(tmp_path)
    assert the_lab.hosts() == []
    hosts = [_host(1, the_lab.key_path), _host(2, the_lab.key_path)]
    the_lab._write_state(hosts)
    assert the_lab.hosts() == hosts
    assert the_lab.inventory_path.read_text().startswith("[api]\nsockact-1 ")


def test_ssh_args_use_the_lab_key() -> None:
    args = _host(3).ssh_args("hostname")
    assert args[:3] == ["ssh", "-i", "/l/id_ed25519"]
    assert args[-2:] == ["root@10.203.3.2", "hostname"]
    assert "UserKnownHostsFile=/dev/null" in args


def test_command_line() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["up", "--hosts", "3", "--dir", "/tmp/x"])
    assert (args.hosts, args.dir, args.func) == (3, "/tmp/x", cli._cmd_up)
    args = parser.parse_args(["list"])
    assert (args.dir, args.func) == (str(lab.DEFAULT_DIR), cli._cmd_list)
    args = parser.parse_args(["down", "--purge"])
    assert args.purge and args.func == cli._cmd_down


def test_list_on_an_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--dir", str(tmp_path)]) == 0
    assert "no hosts" in capsys.readouterr().out


def test_lab_failures_have_their_own_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    # a usage problem is 2, a lab failure 5: neither looks like an internal error (1)
    assert cli.main(["up", "--hosts", "0", "--dir", "/nonexistent/lab"]) == 2
    assert "--hosts must be between" in capsys.readouterr().err
