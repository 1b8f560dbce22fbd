"""docs/architecture.md says what each module is for: every module of the wheel and of the
lab tool is named in its layout, and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
PACKAGES = (REPO / "sockact", REPO / "tools" / "lab" / "sockact_lab")


def layout_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"## Layout: who each part is for\n```\n(.*?)```", text, re.S)
    assert match, f"{DOC}: no layout block"
    return match.group(1)


def modules() -> set[str]:
    return {
        path.name
        for package in PACKAGES
        for path in package.rglob("*.py")
        if path.name != "__init__.py"
    }


def test_every_module_is_in_the_layout() -> None:
    block = layout_block()
    missing = sorted(name for name in modules() if not re.search(rf"\b{re.escape(name)}\b", block))
    assert not missing, f"{DOC} does not say what these modules are for: {missing}"


def test_every_module_the_layout_names_exists() -> None:
    named = set(re.findall(r"\b([a-z_]+\.py)\b", layout_block()))
    present = {path.name for path in REPO.rglob("*.py") if ".venv" not in path.parts}
    assert not named - present, f"{DOC} names files that do not exist: {named - present}"
