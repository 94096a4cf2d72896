"""The arrows of DESIGN §3 point one way: app → storage → core. core/ imports neither; storage/ not the app."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "core": ("streamlit", "sqlalchemy", "alembic", "essence.storage", "essence.app"),
    "storage": ("streamlit", "essence.app"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions and ``if`` blocks included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def offending(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            for banned in FORBIDDEN[package]:
                if name == banned or name.startswith(banned + "."):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    if not (ROOT / package).is_dir():
        pytest.fail(f"{package}/ is missing")
    assert offending(package) == []


def test_the_checker_sees_nested_and_dynamic_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import os\n"
        "def f():\n    from essence.app.views import x\n"
        "import importlib\nimportlib.import_module('streamlit')\n"
    )
    names = imported_modules(f)
    assert {"essence.app.views", "streamlit", "os"} <= names
