"""The minimal Debian image lab hosts boot on: built once, cached, shared read-only.

:func:`ensure_image` builds (once) a ``debootstrap --variant=minbase`` root filesystem of
Debian 12 with what a test host needs and nothing of this machine (systemd, dbus,
openssh-server, python3, procps, iproute2; no venv module, no compiler, no sockact), then
upgrades it from ``-updates``/``-security`` as a freshly installed server would be. It
lives under ``/var/cache/sockact-lab/images/<suite>-<variant>-<hash12>/rootfs``; the hash
covers the recipe (suite, variant, packages, mirrors, the steps after debootstrap), so a
changed recipe builds a new image beside the old one and an unchanged one is reused.

Builders serialize on a ``flock`` and build into a temporary directory that is renamed
into place, so a concurrent or killed builder never leaves a half image where a reader
looks; the next build removes what a killed one left (its processes too).
:func:`prune_images` removes images of other recipes that no running host uses.

Hosts mount it as the lower layer of an overlay (:func:`overlay_lower`): the image is
never written, each host's changes land in its own upper layer (see
:mod:`sockact_lab.hostroot`). Needs root, debootstrap, unshare and chroot to build.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sockact_lab.errors import LabError
from sockact_lab.hostroot import write_file
from sockact_lab.system import (
    Progress,
    flock,
    kill_until_gone,
    last_line,
    mounts_under,
    pids_using,
    quiet,
    run_command,
)

CACHE_ROOT = Path("/var/cache/sockact-lab")
IMAGE_DIR = CACHE_ROOT / "images"
ROOTFS = "rootfs"
MANIFEST = "image.json"

#: bump when the steps after debootstrap (:func:`_finish_image`) change: part of the hash
IMAGE_FORMAT = 2
#: a first build takes 1-4 minutes on a busy 2-core machine; this only stops a hung one
BUILD_TIMEOUT = 1800.0

#: what a test host needs beyond minbase (apt, dpkg, coreutils, passwd, tar, gzip, ...):
#: a booting systemd with a bus, sshd and python3 for Ansible; procps (sysctl, ps, kill)
#: and iproute2 (ss, ip) are priority "important", so every real Debian install has them,
#: and the provisioning role and the tests call them. Not included on purpose:
#: python3-venv (provisioning installs it), python3-apt (Ansible's apt module installs
#: it), compilers, sudo, curl.
HOST_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "procps",
    "iproute2",
)

_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
#: a private mount namespace: the /proc and /dev/pts mounted in the new tree go away with
#: it, also when the build is killed (no mounts left under the build directory)
_PRIVATE_MOUNTS = ("unshare", "--mount", "--propagation", "private")


def _env() -> dict[str, str]:
    env = dict(_ENV)
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


@dataclass(frozen=True)
class ImageRecipe:
    """Everything that decides an image's content; its hash names the image."""

    suite: str = "bookworm"
    variant: str = "minbase"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    packages: tuple[str, ...] = HOST_PACKAGES
    components: tuple[str, ...] = ("main",)
    #: apt-get upgrade from <suite>-updates and -security after debootstrap (which only
    #: knows <suite>), as a freshly installed server would be; else every host upgrades
    #: python3.11 (byte-compiling its stdlib) when provisioning installs python3-venv
    upgrade: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": IMAGE_FORMAT,
            "suite": self.suite,
            "variant": self.variant,
            "mirror": self.mirror,
            "security_mirror": self.security_mirror,
            "packages": sorted(set(self.packages)),
            "components": list(self.components),
            "upgrade": self.upgrade,
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.variant}-{self.digest()[:12]}"

    def mirror_hosts(self) -> tuple[str, ...]:
        """Host names the apt proxy may forward to for hosts of this image."""
        hosts: list[str] = []
        for url in (self.mirror, self.security_mirror):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise LabError(f"image: mirror must be an http:// URL, got {url!r}")
            if parts.hostname not in hosts:
                hosts.append(parts.hostname)
        return tuple(hosts)

    def sources(self) -> str:
        """The image's ``/etc/apt/sources.list.d/debian.sources`` (deb822)."""
        comps = " ".join(self.components)
        key = "/usr/share/keyrings/debian-archive-keyring.gpg"
        return (
            f"Types: deb\nURIs: {self.mirror}\n"
            f"Suites: {self.suite} {self.suite}-updates\nComponents: {comps}\n"
            f"Signed-By: {key}\n\n"
            f"Types: deb\nURIs: {self.security_mirror}\n"
            f"Suites: {self.suite}-security\nComponents: {comps}\nSigned-By: {key}\n"
        )


DEFAULT_RECIPE = ImageRecipe()


@dataclass(frozen=True)
class Image:
    """A built image: ``path/rootfs`` is the overlay's lower layer, ``path/image.json``
    says what it is (recipe, build time and duration, size, versions)."""

    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        return self.path / ROOTFS

    @classmethod
    def load(cls, path: Path) -> Image:
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LabError(f"image: cannot read {path / MANIFEST}: {exc}") from exc
        if not isinstance(manifest, dict):
            raise LabError(f"image: {path / MANIFEST} is not a JSON object")
        return cls(name=path.name, path=path, manifest=manifest)

    def summary(self) -> str:
        m = self.manifest
        size = int(m.get("size_bytes", 0))
        versions = m.get("versions", {})
        return (
            f"{self.name}: Debian {m.get('debian_version', '?')}, "
            f"{m.get('package_count', '?')} packages, {size / 1e6:.0f} MB, "
            f"python3 {versions.get('python3.11') or versions.get('python3', '?')}, "
            f"systemd {versions.get('systemd', '?')}, built {m.get('built', '?')} "
            f"in {float(m.get('build_seconds', 0)):.0f}s"
        )


def _is_complete(path: Path) -> bool:
    return (path / MANIFEST).is_file() and (path / ROOTFS).is_dir()


def find_image(
    recipe: ImageRecipe = DEFAULT_RECIPE, *, image_dir: Path = IMAGE_DIR
) -> Image | None:
    """The built image of ``recipe``, or None."""
    final = image_dir / recipe.name
    return Image.load(final) if _is_complete(final) else None


def ensure_image(
    recipe: ImageRecipe = DEFAULT_RECIPE,
    *,
    image_dir: Path = IMAGE_DIR,
    progress: Progress | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> Image:
    """The image of ``recipe``: reused if built before, else built now (minutes; every
    line of debootstrap's and apt's output goes to ``progress``). Safe to call from
    concurrent processes: one builds, the others wait on the lock and reuse its result."""
    say = progress or quiet
    found = find_image(recipe, image_dir=image_dir)
    if found is not None:
        return found
    final = image_dir / recipe.name
    image_dir.mkdir(parents=True, exist_ok=True)
    lock = image_dir / f".{recipe.name}.lock"
    with flock(lock, waiting=f"image: waiting for another build of {final}", say=say):
        found = find_image(recipe, image_dir=image_dir)
        if found is not None:
            return found
        for stale in image_dir.glob(f".build-{recipe.name}-*"):
            say(f"image: removing {stale} (left by a killed build)")
            kill_until_gone(functools.partial(pids_using, stale), str(stale), "image", say)
            _remove_tree(stale)
        if final.exists():  # cannot happen through ensure_image (the rename is atomic)
            raise LabError(f"image: {final} exists but is incomplete; remove it")
        if shutil.which("debootstrap") is None:
            raise LabError("image: debootstrap not found (apt-get install debootstrap)")
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{recipe.name}-", dir=image_dir))
        try:
            started = time.monotonic()
            say(f"image: building {recipe.name} in {tmp} (once; 1-4 minutes)")
            _debootstrap(recipe, tmp / ROOTFS, say, timeout)
            if recipe.upgrade:
                left = timeout - (time.monotonic() - started)
                _upgrade(recipe, tmp / ROOTFS, say, left)
            _finish_image(recipe, tmp / ROOTFS)
            _check_image(tmp / ROOTFS)
            manifest = _manifest(recipe, tmp / ROOTFS, time.monotonic() - started)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            tmp.chmod(0o755)
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        image = Image.load(final)
        say(f"image: built {image.summary()}")
        return image


def list_images(image_dir: Path = IMAGE_DIR) -> list[Image]:
    """Every complete image under ``image_dir``, by name."""
    if not image_dir.is_dir():
        return []
    return [
        Image.load(path)
        for path in sorted(image_dir.iterdir())
        if not path.name.startswith(".") and _is_complete(path)
    ]


def images_in_use(image_dir: Path = IMAGE_DIR) -> set[str]:
    """Names of images that are the lower layer of a mounted overlay (a running host)."""
    prefix = str(image_dir).rstrip("/") + "/"
    used: set[str] = set()
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            _mount, _sep, rest = line.partition(" - ")
            fields = rest.split()
            if len(fields) < 3 or fields[0] != "overlay":
                continue
            for option in fields[2].split(","):
                if not option.startswith("lowerdir="):
                    continue
                for lower in option.removeprefix("lowerdir=").split(":"):
                    if lower.startswith(prefix):
                        used.add(lower[len(prefix) :].split("/", 1)[0])
    return used


def prune_images(
    keep: Iterable[str] = (DEFAULT_RECIPE.name,),
    *,
    image_dir: Path = IMAGE_DIR,
    progress: Progress | None = None,
) -> list[Path]:
    """Remove the images (and leftovers of killed builds) not named in ``keep`` that no
    host uses."""
    say = progress or quiet
    kept = set(keep)
    removed: list[Path] = []
    if not image_dir.is_dir():
        return removed
    for path in sorted(image_dir.iterdir()):
        if path.name.startswith(".") or path.name in kept or not path.is_dir():
            continue
        with flock(image_dir / f".{path.name}.lock", waiting=f"image: waiting for {path}", say=say):
            if path.name in images_in_use(image_dir):
                say(f"image: {path} is in use by a running host; kept")
                continue
            _remove_tree(path)
        (image_dir / f".{path.name}.lock").unlink(missing_ok=True)
        say(f"image: removed {path}")
        removed.append(path)
    return removed


def overlay_lower(image: Image) -> Path:
    """The lower layer of a host's overlay: the image's root filesystem (read-only)."""
    return image.rootfs


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes on disk, apparent bytes) of a tree, hard links counted once, like ``du -s``."""
    seen: set[tuple[int, int]] = set()
    blocks = apparent = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            blocks += st.st_blocks * 512
            apparent += st.st_size
    return blocks, apparent


# --------------------------------------------------------------------------- build steps


def _remove_tree(path: Path) -> None:
    """rm -rf, but never through a mount (a killed debootstrap may leave /proc mounted)."""
    for mnt in mounts_under(path):
        run_command(["umount", "-l", mnt], check=False)
    if mounts_under(path):
        raise LabError(f"image: {path} still has mounts; not removing it")
    shutil.rmtree(path, ignore_errors=True)


def _progress_of(say: Progress) -> Progress:
    return lambda line: say(f"image: {line}")


def _debootstrap(recipe: ImageRecipe, root: Path, say: Progress, timeout: float) -> None:
    cmd = [
        *_PRIVATE_MOUNTS,
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(recipe.packages)}",
        recipe.suite,
        str(root),
        recipe.mirror,
    ]
    proc = run_command(
        cmd, check=False, timeout=timeout, env=_env(), output=_progress_of(say), where="(image)"
    )
    if proc.returncode != 0:
        # debootstrap's own log names the step that failed; its output only says "see log"
        log = root / "debootstrap/debootstrap.log"
        detail = last_line(log.read_text(errors="replace") if log.exists() else proc.stdout)
        why = f"killed after {timeout:.0f}s" if proc.returncode < 0 else f"exited {proc.returncode}"
        raise LabError(f"image: debootstrap {why}: {detail}", details=proc.stdout.splitlines())


def _upgrade(recipe: ImageRecipe, root: Path, say: Progress, timeout: float) -> None:
    """apt-get update && upgrade in the new tree (chroot, /proc mounted privately)."""
    write_file(root, "etc/apt/sources.list.d/debian.sources", recipe.sources())
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    script = (
        'mount -t proc proc "$1/proc" && '
        'mount -t devpts -o newinstance,ptmxmode=0666 devpts "$1/dev/pts" && '
        'chroot "$1" apt-get -q update && '
        'chroot "$1" apt-get -q -y -o Dpkg::Options::=--force-confold upgrade && '
        'chroot "$1" apt-get -q clean'
    )
    cmd = [*_PRIVATE_MOUNTS, "--fork", "/bin/sh", "-c", script, "sh", str(root)]
    run_command(cmd, timeout=timeout, env=_env(), output=_progress_of(say), where="(image)")


def _finish_image(recipe: ImageRecipe, root: Path) -> None:
    """Make the debootstrapped tree a neutral image: nothing of this machine, nothing
    that must differ per host (that goes into each host's upper layer)."""
    # debootstrap copies the build machine's hostname and resolv.conf, writes no hosts
    write_file(root, "etc/hostname", "localhost\n")
    write_file(root, "etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    write_file(root, "etc/resolv.conf", "")
    # what debian-installer writes; without it pam_env logs an error for every ssh login
    write_file(root, "etc/default/locale", "LANG=C.UTF-8\n")
    # generated by systemd's and dbus' postinst: would be shared by every host
    write_file(root, "etc/machine-id", "", 0o444)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    write_file(root, "etc/apt/sources.list.d/debian.sources", recipe.sources())
    # the .debs and the index debootstrap used (about 100 MB); hosts run apt-get update
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin"):
        for path in root.glob(pattern):
            path.unlink()
    for path in (root / "var/lib/apt/lists").iterdir():
        if path.is_file() and path.name != "lock":
            path.unlink()


def _check_image(root: Path) -> None:
    """The image is what the hosts must look like: python3 without venv, no compiler."""
    problems: list[str] = []
    for rel in ("usr/bin/python3", "usr/sbin/sshd", "usr/lib/systemd/systemd", "usr/bin/apt-get"):
        if not (root / rel).exists():
            problems.append(f"image: /{rel} missing")
    for tool in ("cc", "gcc", "c++", "g++", "clang", "make"):
        if (root / "usr/bin" / tool).exists():
            problems.append(f"image: /usr/bin/{tool} present (no compiler allowed)")
    probe = "/tmp/.sockact-venv-probe"
    try:
        proc = run_command(
            ["chroot", str(root), "/usr/bin/python3", "-m", "venv", probe],
            check=False,
            timeout=60,
            env=_env(),
        )
    finally:
        shutil.rmtree(root / probe.lstrip("/"), ignore_errors=True)
    if proc.returncode == 0:
        problems.append("image: python3 -m venv works (python3-venv must not be installed)")
    if problems:
        raise LabError(problems[0], details=problems[1:])


def _manifest(recipe: ImageRecipe, root: Path, seconds: float) -> dict[str, Any]:
    query = run_command(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
        env=_env(),
    )
    versions = dict(line.split("\t", 1) for line in query.stdout.splitlines() if "\t" in line)
    size, apparent = disk_usage(root)
    debian = (root / "etc/debian_version").read_text(encoding="utf-8").strip()
    return {
        "name": recipe.name,
        "digest": recipe.digest(),
        "recipe": {**recipe.as_dict(), "packages": list(recipe.packages)},
        "built": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
        "size_bytes": size,
        "apparent_bytes": apparent,
        "debian_version": debian,
        "package_count": len(versions),
        "versions": {
            name: versions.get(name, "")
            for name in ("python3", "python3.11", "systemd", "openssh-server", "apt")
        },
    }
