"""Data passes between core's layers and the store as arguments, never through module-level state.

The stored activations once reached the engine through a ``ContextVar`` set around a command: an analysis read z
that no argument named, and what it read depended on who had called it. Now the store hands out a source object
and every call that reads z takes it as ``activations=``. These checks keep it so for every module of ``core/``
and ``storage/``: none imports ``contextvars`` or uses ``threading.local``, and no function writes to a
module-level name (``global``, an item or attribute assignment, or a mutating method such as ``.set``,
``.append`` or ``.update``). Registries filled while a module is imported are fine (they are written at import,
not by a function); a memo of a pure function is listed below with why it passes nothing between layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "storage")
MUTATORS = frozenset(
    {
        "append",
        "extend",
        "insert",
        "add",
        "update",
        "setdefault",
        "pop",
        "popitem",
        "clear",
        "remove",
        "discard",
    }
    | {"set", "reset", "__setitem__", "__delitem__"}
)
# (module path, name): why writing to it from a function passes no data between layers.
ALLOWED = {
    (
        "core/inputs/formats.py",
        "_HASH_CACHE",
    ): "a memo of file digests keyed on (path, mtime, size): the same "
    "file gives the same digest whoever asks",
}


def _module_names(tree: ast.Module) -> set[str]:
    """Names bound by assignments at the module's top level (not imports, functions or classes)."""
    names: set[str] = set()
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def _locals(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Parameters and names assigned inside ``func`` (they shadow a module-level name of the same spelling)."""
    args = func.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    names = {a.arg for a in params if a is not None}
    names |= {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    declared = {name for n in ast.walk(func) if isinstance(n, ast.Global | ast.Nonlocal) for name in n.names}
    return names - declared


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _writes(func: ast.FunctionDef | ast.AsyncFunctionDef, shared: set[str]) -> set[str]:
    """The module-level names ``func`` writes to."""
    candidates = shared - _locals(func)
    found: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Global):
            found |= set(node.names)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        found |= {
            name
            for t in targets
            if isinstance(t, ast.Attribute | ast.Subscript) and (name := _root_name(t)) in candidates
        }
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            name = _root_name(node.func.value)
            if name in candidates:
                found.add(name)
    return found


def shared_state(root: Path) -> list[str]:
    """``"path: what"`` for each ambient channel: a contextvars or threading.local, or a module-level name a
    function writes to (those in :data:`ALLOWED` excepted)."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import) and any(a.name == "contextvars" for a in node.names):
                    found.append(f"{rel}: imports contextvars")
                if isinstance(node, ast.ImportFrom) and node.module == "contextvars":
                    found.append(f"{rel}: imports from contextvars")
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr == "local"
                    and _root_name(node) == "threading"
                ):
                    found.append(f"{rel}: threading.local")
            shared = _module_names(tree)
            funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            written = {name for f in funcs for name in _writes(f, shared)}
            found += [f"{rel}: a function writes module-level {name}" for name in sorted(written)
                      if (rel, name) not in ALLOWED]  # fmt: skip
    return found


def test_no_module_level_channel_carries_data_in_core_or_storage() -> None:
    assert shared_state(ROOT) == []


def test_the_check_sees_a_context_variable_and_a_module_cache(tmp_path: Path) -> None:
    core = tmp_path / "core"
    core.mkdir()
    (tmp_path / "storage").mkdir()
    (core / "a.py").write_text(
        "from contextvars import ContextVar\n"
        "_SOURCE: ContextVar[object] = ContextVar('source', default=None)\n"
        "def use(source):\n    _SOURCE.set(source)\n"
    )
    (core / "b.py").write_text("_SEEN = {}\ndef remember(k, v):\n    _SEEN[k] = v\n")
    (core / "c.py").write_text("_N = 0\ndef bump():\n    global _N\n    _N += 1\n")
    (core / "d.py").write_text(  # a registry filled at import, and a local that shadows a module name
        "REGISTRY = {}\nREGISTRY['x'] = 1\n_SEEN = {}\ndef fresh(k):\n    _SEEN = {}\n    _SEEN[k] = 1\n"
        "    return _SEEN\n"
    )
    assert shared_state(tmp_path) == [
        "core/a.py: imports from contextvars",
        "core/a.py: a function writes module-level _SOURCE",
        "core/b.py: a function writes module-level _SEEN",
        "core/c.py: a function writes module-level _N",
    ]
