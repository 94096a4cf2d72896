"""The arrows of DESIGN §3 point one way: app → storage → core, and the CLI beside the app.

core/ imports neither storage nor the app, nor the demo or the CLI; storage/ not the app, the demo or the CLI;
the app not the CLI (it would load typer and every command into the Streamlit process); the app's services (every
app module but the pages, the components, the entry file and the cache module) not Streamlit; the demo
(sample_data/) not the app, the store or the CLI. Each rule is also shown to catch a planted import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The installed package of each top-level folder (DESIGN §4: package-dir mapping).
PACKAGES = {
    "core": "essence.core",
    "storage": "essence.storage",
    "app": "essence.app",
    "sample_data": "essence.sample_data",
}


# core's groups, bottom to top: each may import the groups before it, never one after it.
CORE_GROUPS = ("base", "inputs", "engine", "analyses", "scale")


@dataclass(frozen=True)
class Rule:
    """Files under ``scope`` (but not under ``exempt``) import none of ``banned`` (nor their submodules).

    Attributes:
        scope: a top-level folder of the repository.
        banned: module names, e.g. ``"streamlit"`` or ``"essence.cli"``.
        exempt: paths relative to ``scope`` (a folder or a file) the rule does not cover.
    """

    scope: str
    banned: tuple[str, ...]
    exempt: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.scope} -/-> {', '.join(self.banned)}"


RULES = (
    Rule(
        "core",
        (
            "streamlit",
            "sqlalchemy",
            "alembic",
            "essence.storage",
            "essence.app",
            "essence.sample_data",
            "essence.cli",
        ),
    ),
    Rule("storage", ("streamlit", "essence.app", "essence.cli", "essence.sample_data")),
    Rule("app", ("essence.cli",)),
    # The services are plain Python; Streamlit is for what draws (pages, components), routes (the entry file)
    # and keeps resources alive (the cache module).
    Rule("app", ("streamlit",), exempt=("views", "components", "main.py", "cache.py")),
    Rule("sample_data", ("essence.app", "essence.storage", "essence.cli")),
    # core's own groups, bottom to top: base → inputs → engine → analyses → scale (docs/architecture.md).
    *(
        Rule(f"core/{group}", tuple(f"essence.core.{above}" for above in CORE_GROUPS[i + 1 :]))
        for i, group in enumerate(CORE_GROUPS[:-1])
    ),
)


def module_of(path: Path, root: Path) -> str:
    """The dotted module a file installs as (``app/views/x.py`` → ``essence.app.views.x``)."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES.get(parts[0], parts[0])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, module: str = "") -> set[str]:
    """Every module a file imports, at any depth (functions and ``if`` blocks included).

    Args:
        path: the Python file.
        module: its dotted name, to resolve relative imports (``""``: relative imports are not resolved).

    Returns:
        Module names, and ``module.name`` for each name of a ``from module import name``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if not module:
                    continue
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join([*anchor, base] if base else anchor)
            if base:
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def covered(rule: Rule, root: Path) -> list[Path]:
    """The Python files a rule covers."""
    base = root / rule.scope
    exempt = [base / e for e in rule.exempt]
    return [p for p in sorted(base.rglob("*.py")) if not any(p == e or e in p.parents for e in exempt)]


def offending(rule: Rule, root: Path = ROOT) -> list[str]:
    """``"FILE imports NAME"`` for every import that breaks ``rule``."""
    bad = []
    for path in covered(rule, root):
        for name in sorted(imported_modules(path, module_of(path, root))):
            if any(name == banned or name.startswith(banned + ".") for banned in rule.banned):
                bad.append(f"{path.relative_to(root)} imports {name}")
    return bad


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_layering(rule: Rule) -> None:
    if not (ROOT / rule.scope).is_dir():
        pytest.fail(f"{rule.scope}/ is missing")
    assert offending(rule) == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_rule_catches_a_planted_import(rule: Rule, tmp_path: Path) -> None:
    """A module in the rule's scope that imports each banned name, nested or dynamically, is caught."""
    pkg = tmp_path / rule.scope / "deep"
    pkg.mkdir(parents=True)
    for i, banned in enumerate(rule.banned):
        (pkg / f"top{i}.py").write_text(f"import {banned}\n")
        (pkg / f"nested{i}.py").write_text(f"def f():\n    from {banned} import thing\n")
        (pkg / f"dynamic{i}.py").write_text(f"import importlib\nimportlib.import_module({banned!r})\n")
    found = offending(rule, tmp_path)
    for i, banned in enumerate(rule.banned):
        for kind in ("top", "nested", "dynamic"):
            assert any(
                line.startswith(f"{rule.scope}/deep/{kind}{i}.py imports {banned}") for line in found
            ), (
                kind,
                banned,
                found,
            )


@pytest.mark.parametrize("rule", [r for r in RULES if r.exempt], ids=lambda r: r.name)
def test_exemptions_are_exact_and_exist(rule: Rule, tmp_path: Path) -> None:
    """An exempt path exists in the tree (no stale exemption), and exempts only itself, not its look-alikes."""
    for e in rule.exempt:
        assert (ROOT / rule.scope / e).exists(), f"{rule.scope}/{e} is exempt from {rule.name} but is gone"
    banned = rule.banned[0]
    base = tmp_path / rule.scope
    for e in rule.exempt:
        inside = base / e / "x.py" if not e.endswith(".py") else base / e
        inside.parent.mkdir(parents=True, exist_ok=True)
        inside.write_text(f"import {banned}\n")
        (base / f"{Path(e).stem}_like.py").write_text(f"import {banned}\n")
    found = offending(rule, tmp_path)
    assert sorted(found) == sorted(
        f"{rule.scope}/{Path(e).stem}_like.py imports {banned}" for e in rule.exempt
    )


def test_every_core_module_lives_in_a_group() -> None:
    """core/ itself holds only the public API's ``__init__.py``; each module sits in one of the groups."""
    loose = sorted(p.name for p in (ROOT / "core").glob("*.py") if p.name != "__init__.py")
    assert loose == []
    folders = sorted(p.name for p in (ROOT / "core").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(CORE_GROUPS)


def test_core_modules_import_the_defining_module_not_the_public_api() -> None:
    """Inside core, ``from essence.core import name`` would load the lazy public API and hide the real arrow."""
    public = {"essence.core"}
    bad = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        if path == ROOT / "core" / "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in public and not node.level:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == []


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    """Relative imports count as the absolute names they stand for (``from ...cli`` in ``app/views/`` is ``essence.cli``)."""
    views = tmp_path / "app" / "views"
    views.mkdir(parents=True)
    (views / "__init__.py").write_text("from . import page\n")
    (views / "page.py").write_text("from ..cache import x\nfrom ...cli import run\n")
    page = imported_modules(views / "page.py", module_of(views / "page.py", tmp_path))
    assert {"essence.app.cache", "essence.app.cache.x", "essence.cli", "essence.cli.run"} <= page
    init = imported_modules(views / "__init__.py", module_of(views / "__init__.py", tmp_path))
    assert "essence.app.views.page" in init
    rule = Rule("app", ("essence.cli",))
    assert offending(rule, tmp_path) == [
        "app/views/page.py imports essence.cli",
        "app/views/page.py imports essence.cli.run",
    ]


def test_the_checker_sees_nested_and_dynamic_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "import os\n"
        "def f():\n    from essence.app.views import x\n"
        "import importlib\nimportlib.import_module('streamlit')\n"
    )
    names = imported_modules(f)
    assert {"essence.app.views", "streamlit", "os"} <= names


def test_test_modules_have_unique_names():
    """The test folders are not packages: two test files of one name stop pytest at collection."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen.setdefault(path.name, path)
    assert clashes == []
