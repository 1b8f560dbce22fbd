"""The lab's image recipe, host preparation and apt proxy, without booting a host.

The proxy runs for real on 127.0.0.1 (no request leaves the machine: only refusals are
exercised here; the mirror is reached in the system tests that provision hosts).
"""

from __future__ import annotations

import http.client
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockact_lab import aptproxy, cli, hostroot, image
from sockact_lab.errors import LabError
from sockact_lab.lab import Lab


def test_the_recipe_names_the_image_by_its_content() -> None:
    base = image.ImageRecipe()
    assert base.name == image.DEFAULT_RECIPE.name
    assert base.name.startswith("bookworm-minbase-") and len(base.digest()) == 64
    # the package order does not matter; what is in it does
    shuffled = image.ImageRecipe(packages=tuple(reversed(image.HOST_PACKAGES)))
    assert shuffled.name == base.name
    assert image.ImageRecipe(packages=(*image.HOST_PACKAGES, "curl")).name != base.name
    assert image.ImageRecipe(upgrade=False).name != base.name
    assert base.mirror_hosts() == ("deb.debian.org",)
    with pytest.raises(LabError, match="http:// URL"):
        image.ImageRecipe(mirror="https://deb.debian.org/debian").mirror_hosts()


def test_nothing_of_the_controller_is_in_the_recipe() -> None:
    for package in ("python3-venv", "gcc", "libsystemd-dev", "python3-apt", "curl"):
        assert package not in image.HOST_PACKAGES


def test_list_and_prune_an_image_dir(tmp_path: Path) -> None:
    current = tmp_path / image.DEFAULT_RECIPE.name
    old = tmp_path / "bookworm-minbase-000000000000"
    for path in (current, old):
        (path / "rootfs/etc").mkdir(parents=True)
        (path / "image.json").write_text('{"size_bytes": 1000000}')
    (tmp_path / ".build-x-1").mkdir()  # a build in progress is not an image
    assert [i.name for i in image.list_images(tmp_path)] == sorted([current.name, old.name])
    assert image.find_image(image_dir=tmp_path) is not None
    assert image.prune_images(image_dir=tmp_path) == [old]
    assert [i.name for i in image.list_images(tmp_path)] == [current.name]


def test_image_list_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["image", "list", "--image-dir", str(tmp_path)]) == 0
    assert "no images" in capsys.readouterr().out


def test_prepare_host_root_writes_what_makes_a_host_unique(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("the image's key, never used")
    config = hostroot.HostConfig(
        hostname="sockact-9",
        address="10.203.9.2",
        gateway="10.203.9.1",
        authorized_keys="ssh-ed25519 AAAA lab\n",
        apt_proxy="http://10.203.9.1:3142/",
    )
    hostroot.prepare_host_root(root, config)
    assert (root / "etc/hostname").read_text() == "sockact-9\n"
    assert len((root / "etc/machine-id").read_text().strip()) == 32
    assert "10.203.9.2 sockact-9" in (root / "etc/hosts").read_text()
    assert (
        "ListenAddress 10.203.9.2" in (root / "etc/ssh/sshd_config.d/sockact-lab.conf").read_text()
    )
    assert "OPENSSH PRIVATE KEY" in (root / "etc/ssh/ssh_host_ed25519_key").read_text()
    auth = root / "root/.ssh/authorized_keys"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert 'Proxy "http://10.203.9.1:3142/"' in (root / hostroot.APT_PROXY_CONF).read_text()
    for unit in hostroot.IMAGE_MASKED_UNITS:
        assert os.readlink(root / "etc/systemd/system" / unit) == "/dev/null"


def test_prepare_host_root_never_writes_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to(outside)  # an absolute link in an image points at the machine
    config = hostroot.HostConfig("h", "10.0.0.2", "10.0.0.1", "key\n")
    with pytest.raises(LabError, match="is a symlink"):
        hostroot.prepare_host_root(root, config)
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------- the apt proxy


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[aptproxy.AptProxy]:
    with aptproxy.AptProxy(tmp_path / "cache", ["127.0.0.1"], 0) as running:
        yield running


def _request(proxy: aptproxy.AptProxy, method: str, target: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*proxy.addresses[0], timeout=10)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "target", "status", "says"),
    [
        ("GET", "http://pypi.org/simple/flask/", 403, "host not allowed: pypi.org"),
        ("GET", "http://deb.debian.org:8080/debian/", 403, "host not allowed"),
        ("GET", "/debian/dists/bookworm/InRelease", 400, "not an absolute http:// URI"),
        ("GET", "https://deb.debian.org/debian/", 400, "not an absolute http:// URI"),
        ("POST", "http://deb.debian.org/debian/", 405, "POST is not proxied"),
        ("CONNECT", "deb.debian.org:443", 403, "CONNECT (https) is not proxied"),
    ],
)
def test_the_proxy_forwards_only_the_mirror(
    proxy: aptproxy.AptProxy, method: str, target: str, status: int, says: str
) -> None:
    code, body = _request(proxy, method, target)
    assert code == status and body.startswith(says), (code, body)
    assert proxy.stats.as_dict()["refused"] == 1


def test_only_immutable_files_are_cached(proxy: aptproxy.AptProxy) -> None:
    def cached(url: str) -> bool:
        return proxy.cache_path(proxy.parse_target(url)) is not None

    base = "http://deb.debian.org/debian"
    assert cached(f"{base}/pool/main/p/python3.11/python3.11-venv_3.11.2-6_amd64.deb")
    assert cached(f"{base}/dists/bookworm/main/binary-amd64/by-hash/SHA256/ab12")
    assert not cached(f"{base}/dists/bookworm/InRelease")
    assert not cached(f"{base}/pool/../../etc/passwd.deb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_down_stops_a_proxy_the_state_file_does_not_name(tmp_path: Path) -> None:
    """A run killed between starting the proxy and recording it: ``down`` finds the
    process by its owner on the command line, and only that one."""
    owner = tmp_path / "lab"
    owner.mkdir()
    started = aptproxy.start_proxy_process(
        ["127.0.0.1"], owner=str(owner), log_path=owner / "apt-proxy.log", port=_free_port()
    )
    try:
        assert aptproxy.proxy_pids(str(owner)) == [started.pid]
        assert aptproxy.proxy_pids(str(tmp_path / "another-lab")) == []
        Lab(owner).down()
        assert aptproxy.proxy_pids(str(owner)) == []
        assert started.popen is not None and started.popen.wait(timeout=10) is not None
        assert "stopped;" in (owner / "apt-proxy.log").read_text()  # SIGTERM: counters out
    finally:
        if started.popen is not None and started.popen.poll() is None:
            started.popen.kill()
            started.popen.wait()


def test_a_proxy_that_cannot_listen_says_why(tmp_path: Path) -> None:
    with pytest.raises(
        LabError, match=r"proxy: exited 1 at start: .*cannot listen on 192\.0\.2\.1"
    ):
        aptproxy.start_proxy_process(
            ["192.0.2.1"], owner=str(tmp_path), log_path=tmp_path / "log", port=_free_port()
        )
