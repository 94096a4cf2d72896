"""The spec registry: which loader answers a ``PREFIX:ARG`` model or data spec (DESIGN §4).

A prefix (``torchvision``, ``npz``, ``demo``...) maps to a model loader and/or a data loader. Core registers
its own formats when its loading modules are imported; anything else registers itself, either by calling
:func:`register_model_spec` / :func:`register_data_spec`, or through the entry-point group ``essence.specs``::

    [project.entry-points."essence.specs"]
    demo = "essence.sample_data.specs:register"

An entry point's *name* is the prefix it provides, and it is loaded only the first time that prefix is asked
for: a spec with another prefix never imports it (loading ``torchvision:resnet18`` does not import the
demo). This is how the bundled demo is found without core importing it.

Core's own formats that need an optional library (``dicom:``, ``timm:``, ``monai:``, ``onnx:``) are found the
same way, through :data:`OPTIONAL_FORMATS`: their module is imported the first time their prefix is asked for,
so that no other spec imports pydicom, timm, MONAI or onnx.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from essence.core.base.errors import SpecError
from essence.core.inputs.preprocessing import Preprocessing

if TYPE_CHECKING:
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.models import LoadedModel

ENTRY_POINT_GROUP = "essence.specs"
BadImagePolicy = Literal["error", "skip"]
# A prefix is a plain name: a dot would shadow ``package.module:function`` factory specs, a colon the argument.
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
# Prefix → (kind, module registering it on import) for core's formats built on optional libraries.
OPTIONAL_FORMATS: dict[str, tuple[Literal["model", "data"], str]] = {
    "dicom": ("data", "essence.core.inputs.dicom_spec"),
    "timm": ("model", "essence.core.inputs.zoo"),
    "monai": ("model", "essence.core.inputs.zoo"),
    "onnx": ("model", "essence.core.inputs.onnx_models"),
}


@dataclass(frozen=True)
class ModelRequest:
    """What a model loader is asked for.

    Attributes:
        spec: the whole spec, e.g. ``"torchvision:resnet18"``.
        arg: the part after the prefix's colon, e.g. ``"resnet18"``.
        weights: the weights file given with the spec, if any.
        trust_pickle: whether full pickles may be read (they can run code).
        num_classes: the number of outputs, when the caller knows it.
    """

    spec: str
    arg: str
    weights: str | Path | None = None
    trust_pickle: bool = False
    num_classes: int | None = None


@dataclass(frozen=True)
class DataRequest:
    """What a data loader is asked for.

    Attributes:
        spec: the whole spec, e.g. ``"npz:images.npz"``.
        arg: the part after the prefix's colon (empty for a bare ``digits``).
        preprocessing: the recipe to apply, or None for a default fitting the data.
        class_names: the model's classes, if known: labels given as names map onto them.
        on_bad_image: ``"error"`` stops at an unreadable image; ``"skip"`` leaves it out.
        data_root: files must lie under this folder, if given.
    """

    spec: str
    arg: str
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    on_bad_image: BadImagePolicy = "error"
    data_root: str | Path | None = None


ModelLoader = Callable[[ModelRequest], "LoadedModel"]
DataLoader = Callable[[DataRequest], "ImageData"]
# Either kind of loader: the registry's tables share their bookkeeping.
_Loader = TypeVar("_Loader", bound=Callable[..., object])


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of the group (a function, so tests can stand in for the metadata).

    Read from every distribution on the path, not only the first of each name as ``entry_points()`` does: a
    stale ``essence.egg-info`` left by a build in the working folder comes first on ``sys.path`` and would
    otherwise hide the installed metadata, and with it the demo.
    """
    found: dict[tuple[str, str], importlib.metadata.EntryPoint] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            found.setdefault((ep.name, ep.value), ep)
    return list(found.values())


@dataclass
class SpecRegistry:
    """Prefix → model loader and prefix → data loader, with lazy entry-point discovery."""

    models: dict[str, ModelLoader] = field(default_factory=dict)
    data: dict[str, DataLoader] = field(default_factory=dict)
    _loaded_entry_points: set[str] = field(default_factory=set)
    _entry_point_cache: list[importlib.metadata.EntryPoint] | None = None
    optional: dict[str, tuple[Literal["model", "data"], str]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def register_model(self, prefix: str, loader: ModelLoader, *, replace: bool = False) -> None:
        """Answer model specs ``PREFIX:ARG`` with ``loader(ModelRequest)``. See :func:`register_model_spec`."""
        self._register(self.models, "model", prefix, loader, replace)

    def register_data(self, prefix: str, loader: DataLoader, *, replace: bool = False) -> None:
        """Answer data specs ``PREFIX:ARG`` with ``loader(DataRequest)``. See :func:`register_data_spec`."""
        self._register(self.data, "data", prefix, loader, replace)

    def model_loader(self, prefix: str) -> ModelLoader | None:
        """The model loader of ``prefix`` (discovering its entry point if needed), or None."""
        return self._lookup(self.models, prefix)

    def data_loader(self, prefix: str) -> DataLoader | None:
        """The data loader of ``prefix`` (discovering its entry point if needed), or None."""
        return self._lookup(self.data, prefix)

    def known_prefixes(self, kind: Literal["model", "data"]) -> list[str]:
        """The registered prefixes of ``kind`` and the entry-point names not loaded yet, sorted."""
        table = self.models if kind == "model" else self.data
        pending = {ep.name for ep in self._installed() if ep.name not in self._loaded_entry_points}
        optional = {p for p, (k, _) in self.optional.items() if k == kind}
        return sorted(set(table) | pending | optional)

    def _register(
        self, table: dict[str, _Loader], kind: str, prefix: str, loader: _Loader, replace: bool
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise SpecError(
                f"spec prefix {prefix!r} is not a plain name: use letters, digits, '_' or '-', starting "
                "with a letter (no ':' or '.')"
            )
        if not callable(loader):
            raise TypeError(f"the {kind} loader of prefix {prefix!r} must be callable, got {type(loader)}")
        with self._lock:
            current = table.get(prefix)
            if current is not None and current is not loader and not replace:
                raise SpecError(
                    f"{kind} spec prefix {prefix!r} is already registered ({_qualname(current)}): choose "
                    "another prefix, or pass replace=True to override it"
                )
            table[prefix] = loader

    def _lookup(self, table: dict[str, _Loader], prefix: str) -> _Loader | None:
        if prefix in table:
            return table[prefix]
        with self._lock:
            self._discover(prefix)
            return table.get(prefix)

    def _installed(self) -> list[importlib.metadata.EntryPoint]:
        # Reading the metadata scans every installed distribution: once per process is enough.
        if self._entry_point_cache is None:
            self._entry_point_cache = _entry_points()
        return self._entry_point_cache

    def _discover(self, prefix: str) -> None:
        """Load the not-yet-loaded entry points named ``prefix`` (each calls its registration function)."""
        if prefix in self.optional:  # core's own module: it registers its prefixes when imported
            importlib.import_module(self.optional[prefix][1])
        for ep in self._installed():
            if ep.name != prefix or ep.name in self._loaded_entry_points:
                continue
            self._loaded_entry_points.add(ep.name)
            try:
                register = ep.load()
                register()
            except Exception as exc:  # a broken plug-in is the user's to fix: name it, don't crash
                raise SpecError(
                    f"the plug-in for spec prefix {prefix!r} (entry point {ep.value} in group "
                    f"{ENTRY_POINT_GROUP}) failed to load ({type(exc).__name__}: {exc}): reinstall or fix it"
                ) from exc


def _qualname(loader: Callable[..., object]) -> str:
    return f"{getattr(loader, '__module__', '?')}.{getattr(loader, '__qualname__', repr(loader))}"


REGISTRY = SpecRegistry(optional=dict(OPTIONAL_FORMATS))


def register_model_spec(prefix: str, loader: ModelLoader, *, replace: bool = False) -> None:
    """Register a model loader for specs ``PREFIX:ARG``.

    Args:
        prefix: a plain name (letters, digits, ``_``, ``-``), e.g. ``"hub"`` for ``hub:resnet``.
        loader: called with a :class:`ModelRequest`; returns a ``LoadedModel`` or raises an ``EssenceError``.
        replace: override a different loader already registered under ``prefix``.

    Raises:
        SpecError: a malformed prefix, or one already taken by another loader (without ``replace``).
        TypeError: ``loader`` is not callable.
    """
    REGISTRY.register_model(prefix, loader, replace=replace)


def register_data_spec(prefix: str, loader: DataLoader, *, replace: bool = False) -> None:
    """Register a data loader for specs ``PREFIX:ARG`` (or a bare ``PREFIX``).

    Args:
        prefix: a plain name (letters, digits, ``_``, ``-``), e.g. ``"parquet"`` for ``parquet:PATH``.
        loader: called with a :class:`DataRequest`; returns an ``ImageData`` or raises an ``EssenceError``.
        replace: override a different loader already registered under ``prefix``.

    Raises:
        SpecError: a malformed prefix, or one already taken by another loader (without ``replace``).
        TypeError: ``loader`` is not callable.
    """
    REGISTRY.register_data(prefix, loader, replace=replace)


def model_loader(prefix: str) -> ModelLoader | None:
    """The model loader registered (or discoverable) under ``prefix``, or None.

    Raises:
        SpecError: the entry point of ``prefix`` exists but fails to load.
    """
    return REGISTRY.model_loader(prefix)


def data_loader(prefix: str) -> DataLoader | None:
    """The data loader registered (or discoverable) under ``prefix``, or None.

    Raises:
        SpecError: the entry point of ``prefix`` exists but fails to load.
    """
    return REGISTRY.data_loader(prefix)


def known_prefixes(kind: Literal["model", "data"]) -> list[str]:
    """The prefixes a ``kind`` spec may start with: registered ones and installed entry points, sorted."""
    return REGISTRY.known_prefixes(kind)
