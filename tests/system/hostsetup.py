"""Install sockact releases, instances and units on a lab host the way the Ansible role does.

Small helpers, each one step of the role, for the system tests (and anyone else):

* :func:`build_wheelhouse` once per session on the controller: sockact, the locked
  dependencies and the demo app at each version (tests/releases.py);
* :func:`ensure_venv_support` (python3-venv with apt on a bare host, as provisioning does),
  :func:`copy_wheelhouse` into a host, :func:`install_release` a venv per version from it
  (``pip install --no-index --find-links``, the demo at that version), with its
  ``release.json`` (label, and the digest the installed venv reports);
* :func:`ensure_user` (the static ``api`` user), :func:`write_instance` (``<i>.toml``,
  ``<i>.env`` and the ``/opt/api/instances/<i>`` link);
* :func:`install_units` (``sockact units render`` from a release), :func:`apply_sysctl`,
  :func:`daemon_reload`;
* :func:`host_report` (``systemctl status``, ``journalctl -u``, ``ss -ltnp``) for failure
  messages, plus small probes of a host's state (:func:`admin_get`, :func:`main_pid`...).

Why not the role itself: the system tests try the runtime and the unit files on real
systemd without Ansible, so that a failure there points at them; the role is what
tests/ansible runs. Every path comes from :data:`LAYOUT` (sockact/layout.py), the layout
the role reads too (``sockact layout``), so the two never disagree on where things are.

Files are written through the host's overlay root (``host.root``) from the controller and
then owned/moded inside the host, so the ``api`` user of the host is the one that counts.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from sockact import layout, settings
from sockact_lab.lab import Host
from tests import releases

#: the host layout of the default unit name, from its one home (sockact/layout.py)
LAYOUT = layout.HostLayout()
NAME = LAYOUT.name
USER = settings.RENDER["user"].default
PORT = settings.SERVE["port"].default
SYSTEMD_DIR = LAYOUT.unit_dir
WHEELHOUSE_IN_HOST = "/var/lib/sockact-wheelhouse"
PROJECT = Path(__file__).resolve().parents[2]
DEMO = PROJECT / "examples" / "demo"


# --------------------------------------------------------------------------- controller side


def build_wheelhouse(dest: Path, versions: tuple[str, ...] = ("1.0", "2.0")) -> Path:
    """Sockact, its locked dependencies and the demo app at each of ``versions`` (real
    releases of different content: the demo reports the version of its distribution)."""
    releases.build_base(dest)
    for version in versions:
        releases.demo_wheel(version, dest)
    return dest


def host_path(host: Host, path: str) -> Path:
    """Where ``path`` of the host is, seen from the controller (through its overlay root)."""
    return host.root / path.lstrip("/")


def write_file(
    host: Host, path: str, text: str, *, mode: str = "0644", owner: str = "root:root"
) -> None:
    """Write ``text`` to ``path`` in the host, then chown/chmod it there."""
    target = host_path(host, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    host.run("chown", owner, path)
    host.run("chmod", mode, path)


def sh(
    host: Host, script: str, *, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a shell snippet inside the host."""
    return host.run("/bin/sh", "-c", script, check=check, timeout=timeout)


# --------------------------------------------------------------------------- role steps


def copy_wheelhouse(host: Host, wheelhouse: Path) -> str:
    """Copy the wheelhouse into the host; returns its path inside."""
    target = host_path(host, WHEELHOUSE_IN_HOST)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(wheelhouse, target)
    return WHEELHOUSE_IN_HOST


def ensure_venv_support(host: Host) -> None:
    """What provisioning installs on a bare Debian host for the release venvs
    (python3-venv, with apt: through the lab's proxy on a minimal-image host); nothing on
    a host whose python3 makes venvs already (a clone of this machine)."""
    if host.run("/usr/bin/python3", "-c", "import ensurepip", check=False).returncode == 0:
        return
    sh(
        host,
        "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -y install python3-venv",
        timeout=900,
    )


def install_release(host: Host, version: str, wheelhouse: str = WHEELHOUSE_IN_HOST) -> str:
    """A venv ``/opt/api/releases/<version>`` with sockact and the demo at ``version``,
    offline, and its ``release.json`` (written last: the install is complete)."""
    release = LAYOUT.release_dir(version)
    meta = LAYOUT.release_meta(version)
    if host.run("test", "-f", meta, check=False).returncode == 0:
        return release
    host.run("rm", "-rf", release)
    host.run("/usr/bin/python3", "-m", "venv", release, timeout=120)
    host.run(
        f"{release}/bin/pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        wheelhouse,
        "sockact",
        f"sockact-demo=={version}",
        timeout=300,
    )
    digest = json.loads(host.run(f"{release}/bin/sockact", "release").stdout)["digest"]
    write_file(host, meta, json.dumps({"label": version, "digest": digest}) + "\n")
    return release


def release_digest(host: Host, version: str) -> str:
    """The digest :func:`install_release` recorded for ``version``."""
    meta = host.run("cat", LAYOUT.release_meta(version)).stdout
    digest: str = json.loads(meta)["digest"]
    return digest


def ensure_user(host: Host, user: str = USER) -> None:
    if host.run("id", "-u", user, check=False).returncode != 0:
        host.run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user)


def instance_toml(
    instance: int, *, drain_timeout: float = 10.0, extra: dict[str, object] | None = None
) -> str:
    settings: dict[str, object] = {
        "app": "sockact_demo:create_app",
        "warmup": "sockact_demo:warmup",
        "port": PORT,
        "drain_timeout": drain_timeout,
        **(extra or {}),
    }
    lines = [f"# instance {instance}, written by tests/system/hostsetup.py"]
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_instance(
    host: Host,
    instance: int,
    version: str,
    *,
    warmup: float = 1.0,
    fail: bool = False,
    drain_timeout: float = 10.0,
    extra_toml: dict[str, object] | None = None,
) -> None:
    """``/etc/api/instances/<i>.toml`` + ``.env`` and ``/opt/api/instances/<i>`` -> release."""
    config_dir = LAYOUT.instance_config_dir
    host.run("install", "-d", "-o", "root", "-g", USER, "-m", "0750", config_dir)
    write_file(
        host,
        LAYOUT.instance_config(instance),
        instance_toml(instance, drain_timeout=drain_timeout, extra=extra_toml),
        mode="0640",
        owner=f"root:{USER}",
    )
    env = [f"DEMO_WARMUP={warmup:g}"]
    if fail:
        env.append("DEMO_FAIL=1")
    env_file = LAYOUT.instance_env(instance)
    write_file(host, env_file, "\n".join(env) + "\n", mode="0640", owner=f"root:{USER}")
    host.run("install", "-d", "-m", "0755", LAYOUT.instances_dir)
    host.run("ln", "-sfn", LAYOUT.release_dir(version), LAYOUT.instance_link(instance))


def install_units(
    host: Host,
    release: str,
    listen: str,
    *,
    drain_timeout: float = 10.0,
    extra_args: Iterable[str] = (),
) -> list[str]:
    """``sockact units render`` (from ``release``) into /etc/systemd/system; the sysctl
    drop-in of reuseport mode goes to /etc/sysctl.d. Returns the installed file names."""
    staging = f"/run/sockact-units-{listen}"
    host.run("rm", "-rf", staging)
    host.run(
        f"{release}/bin/sockact",
        "units",
        "render",
        "--out",
        staging,
        "--listen",
        listen,
        "--port",
        str(PORT),
        "--drain-timeout",
        str(drain_timeout),
        *extra_args,
    )
    names = sorted(host.run("ls", staging).stdout.split())
    for name in names:
        dest = LAYOUT.sysctl_dir if name.endswith(".conf") else LAYOUT.unit_dir
        host.run("install", "-m", "0644", f"{staging}/{name}", f"{dest}/{name}")
    host.run("rm", "-rf", staging)
    return names


def apply_sysctl(host: Host) -> str:
    """``sysctl --system`` (other drop-ins may fail in a container: only ours is checked);
    returns net.ipv4.tcp_migrate_req as the host sees it."""
    host.run("sysctl", "--system", check=False)
    return host.run("sysctl", "-n", "net.ipv4.tcp_migrate_req").stdout.strip()


def daemon_reload(host: Host) -> None:
    host.run("systemctl", "daemon-reload")


# --------------------------------------------------------------------------- state and reports


def unit_props(host: Host, unit: str, *props: str) -> dict[str, str]:
    out = host.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {p: values.get(p, "") for p in props}


def main_pid(host: Host, unit: str) -> int:
    return int(unit_props(host, unit, "MainPID")["MainPID"] or 0)


#: GET with the host's own python3 (a minimal-image host has no curl): prints the status,
#: a newline and the body; status 0 when nothing answered
_GET = """\
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as resp:
        code, body = resp.status, resp.read()
except urllib.error.HTTPError as exc:
    code, body = exc.code, exc.read()
except OSError:
    code, body = 0, b""
sys.stdout.write(str(code) + "\\n" + body.decode("utf-8", "replace"))
"""


def http_get(host: Host, url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET from inside the host (its loopback); status 0 when nothing
    answered."""
    proc = host.run("python3", "-c", _GET, url, str(timeout), check=False)
    code, _, body = proc.stdout.partition("\n")
    return (int(code) if code.isdigit() else 0), body


def admin_get(host: Host, instance: int, path: str = "/ready") -> tuple[int, dict[str, object]]:
    """GET an instance's admin endpoint (loopback inside the host); (0, {}) when refused."""
    code, body = http_get(host, f"http://127.0.0.1:{layout.admin_port(instance)}{path}", 3.0)
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        doc = {"raw": body}
    return code, doc


def host_now(host: Host) -> str:
    """The host's clock as ``@<epoch>``, for ``journalctl --since`` and :func:`stop_problems`."""
    return "@" + host.run("date", "+%s").stdout.strip()


def stop_problems(
    host: Host, instances: Iterable[int], since: str, *, name: str = NAME
) -> list[str]:
    """How the stopped ``instances`` (units ``<name>@<i>``) ended since ``since`` (host
    clock, :func:`host_now`), if not cleanly: a unit left failed or not inactive, or the
    journal's word for a main process that did not exit 0 (a drain that exits 1, a second
    signal's 130, a kill at TimeoutStopSec). The system and Ansible tests check every stop
    with it."""
    problems = []
    for i in instances:
        unit = layout.HostLayout(name).instance_unit(i)
        show = host.run(
            "systemctl", "show", "--property=ActiveState,Result,ExecMainStatus", unit
        ).stdout.split()
        if "ActiveState=inactive" not in show or "Result=success" not in show:
            problems.append(f"{unit}: {' '.join(show)}")
        journal = host.run(
            "journalctl", "--no-pager", "-o", "cat", "-u", unit, "--since", since, check=False
        ).stdout
        bad = [
            line
            for line in journal.splitlines()
            if "Failed with result" in line
            or "code=killed" in line
            or ("code=exited" in line and "status=0/SUCCESS" not in line)
        ]
        problems += [f"{unit}: {line}" for line in bad]
    return problems


def listeners(host: Host, port: int = PORT) -> str:
    return host.run("ss", "-Hltnp", f"sport = :{port}", check=False).stdout


def api_units(host: Host) -> dict[str, str]:
    """Every loaded ``api@*`` unit -> its active state."""
    out = host.run(
        "systemctl", "list-units", "--all", "--plain", "--no-legend", f"{NAME}@*", check=False
    ).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith(f"{NAME}@"):
            found[parts[0]] = parts[2]
    return found


def active_api_units(host: Host) -> list[str]:
    return sorted(u for u, state in api_units(host).items() if state in ("active", "activating"))


def host_report(host: Host, units: Iterable[str] = ()) -> str:
    """``systemctl status``, ``journalctl -u <unit> -n 50`` per unit and ``ss -ltnp``:
    what a failed system test prints about the host."""
    units = list(units) or [f"{NAME}@*", f"{NAME}.socket", f"{NAME}.service"]
    parts = [f"==== host {host.name} ({host.address})"]
    cmds = [["systemctl", "status", "--no-pager", "-l", "--lines=0", *units]]
    for unit in units:
        cmds.append(["journalctl", "--no-pager", "-u", unit, "-n", "50"])
    cmds.append(["ss", "-ltnp"])
    for cmd in cmds:
        try:
            proc = host.run(*cmd, check=False, timeout=20)
            text = (proc.stdout + proc.stderr).rstrip()
        except Exception as exc:  # the report must never hide the real failure
            text = f"(failed: {exc!r})"
        parts.append(f"---- $ {shlex.join(cmd)}\n{text}")
    return "\n".join(parts)
