"""The role's modules document themselves as Ansible reads it: ``ansible-doc`` parses each
one's DOCUMENTATION, EXAMPLES and RETURN (YAML), and every option of its argument spec is
documented. A ``: `` inside a plain description made ``ansible-doc sockact_state`` fail."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "ansible/roles/sockact/library"
ANSIBLE_DOC = Path(sys.executable).parent / "ansible-doc"
MODULES = sorted(p.stem for p in LIBRARY.glob("*.py"))


def argument_spec_keys(module: str) -> set[str]:
    """The top-level keys of ``argument_spec={...}`` in the module's source."""
    tree = ast.parse((LIBRARY / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "argument_spec":
            assert isinstance(node.value, ast.Dict)
            return {str(k.value) for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError(f"{module}: no argument_spec")


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_reads_the_module(module: str) -> None:
    done = subprocess.run(
        [str(ANSIBLE_DOC), "--json", "-M", str(LIBRARY), module],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)[module]
    assert doc["return"], f"{module}: no RETURN"
    assert set(doc["doc"]["options"]) == argument_spec_keys(module)
