"""The identity of a release: a digest of the distributions it is made of.

A release is the set of wheels it was installed from (a wheelhouse). Its identity is
computed from what the wheels *contain*, as each wheel declares it in its ``RECORD`` (the
path and sha256 of every file), never from the zip bytes (two builds of the same sources
differ in timestamps) nor from a label an operator chose. The same digest is computed
from the distributions installed in a venv, from their installed ``RECORD``: pip copies
the wheel's rows for every file it installs unchanged, so a venv installed from exactly
the wheels of a wheelhouse has exactly the digest of the wheelhouse.

What counts, per distribution (``name``, ``version``, and the entries below):

* every file of the wheel that lands in site-packages, with its hash: the package files
  and the ``.dist-info`` files the wheel ships (METADATA, WHEEL, entry_points.txt...);
  a wheel's ``<name>.data/purelib/`` and ``platlib/`` files count under their installed
  path;
* not: the ``RECORD`` itself (and its signatures), what the installer adds (``INSTALLER``,
  ``REQUESTED``, ``direct_url.json``, compiled ``.pyc`` files, console scripts), and files
  installed outside site-packages (``../`` paths; a wheel's other ``.data/`` dirs).

The release digest is the sha256 of the sorted lines ``<name> <version> <dist digest>``.
The running process computes it once at start from its own venv (:func:`installed`) and
reports it at the admin endpoint ``/release``; a deploy compares it, exactly, with the
digest of the wheelhouse it installed (:func:`from_wheelhouse`)::

    sockact release --wheelhouse DIR    # on the controller: what a release will be
    /opt/api/releases/R/bin/sockact release   # on a host: what a venv is
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
import sysconfig
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from sockact.errors import BadInput

#: Files of a .dist-info directory that the installer writes or that sign the RECORD.
INSTALLER_FILES: Final = frozenset(
    {"RECORD", "RECORD.jws", "RECORD.p7s", "INSTALLER", "REQUESTED", "direct_url.json"}
)
#: Length of the digest prefix that names a release directory (``<label>-<digest12>``).
SHORT: Final = 12


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _keep(path: str) -> bool:
    """True for an installed RECORD entry that came from the wheel as it was."""
    if path.startswith(("../", "/")) or "/../" in path:
        return False  # scripts, data, headers: outside site-packages (rewritten or generated)
    if path.endswith(".pyc") or "__pycache__/" in path:
        return False
    head, _, base = path.partition("/")
    return not (head.endswith(".dist-info") and base in INSTALLER_FILES)


def _wheel_path(path: str) -> str | None:
    """Where a wheel's RECORD entry lands relative to site-packages, or None if elsewhere."""
    head, _, rest = path.partition("/")
    if head.endswith(".data"):
        kind, _, inner = rest.partition("/")
        return inner if kind in ("purelib", "platlib") and inner else None
    return path


def _digest(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in sorted(lines):
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class Distribution:
    """One distribution of a release: its name, version and the digest of its files."""

    name: str
    version: str
    digest: str

    @classmethod
    def from_record(
        cls, name: str, version: str, rows: Iterable[list[str]], *, wheel: bool = False
    ) -> Distribution:
        entries = []
        for row in rows:
            if not row or not row[0]:
                continue
            path: str | None = row[0]
            if wheel:
                path = _wheel_path(row[0])
            if path is None or not _keep(path):
                continue
            entries.append(f"{path},{row[1] if len(row) > 1 else ''}")
        return cls(normalize(name), version, _digest(entries))

    def to_dict(self) -> dict[str, str]:
        return {"version": self.version, "digest": self.digest}


@dataclass(frozen=True)
class Release:
    """A set of distributions and the digest that names them."""

    distributions: tuple[Distribution, ...]
    #: what the release was read from: wheel file names, or site-packages directories
    sources: tuple[str, ...] = field(default=())
    #: distributions that could not be read (an installed one without RECORD...)
    problems: tuple[str, ...] = field(default=())

    @property
    def digest(self) -> str:
        return _digest(f"{d.name} {d.version} {d.digest}" for d in self.distributions)

    @property
    def short(self) -> str:
        return self.digest[:SHORT]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "digest": self.digest,
            "distributions": {d.name: d.to_dict() for d in self.distributions},
        }
        if self.problems:
            doc["problems"] = list(self.problems)
        return doc


def _release(dists: Iterable[Distribution], sources: Iterable[str], problems: list[str]) -> Release:
    by_name: dict[str, Distribution] = {}
    for d in dists:
        if d.name in by_name:
            problems.append(
                f"{d.name} twice: {by_name[d.name].version} and {d.version}"
                if by_name[d.name].version != d.version
                else f"{d.name} {d.version} twice"
            )
        by_name[d.name] = d
    return Release(
        tuple(sorted(by_name.values(), key=lambda d: d.name)), tuple(sources), tuple(problems)
    )


# --------------------------------------------------------------------------- wheels


def from_wheel(path: Path) -> Distribution:
    """The distribution a wheel file holds, from its METADATA and RECORD."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            infos = sorted({n.split("/", 1)[0] for n in names if ".dist-info/" in n})
            infos = [d for d in infos if d.endswith(".dist-info")]
            if len(infos) != 1:
                raise BadInput(f"wheel {path}: expected one .dist-info directory, found {infos}")
            info = infos[0]
            meta = HeaderParser().parsestr(zf.read(f"{info}/METADATA").decode("utf-8"))
            record = zf.read(f"{info}/RECORD").decode("utf-8")
    except (OSError, zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        raise BadInput(f"wheel {path}: cannot read it ({exc})") from None
    name, version = meta.get("Name"), meta.get("Version")
    if not name or not version:
        raise BadInput(f"wheel {path}: METADATA has no Name or Version")
    rows = csv.reader(io.StringIO(record))
    return Distribution.from_record(name, version, rows, wheel=True)


def from_wheelhouse(directory: Path) -> Release:
    """The release a wheelhouse makes: every ``*.whl`` in ``directory`` (not recursive)."""
    if not directory.is_dir():
        raise BadInput(f"wheelhouse {directory}: not a directory")
    wheels = sorted(directory.glob("*.whl"))
    if not wheels:
        raise BadInput(f"wheelhouse {directory}: no *.whl files")
    problems: list[str] = []
    release = _release((from_wheel(w) for w in wheels), (w.name for w in wheels), problems)
    if problems:
        raise BadInput(f"wheelhouse {directory}: " + "; ".join(problems))
    return release


# --------------------------------------------------------------------------- installed


def site_packages() -> list[str]:
    """The site-packages directories of this interpreter's own prefix (its venv)."""
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def installed(paths: list[str] | None = None) -> Release:
    """The release installed in ``paths`` (default: this interpreter's site-packages)."""
    where = site_packages() if paths is None else paths
    dists = []
    problems: list[str] = []
    for dist in metadata.distributions(path=where):
        name = dist.metadata["Name"] or "?"
        record = dist.read_text("RECORD")
        if record is None:
            problems.append(f"{normalize(name)} {dist.version}: no RECORD (not installed by pip?)")
            dists.append(Distribution(normalize(name), dist.version, "no-record"))
            continue
        rows = csv.reader(io.StringIO(record))
        dists.append(Distribution.from_record(name, dist.version, rows))
    return _release(dists, where, problems)


def identify() -> dict[str, Any]:
    """What the admin endpoint ``/release`` answers: never raises."""
    try:
        doc = installed().to_dict()
    except Exception as exc:  # a broken dist must not take the admin server down
        return {"digest": None, "error": f"{type(exc).__name__}: {exc}"}
    doc["prefix"] = sys.prefix
    return doc


# --------------------------------------------------------------------------- command


def _command(args: argparse.Namespace) -> int:
    if args.wheelhouse is not None:
        release = from_wheelhouse(args.wheelhouse)
        doc = {**release.to_dict(), "short": release.short, "wheels": list(release.sources)}
    else:
        release = installed()
        doc = {**release.to_dict(), "short": release.short, "prefix": sys.prefix}
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact release``."""
    p = sub.add_parser(
        "release",
        help="print the release identity (digest of the distributions) as JSON",
        description="Print the identity of a release as JSON: the digest of its "
        "distributions' content (from each wheel's RECORD). With --wheelhouse, of the "
        "wheels in DIR (what installing them makes); without, of the distributions "
        "installed beside this sockact (what a running instance reports at /release).",
        epilog="example: sockact release --wheelhouse ./wheels",
    )
    p.add_argument("--wheelhouse", type=Path, metavar="DIR", help="a directory of *.whl files")
    p.set_defaults(func=_command)
