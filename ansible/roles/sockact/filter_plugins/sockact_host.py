"""Does a host qualify for sockact? Filters of the sockact role (tasks/host_requirements.yml).

The role probes each host with a shell script (``ansible.builtin.raw``: it works on a host
without Python), which prints ``key=value`` lines; :func:`host_problems` compares them
with what sockact requires and with what the wheelhouse needs (module
``sockact_wheelhouse``) and returns one short reason per problem, empty when the host
qualifies.

What a host must have:

* Debian 12 (bookworm): the distribution the role and its units are tested on;
* systemd >= 252 as init (``/run/systemd/system``): Debian 12's; the units use its
  sandboxing options and ``Type=notify`` with ``EXTEND_TIMEOUT_USEC``;
* apt (``apt-get``): provisioning installs python3-venv and the rest with it;
* CPython at ``sockact_python`` of the minor the wheelhouse was built for (its ``cp3XY``
  wheels install nowhere else), on the CPU and with at least the glibc its binary wheels
  need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: (os-release ID, VERSION_ID) the role supports
SUPPORTED_SYSTEMS = (("debian", "12"),)
SUPPORTED_TEXT = "Debian 12 (bookworm)"
SYSTEMD_MIN = 252


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def probe_facts(stdout: str) -> dict[str, str]:
    """The ``key=value`` lines of the probe's output (ssh may add ``\\r``)."""
    facts: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            facts[key] = value.strip()
    return facts


def host_problems(
    stdout: str,
    needs: Mapping[str, Any],
    python_path: str = "/usr/bin/python3",
    supported: Iterable[Iterable[str]] = SUPPORTED_SYSTEMS,
    systemd_min: int = SYSTEMD_MIN,
) -> list[str]:
    """Why the probed host does not qualify; empty when it does."""
    facts = probe_facts(stdout)
    if facts.get("probe") != "done":
        tail = [line for line in stdout.strip().splitlines() if line.strip()]
        return [f"the host probe did not finish ({tail[-1] if tail else 'no output'})"]
    problems: list[str] = []
    system = (facts.get("os_id", ""), facts.get("os_version", ""))
    if system not in {(str(a), str(b)) for a, b in supported}:
        name = facts.get("os_name") or " ".join(p for p in system if p) or "an unknown system"
        problems.append(f"runs {name}, not {SUPPORTED_TEXT}")
    if facts.get("systemd_booted") != "yes":
        problems.append("systemd is not the init system (no /run/systemd/system)")
    else:
        systemd = facts.get("systemd_version", "")
        if not systemd.isdigit():
            problems.append("systemctl --version does not name a systemd version")
        elif int(systemd) < systemd_min:
            problems.append(f"systemd {systemd} is older than {systemd_min}")
    if not facts.get("apt"):
        problems.append("no apt-get (provisioning installs packages with apt)")
    problems += _python_problems(facts, needs, python_path)
    return problems


def _python_problems(
    facts: Mapping[str, str], needs: Mapping[str, Any], python_path: str
) -> list[str]:
    problems: list[str] = []
    if not facts.get("python"):
        return [f"no {python_path} (Ansible modules and the release venvs need it)"]
    version = _version(facts["python"])
    minor = ".".join(str(p) for p in version[:2])
    source = needs.get("source", "the wheelhouse")
    if facts.get("python_impl", "CPython") != "CPython":
        problems.append(f"{python_path} is {facts['python_impl']}, not CPython")
    wanted = str(needs.get("python") or "")
    if wanted and minor != wanted:
        problems.append(
            f"{python_path} is Python {facts['python']}, but the wheels are built for "
            f"CPython {wanted} ({source})"
        )
    abi3 = str(needs.get("abi3_min") or "")
    if abi3 and version[:2] < _version(abi3):
        problems.append(
            f"{python_path} is Python {facts['python']}, older than {abi3} (abi3 wheels)"
        )
    arch = facts.get("arch") or facts.get("machine", "")
    archs = [str(a) for a in needs.get("arch") or []]
    if archs and arch not in archs:
        wheels = ", ".join(archs)
        problems.append(f"the CPU is {arch or 'unknown'}, but the wheels are for {wheels}")
    glibc = str(needs.get("glibc") or "")
    if glibc:
        libc, _, libc_version = facts.get("libc", "").partition(" ")
        if libc != "glibc":
            problems.append(f"the C library is {libc or 'unknown'}, the wheels need glibc {glibc}")
        elif _version(libc_version) < _version(glibc):
            problems.append(f"glibc {libc_version} is older than {glibc}, which the wheels need")
    return problems


class FilterModule:
    """``sockact_host_problems`` and ``sockact_probe_facts``."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"sockact_host_problems": host_problems, "sockact_probe_facts": probe_facts}
