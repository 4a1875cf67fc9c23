"""compare/ is the room above generation/ and analysis/: it imports them, and only app.py imports it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_rooms(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):  # every import, also those inside functions
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_room_below_imports_compare() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for room in ("db", "evalapp", "generation", "analysis")
        for path in sorted((ROOT / room).rglob("*.py"))
        if "compare" in _imported_rooms(path)
    ]
    assert offenders == []


def test_compare_imports_no_screen() -> None:
    for path in sorted((ROOT / "compare").rglob("*.py")):
        assert "evalapp" not in _imported_rooms(path), path
    assert "compare" in _imported_rooms(ROOT / "app.py")  # the front door: the command and build_worker
