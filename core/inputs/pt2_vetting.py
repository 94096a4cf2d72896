"""Every entry of a ``torch.export`` archive (``.pt2``) vetted before torch reads any of it.

``torch.export.load`` is not a safe reader on its own. It unpickles parts of the archive — the sample inputs
and the legacy weight files with ``weights_only=True`` and then, if that fails, silently with
``weights_only=False``; weights or constants whose config says ``use_pickle``, ``opaque_obj_*`` constants
(``pickle.loads``) and ``custom_obj_*`` constants (TorchScript's unpickler) with no restriction at all. Its
graph can name any callable reachable as an attribute of ``torch`` (``torch.os.system`` is one) as a node's
target, called when the program runs, and its symbolic shapes are parsed with ``sympy.sympify``, which
evaluates the string. An archive may also carry compiled native code (``data/aotinductor/``).

:func:`vet_export_archive` reads the archive once, into memory, and checks every entry against what a program
saved by ``torch.export.save`` holds:

- the archive's own small text entries, the program's graph (JSON) and the raw bytes of non-pickled weights
  and constants are allowed;
- a ``torch.save`` pickle — sample inputs, legacy weight and constant files, a weight or tensor constant whose
  config says ``use_pickle`` — must load with ``torch.load(weights_only=True)``, the restricted unpickler that
  builds tensors and containers only;
- an ``opaque_obj_*`` or ``custom_obj_*`` constant (a pickled Python object), native code, or any entry not in
  this list is refused by name;
- in the graph, every node target and operator argument must resolve to a registered torch operator, a
  higher-order operator or one of the symbolic arithmetic functions torch itself lists, and every symbolic
  expression must use only symbol names, numbers, arithmetic and the function names torch's deserialiser
  declares (no attribute access, no strings but quoted symbol names, no other names).

With ``trust_pickle`` the checks of pickles and graph are skipped (the user vouches for the file); the archive
must still be a readable zip. The vetted bytes themselves — not the file again, which could have changed — are
what :func:`load_vetted_program` hands to ``torch.export.load``, with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` set so
that even a fallback inside torch cannot reach the unrestricted unpickler, and with torch's log output held
back (a damaged archive gives one line, not torch's traceback).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from essence.core.base.errors import ModelLoadError

MAX_ARCHIVE_BYTES = 8 << 30
"""The most bytes the entries of one archive may expand to (checked from the zip's directory and again while
reading): a compressed entry cannot become a memory bomb."""

MAX_JSON_BYTES = 256 << 20
"""The most bytes one JSON entry (a graph, a config) may have."""

TRUST_HINT = "pass trust_pickle=True only if you trust the file's source (it can then run code)"

# Entries (relative to the archive's top folder) whose content torch reads as plain text or raw bytes.
_TEXT_ENTRIES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_TEXT_PREFIXES = ("extra/",)
# The format of torch < 2.7 (a zip without archive_format): what each entry is.
_LEGACY_TEXT = {"version", "serialized_exported_program.json"}
_LEGACY_PICKLES = {
    "serialized_state_dict.pt",
    "serialized_constants.pt",
    "serialized_example_inputs.pt",
    "serialized_state_dict.json",  # torch.save bytes despite the name
    "serialized_constants.json",
}
_LEGACY_TEXT_PREFIXES = ("extra_files/",)

# A symbolic expression as torch writes it (``sympy.srepr``: ``Mul(Integer(2), Symbol('s77', positive=True))``):
# names, numbers, quoted symbol names or numbers, arithmetic, comparisons, calls and keyword arguments.
_SYMBOL = re.compile(r"[a-z]+[0-9]+")
_EXPR_TOKEN = re.compile(
    r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)|'([A-Za-z0-9_.+-]*)'"
    r"|(\*\*|//|==|!=|<=|>=|[-+*/%(),<>=&|~]))"
)
_SYMPY_NAMES = {
    # sympy's classes and constants that its printers write (no functions that parse or evaluate text)
    "Symbol", "Dummy", "Integer", "Rational", "Float", "Mul", "Add", "Pow", "Max", "Min", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "And", "Or", "Not", "Abs", "Mod", "Piecewise", "ExprCondPair", "floor", "ceiling", "sqrt",
    "oo", "zoo", "nan", "true", "false", "True", "False", "None", "Infinity", "NegativeInfinity", "Half",
    "One", "Zero", "NegativeOne", "BooleanTrue", "BooleanFalse", "precision",
}  # fmt: skip


_ENV_LOCK = threading.Lock()


def vet_export_archive(path: Path, *, trust_pickle: bool = False) -> bytes:
    """Read a ``.pt2`` archive and check every entry (module docstring) before anything of it is deserialised.

    Args:
        path: the archive.
        trust_pickle: skip the checks of pickles and of the graph (the user trusts the file's source).

    Returns:
        The archive's bytes, exactly as vetted (load these, not the file again).

    Raises:
        ModelLoadError: not a readable zip, too large once expanded, or an entry that could run code (named,
            with the fix).
    """
    data = path.read_bytes()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable .pt2 archive ({exc}): {_RESAVE}") from exc
    if sum(i.file_size for i in infos) > MAX_ARCHIVE_BYTES:
        raise ModelLoadError(
            f"{path.name} expands to more than {MAX_ARCHIVE_BYTES >> 30} GiB, more than any model Essence "
            f"reads: {_RESAVE}"
        )
    vetter = _Vetter(path.name, archive, trust_pickle)
    try:
        vetter.run()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:  # a damaged entry while reading
        raise ModelLoadError(
            f"{path.name} is a damaged .pt2 archive ({type(exc).__name__}: {exc}): {_RESAVE}"
        ) from exc
    return data


_RESAVE = "save it with torch.export.save(torch.export.export(model, (x,)), 'model.pt2')"


class _Vetter:
    def __init__(self, name: str, archive: zipfile.ZipFile, trust_pickle: bool) -> None:
        self.name = name
        self.archive = archive
        self.trust = trust_pickle
        self.infos = {i.filename: i for i in archive.infolist() if not i.is_dir()}

    def refuse(self, entry: str, what: str) -> ModelLoadError:
        return ModelLoadError(
            f"{self.name} was refused: its entry {entry!r} {what}, which could run code when loaded; {TRUST_HINT}"
        )

    def read(self, entry: str, limit: int = MAX_ARCHIVE_BYTES) -> bytes:
        info = self.infos[entry]
        if info.file_size > limit:
            raise ModelLoadError(
                f"{self.name}: its entry {entry!r} has {info.file_size} bytes, more than {limit}"
            )
        with self.archive.open(info) as f:
            out = f.read(limit + 1)
        if len(out) > limit:
            raise ModelLoadError(f"{self.name}: its entry {entry!r} expands beyond what its header declares")
        return out

    def read_json(self, entry: str) -> Any:
        try:
            return json.loads(self.read(entry, MAX_JSON_BYTES))
        except (ValueError, RecursionError) as exc:
            raise ModelLoadError(
                f"{self.name}: its entry {entry!r} is not valid JSON ({exc}): {_RESAVE}"
            ) from exc

    def run(self) -> None:
        names = list(self.infos)
        roots = {n.split("/", 1)[0] for n in names if "/" in n}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise ModelLoadError(
                f"{self.name} is not a torch.export archive (no single top folder): {_RESAVE}"
            )
        (root,) = roots
        rel = {n.split("/", 1)[1]: n for n in names}
        if "archive_format" in rel:
            self._vet_current(rel)
        else:
            self._vet_legacy(rel)

    # --- the format of torch ≥ 2.7 -------------------------------------------------------------------------
    def _vet_current(self, rel: dict[str, str]) -> None:
        configs = {r: self._payload_config(full) for r, full in rel.items() if _is_payload_config(r)}
        raw, pickled = self._payload_files(rel, configs)
        for r, full in rel.items():
            if r in configs or r in raw:
                continue
            if r in pickled:
                self._vet_torch_pickle(full)
            else:
                self._vet_current_entry(r, full)

    def _payload_files(
        self, rel: dict[str, str], configs: dict[str, dict[str, Any]]
    ) -> tuple[set[str], set[str]]:
        """The payload files the configs name: those read as raw bytes, and tensors saved with ``torch.save``
        (the config says ``use_pickle``). A pickled Python object is refused: ``opaque_obj_*`` constants are read
        with ``pickle.loads``, ``custom_obj_*`` ones with TorchScript's unpickler."""
        raw: set[str] = set()
        pickled: set[str] = set()
        for cfg_entry, config in configs.items():
            folder = cfg_entry.rsplit("/", 1)[0] + "/"
            for fqn, meta in config.items():
                path_name = meta.get("path_name") if isinstance(meta, dict) else None
                if not isinstance(path_name, str) or "/" in path_name or path_name.startswith("."):
                    raise ModelLoadError(
                        f"{self.name}: {cfg_entry} names no valid file for {fqn!r}: {_RESAVE}"
                    )
                entry = folder + path_name
                if not path_name.startswith(("weight_", "tensor_")) and not self.trust:
                    raise self.refuse(rel.get(entry, entry), f"is a pickled Python object (constant {fqn!r})")
                (pickled if meta.get("use_pickle") else raw).add(entry)
        return raw, pickled

    def _vet_current_entry(self, r: str, full: str) -> None:
        """An entry no payload config names: the archive's text, the graph, a ``torch.save`` pickle, or refused."""
        if r in _TEXT_ENTRIES or r.startswith(_TEXT_PREFIXES):
            return
        if r.startswith("models/") and r.endswith(".json"):
            if not self.trust:
                _vet_graph(self.name, full, self.read_json(full))
            return
        sample_inputs = r.startswith("data/sample_inputs/") and r.endswith(".pt")
        legacy_payload = r.startswith(("data/weights/", "data/constants/")) and r.endswith(".pt")
        if sample_inputs or legacy_payload:
            self._vet_torch_pickle(full)
            return
        if self.trust:
            return
        if r.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")):
            raise self.refuse(full, "is compiled native code")
        raise self.refuse(full, "is not part of a program saved by torch.export.save")

    def _payload_config(self, entry: str) -> dict[str, Any]:
        cfg = self.read_json(entry)
        config = cfg.get("config") if isinstance(cfg, dict) else None
        if not isinstance(config, dict):
            raise ModelLoadError(
                f"{self.name}: {entry} is not a payload config ('config' missing): {_RESAVE}"
            )
        return config

    # --- the format of torch < 2.7 -------------------------------------------------------------------------
    def _vet_legacy(self, rel: dict[str, str]) -> None:
        for r, full in rel.items():
            if r in _LEGACY_TEXT or r.startswith(_LEGACY_TEXT_PREFIXES):
                if r == "serialized_exported_program.json" and not self.trust:
                    _vet_graph(self.name, full, self.read_json(full))
                continue
            if r in _LEGACY_PICKLES:
                self._vet_torch_pickle(full)
                continue
            if not self.trust:
                raise self.refuse(full, "is not part of a program saved by torch.export.save")

    def _vet_torch_pickle(self, entry: str) -> None:
        """A ``torch.save`` pickle: it must load with the restricted unpickler (tensors and containers only)."""
        if self.trust:
            return
        data = self.read(entry)
        if not data:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for a foreign object; anything else for a damaged entry
            raise self.refuse(
                entry, f"is a pickle that torch.load(weights_only=True) refuses ({type(exc).__name__})"
            ) from exc


def _is_payload_config(entry: str) -> bool:
    """Whether ``entry`` (relative to the archive's folder) is the payload config of the weights or constants."""
    weights = entry.startswith("data/weights/") and entry.endswith("_weights_config.json")
    return weights or entry.startswith("data/constants/") and entry.endswith("_constants_config.json")


def _vet_graph(name: str, entry: str, graph: Any) -> None:
    """Every operator the graph names resolves to a torch operator; every symbolic expression is arithmetic."""
    for kind, value in _walk(graph):
        if kind == "target":
            if not _safe_target(value):
                raise ModelLoadError(
                    f"{name} was refused: its graph ({entry}) calls {value[:80]!r}, which is not a torch operator "
                    f"and could run code when the program runs; {TRUST_HINT}"
                )
        elif not _safe_expression(value):
            raise ModelLoadError(
                f"{name} was refused: its graph ({entry}) holds the symbolic expression {value[:80]!r}, which is "
                f"not plain arithmetic and would be evaluated when loaded; {TRUST_HINT}"
            )


def _walk(node: Any, depth: int = 0) -> Iterator[tuple[str, str]]:
    """``("target", s)`` for every node target and operator argument, ``("expr", s)`` for every expression."""
    if depth > 200:
        raise ModelLoadError("the program's graph is nested deeper than any saved program")
    if isinstance(node, dict):
        if isinstance(node.get("target"), str) and "inputs" in node and "outputs" in node:
            yield "target", node["target"]
        for key, value in node.items():
            if key == "as_operator" and isinstance(value, str):
                yield "target", value
            elif key == "expr_str" and isinstance(value, str):
                yield "expr", value
            else:
                yield from _walk(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, depth + 1)


def _symbolic_functions() -> set[Any]:
    try:
        from torch._export.serde.serialize import _SYM_OPS

        return set(_SYM_OPS)
    except ImportError:  # a torch without it: only registered operators pass
        return set()


def _safe_target(target: str) -> bool:
    """Whether torch's deserialiser would resolve ``target`` to an operator (never to any other callable)."""
    if target.startswith("#"):  # an extension namespace: only handlers registered in this process
        return False
    head, _, rest = target.partition(".")
    import math
    import operator

    modules = {"torch": torch, "_operator": operator, "math": math}
    if head not in modules or not rest:
        return False
    obj: Any = modules[head]
    for part in rest.split("."):
        if not part.isidentifier() or part.startswith("__") or not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    if isinstance(obj, torch._ops.OpOverload | torch._ops.OpOverloadPacket | torch._ops.HigherOrderOperator):
        return True
    return obj in _symbolic_functions() or obj is operator.getitem


def _safe_expression(expr: str) -> bool:
    """Symbol names, numbers, arithmetic and the printer's function names only (``sympify`` evaluates it)."""
    if len(expr) > 10_000:
        return False
    pos = 0
    allowed = _SYMPY_NAMES | _torch_sympy_functions() | _assumption_names()
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            return expr[pos:].strip() == ""
        name = m.group(1)
        if name is not None and not (_SYMBOL.fullmatch(name) or name in allowed):
            return False
        pos = m.end()
    return True


def _assumption_names() -> set[str]:
    try:
        from sympy.core.assumptions import _assume_defined

        return set(_assume_defined)
    except ImportError:  # an older sympy: the assumptions torch writes
        return {"integer", "positive", "nonnegative", "negative", "real", "finite", "nonzero", "even", "odd"}


def _torch_sympy_functions() -> set[str]:
    import torch.utils._sympy.functions as functions

    return {n for n in dir(functions) if n[:1].isupper()}


def load_vetted_program(path: Path, *, trust_pickle: bool = False) -> Any:
    """``torch.export.load`` of a vetted archive: the vetted bytes, the restricted unpickler forced, torch quiet.

    Raises:
        ModelLoadError: refused by :func:`vet_export_archive`, or not loadable (one line).
    """
    data = vet_export_archive(path, trust_pickle=trust_pickle)
    try:
        with _quiet_torch(), _weights_only(not trust_pickle):
            return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # a damaged or foreign archive fails in many ways; each means "not loadable"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ModelLoadError(
            f"{path.name} is not a loadable torch.export program ({type(exc).__name__}: {first}): {_RESAVE}"
        ) from exc


@contextlib.contextmanager
def _weights_only(force: bool) -> Iterator[None]:
    """``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` for the block: every ``torch.load`` in it uses the restricted unpickler."""
    if not force:
        yield
        return
    with _ENV_LOCK:
        before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch's warnings and log records held back: the caller reports one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
