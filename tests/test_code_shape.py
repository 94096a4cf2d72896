"""Functions in core/ stay small enough to hold in the head: at most ~60 lines of body.

Complexity is ruff's rule C901 (at most 15, configured in pyproject.toml for core/). A function may be longer
only with a comment on the line above its ``def`` (or its decorators) that starts ``# Long:`` and says why.
Modules in core/, storage/ and app/ (the migrations aside) hold one concept each, in at most 450 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
MARK = "# Long:"
MAX_MODULE_LINES = 450
# The packages whose modules are held to one concept each; generated migrations are not written by hand.
SHAPED_PACKAGES = ("core", "storage", "app")
UNSHAPED_FOLDERS = ("migrations",)


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:] or body
    assert node.end_lineno is not None
    return node.end_lineno - body[0].lineno + 1


def long_functions(root: Path) -> list[str]:
    """``"path:line name (N lines)"`` for each function over the limit without a ``# Long:`` comment."""
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            n = body_lines(node)
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2].strip() if first >= 2 else ""
            if n > MAX_LINES and not above.startswith(MARK):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_core_functions_are_short_or_say_why() -> None:
    assert long_functions(ROOT / "core") == []


def test_the_check_sees_a_long_function_and_honours_the_comment(tmp_path: Path) -> None:
    pkg = tmp_path / "core"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES + 1))
    (pkg / "a.py").write_text(f'def long():\n    """Doc."""\n{body}')
    (pkg / "b.py").write_text(
        f"{MARK} one loop over the graph's nodes, read top to bottom\ndef long():\n{body}"
    )
    (pkg / "c.py").write_text("def short():\n" + "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES)))
    assert long_functions(pkg) == [f"core/a.py:1 long ({MAX_LINES + 1} lines)"]


def long_modules(root: Path) -> list[str]:
    """``"path (N lines)"`` for each module under ``root`` over :data:`MAX_MODULE_LINES` (migrations aside)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if any(part in UNSHAPED_FOLDERS for part in path.relative_to(root).parts):
            continue
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(root.parent)} ({n} lines)")
    return found


def test_modules_stay_under_450_lines() -> None:
    assert [m for package in SHAPED_PACKAGES for m in long_modules(ROOT / package)] == []


def test_the_check_sees_a_long_module_and_passes_over_migrations(tmp_path: Path) -> None:
    pkg = tmp_path / "storage"
    (pkg / "migrations" / "versions").mkdir(parents=True)
    lines = "".join(f"x{i} = {i}\n" for i in range(MAX_MODULE_LINES + 1))
    (pkg / "long.py").write_text(lines)
    (pkg / "migrations" / "versions" / "0001_first.py").write_text(lines)
    (pkg / "fits.py").write_text("".join(f"x{i} = {i}\n" for i in range(MAX_MODULE_LINES)))
    assert long_modules(pkg) == [f"storage/long.py ({MAX_MODULE_LINES + 1} lines)"]
