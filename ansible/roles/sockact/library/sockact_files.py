#!/usr/bin/python3
"""Write small files and symlinks on a sockact host in one module call, each atomically.

Ansible module of the sockact role. A switch writes a handful of small files (the intent,
the instances' settings and environment, the record) and links; ``copy`` would transfer
each one as a file (a round trip and an sftp session per file). This writes them from
the module's arguments (pipelined with the module itself): each file to a temporary
name in its directory, flushed, moved over the old one, so that a crash leaves the old
file or the new one, never half of one. Check mode reports what would change; ``--diff``
shows the change of ``files`` and ``links`` (a link as ``-> target``), never of
``secret_files`` (not logged either).
"""

from __future__ import annotations

import grp
import os
import pwd
import tempfile
from typing import Any

DOCUMENTATION = r"""
module: sockact_files
short_description: Write small files and symlinks atomically, in one call
description:
  - Each file is written to a temporary name in its directory and renamed over the old
    one; each link is created under a temporary name and renamed. Supports check mode
    and diff (except for O(secret_files)).
options:
  files:
    description: Files to write, C({path, content, mode, owner, group}).
    type: list
    elements: dict
    default: []
  secret_files:
    description: Like O(files), but neither logged nor shown by --diff.
    type: list
    elements: dict
    default: []
  links:
    description: Symlinks to point, C({path, src}).
    type: list
    elements: dict
    default: []
  absent:
    description: Files to remove.
    type: list
    elements: str
    default: []
"""

RETURN = r"""
changed_paths:
  description: the paths written, linked or removed (or that would be, in check mode).
  type: list
  returned: always
"""


def _ids(spec: dict[str, Any]) -> tuple[int, int, int]:
    mode = int(str(spec.get("mode") or "0644"), 8)
    uid = pwd.getpwnam(spec.get("owner") or "root").pw_uid
    gid = grp.getgrnam(spec.get("group") or "root").gr_gid
    return mode, uid, gid


def _current(path: str) -> tuple[bytes | None, tuple[int, int, int] | None]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    return data, (st.st_mode & 0o7777, st.st_uid, st.st_gid)


def _write(path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchown(fh.fileno(), uid, gid)
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _link(path: str, src: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(src, tmp)
    os.rename(tmp, path)


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "default": []},
            "secret_files": {"type": "list", "elements": "dict", "default": [], "no_log": True},
            "links": {"type": "list", "elements": "dict", "default": []},
            "absent": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    changed: list[str] = []
    diffs: list[dict[str, str]] = []
    try:
        for specs, secret in ((p["files"], False), (p["secret_files"], True)):
            for spec in specs:
                path, data = spec["path"], str(spec["content"]).encode("utf-8")
                mode, uid, gid = _ids(spec)
                old, meta = _current(path)
                if old == data and meta == (mode, uid, gid):
                    continue
                changed.append(path)
                if not secret:
                    diffs.append(
                        {
                            "before_header": path,
                            "after_header": path,
                            "before": (old or b"").decode("utf-8", "replace"),
                            "after": data.decode("utf-8"),
                        }
                    )
                if not module.check_mode:
                    _write(path, data, mode, uid, gid)
        for spec in p["links"]:
            path, src = spec["path"], spec["src"]
            if os.path.islink(path) and os.readlink(path) == src:
                continue
            changed.append(path)
            before = os.readlink(path) if os.path.islink(path) else ""
            diffs.append(
                {
                    "before_header": path,
                    "after_header": path,
                    "before": f"-> {before}\n" if before else "",
                    "after": f"-> {src}\n",
                }
            )
            if not module.check_mode:
                _link(path, src)
        for path in p["absent"]:
            if not os.path.lexists(path):
                continue
            changed.append(path)
            if not module.check_mode:
                os.unlink(path)
    except (OSError, KeyError) as exc:
        module.fail_json(msg=f"sockact_files: {exc}", changed_paths=changed)
    result: dict[str, Any] = {"changed": bool(changed), "changed_paths": changed}
    if module._diff and diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
