#!/usr/bin/python3
"""What a wheelhouse needs of the hosts it is installed on: Python, CPU, C library.

Ansible module of the sockact role, run on the controller (``delegate_to: localhost``).
The release venvs install offline from the wheelhouse, so its binary wheels decide which
hosts can take it: a ``cp311`` wheel only installs into CPython 3.11, an ``x86_64`` wheel
only on x86_64, a ``manylinux_2_17`` wheel needs glibc >= 2.17, and a wheel built locally
(``linux_x86_64``, e.g. systemd-python, which has no wheels on PyPI) needs at least the
glibc its shared objects were linked against (read from the ``GLIBC_2.x`` symbol versions
they reference). Without a wheelhouse (``path`` empty) the deploy builds one with the
controller's Python, so the answer is that Python's version, CPU and glibc.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from typing import Any

DOCUMENTATION = r"""
module: sockact_wheelhouse
short_description: What a wheelhouse needs of its hosts (Python minor, CPU, glibc)
description:
  - Reads the wheel file names (tags) of a wheelhouse directory and the glibc symbol versions
    of the shared objects in its locally built (C(linux_*)) wheels; without a wheelhouse,
    reports what the controller Python that would build it is. Changes nothing.
options:
  path:
    description: Wheelhouse directory on the controller; empty for the one the deploy builds.
    type: str
    default: ""
  python:
    description: Controller Python that builds the wheelhouse when O(path) is empty.
    type: str
    required: true
"""

RETURN = r"""
python:
  description: CPython minor the binary wheels are built for (C(3.11)); empty when all are pure.
  type: str
abi3_min:
  description: Lowest CPython minor of C(abi3) wheels; empty when there are none.
  type: str
arch:
  description: CPU architectures of the binary wheels (empty list when all are pure).
  type: list
glibc:
  description: Lowest glibc version every binary wheel works with; empty when none needs one.
  type: str
source:
  description: Where the answer comes from (the wheelhouse, or the controller's Python).
  type: str
"""

_MANYLINUX_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_GLIBC_SYMBOL = re.compile(rb"GLIBC_(2\.[0-9]+(?:\.[0-9]+)?)\x00")
_CONTROLLER_PROBE = (
    "import json, platform, sys\n"
    "print(json.dumps({'python': '%d.%d' % sys.version_info[:2],"
    " 'impl': platform.python_implementation(), 'arch': platform.machine(),"
    " 'libc': list(platform.libc_ver())}))"
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


def parse_wheel_name(filename: str) -> tuple[list[str], list[str], list[str]]:
    """(python tags, abi tags, platform tags) of a wheel file name (compressed tag sets
    such as ``manylinux_2_17_x86_64.manylinux2014_x86_64`` expanded)."""
    stem = filename[: -len(".whl")] if filename.endswith(".whl") else filename
    parts = stem.split("-")
    if len(parts) < 5:
        raise ValueError(f"not a wheel file name: {filename}")
    py, abi, plat = parts[-3:]
    return py.split("."), abi.split("."), plat.split(".")


def platform_needs(tag: str) -> tuple[str, tuple[int, ...] | None, str]:
    """(arch, lowest glibc or None, libc) that a platform tag needs: ``any`` -> ("", None,
    ""); ``linux_<arch>`` -> (arch, None, "glibc"): the glibc is read from the wheel."""
    if tag == "any":
        return "", None, ""
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
    if m:
        return m.group(3), (int(m.group(1)), int(m.group(2))), "glibc"
    m = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", tag)
    if m:
        return m.group(2), _MANYLINUX_LEGACY[m.group(1)], "glibc"
    m = re.fullmatch(r"musllinux_\d+_\d+_(\w+)", tag)
    if m:
        return m.group(1), None, "musl"
    m = re.fullmatch(r"linux_(\w+)", tag)
    if m:
        return m.group(1), None, "glibc"
    raise ValueError(f"platform tag {tag} is not for Linux")


def glibc_linked(wheel: str) -> tuple[int, ...] | None:
    """The highest ``GLIBC_2.x`` symbol version the shared objects of ``wheel`` reference."""
    found: tuple[int, ...] | None = None
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if not re.search(r"\.so(\.\d+)*$", name):
                continue
            for raw in _GLIBC_SYMBOL.findall(zf.read(name)):
                version = _version(raw.decode())
                if found is None or version > found:
                    found = version
    return found


def wheelhouse_needs(path: str) -> dict[str, Any]:
    """What the wheels in ``path`` need; ValueError for a wheelhouse no host can take."""
    names = sorted(n for n in os.listdir(path) if n.endswith(".whl"))
    if not names:
        raise ValueError(f"no wheels in {path}")
    minors: dict[str, str] = {}  # "3.11" -> a wheel that needs it
    abi3: list[tuple[int, ...]] = []
    archs: dict[str, str] = {}
    libcs: set[str] = set()
    glibc: tuple[int, ...] | None = None
    for name in names:
        pys, abis, plats = parse_wheel_name(name)
        for abi in abis:
            m = re.fullmatch(r"cp(\d)(\d+)d?m?", abi)
            if m:
                minors.setdefault(f"{m.group(1)}.{m.group(2)}", name)
            elif abi == "abi3":
                for py in pys:
                    m = re.fullmatch(r"cp(\d)(\d+)", py)
                    if m:
                        abi3.append((int(m.group(1)), int(m.group(2))))
        if plats == ["any"]:
            continue
        # a compressed tag set: any one of its platforms will do, so the lowest need counts
        options = [platform_needs(p) for p in plats]
        for arch, _g, _l in options:
            archs.setdefault(arch, name)
        libcs.update(libc for _a, _g, libc in options)
        versions = [g for _a, g, libc in options if g is not None and libc == "glibc"]
        need = min(versions) if versions else None
        if any(p.startswith("linux_") for p in plats):
            linked = glibc_linked(os.path.join(path, name))
            need = linked if need is None or (linked is not None and linked < need) else need
        if need is not None and (glibc is None or need > glibc):
            glibc = need
    if len(minors) > 1:
        detail = ", ".join(f"{minor} ({wheel})" for minor, wheel in sorted(minors.items()))
        raise ValueError(f"the wheelhouse {path} mixes CPython versions: {detail}")
    if len(archs) > 1:
        raise ValueError(f"the wheelhouse {path} mixes CPU architectures: {sorted(archs)}")
    return {
        "python": next(iter(minors), ""),
        "abi3_min": _dotted(min(abi3)) if abi3 else "",
        "arch": sorted(archs),
        "glibc": _dotted(glibc) if glibc is not None else "",
        "libc": sorted(libcs),
        "wheels": len(names),
        "source": f"the wheelhouse {path}",
    }


def controller_needs(python: str) -> dict[str, Any]:
    """What a wheelhouse built by ``python`` (on this machine) will need."""
    proc = subprocess.run(
        [python, "-c", _CONTROLLER_PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise ValueError(f"{python} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    info = json.loads(proc.stdout)
    libc, libc_version = info["libc"]
    return {
        "python": info["python"] if info["impl"] == "CPython" else "",
        "abi3_min": "",
        "arch": [info["arch"]],
        "glibc": libc_version if libc == "glibc" else "",
        "libc": ["glibc"] if libc == "glibc" else [],
        "wheels": 0,
        "source": (
            f"the controller's {python} builds it (CPython {info['python']}, "
            f"{info['arch']}, {libc} {libc_version})"
        ),
    }


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "path": {"type": "str", "default": ""},
            "python": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    path = module.params["path"] or ""
    try:
        if path:
            if not os.path.isdir(path):
                raise ValueError(f"the wheelhouse {path} is not a directory on the controller")
            needs = wheelhouse_needs(path)
        else:
            needs = controller_needs(module.params["python"])
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        module.fail_json(msg=f"sockact_wheelhouse: {exc}")
    module.exit_json(changed=False, **needs)


if __name__ == "__main__":
    main()
