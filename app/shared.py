"""What every browser session of one process shares: the store, a bounded table of results, the models' locks.

Plain Python. How long these live is the app's business, not the services': :mod:`essence.app.cache` keeps
them in Streamlit's resource cache (so they are cleared with it) and installs itself with :func:`provide`.
Without it (a script, a test of the services alone) one plain set per process is used.

A forward hook on a shared model would be seen by every session running that model, so every computation
that runs a model holds that model's lock (:func:`holding`); two models are always locked in the same order
(by fingerprint), so two sessions comparing A with B and B with A cannot deadlock.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from essence.core import LoadedModel
from essence.storage import Store, default_store_path

# Results kept in memory (per process): enough for every page of a few model/dataset pairs.
RESULTS_KEPT = 48

T = TypeVar("T")


class Results:
    """A bounded, thread-safe table of computed results (least recently used out first)."""

    def __init__(self, size: int = RESULTS_KEPT) -> None:
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> object | None:
        """The result under ``key`` (now the most recently used), else ``None``."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: Hashable, value: T) -> T:
        """Keep ``value`` under ``key`` (the least recently used result leaves when the table is full)."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


class ModelLocks:
    """One re-entrant lock per model fingerprint, created on first use."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def lock(self, fingerprint: str) -> threading.RLock:
        """The lock every computation running the model ``fingerprint`` holds."""
        with self._guard:
            return self._locks.setdefault(fingerprint, threading.RLock())

    @contextlib.contextmanager
    def holding(self, *models: LoadedModel) -> Iterator[None]:
        """Hold the locks of ``models`` (in fingerprint order: no deadlock between sessions)."""
        with contextlib.ExitStack() as stack:
            for fp in sorted({m.fingerprint for m in models}):
                stack.enter_context(self.lock(fp))
            yield


@dataclass(frozen=True)
class Shared:
    """The resources of one process.

    Attributes:
        store: the app's store (``$ESSENCE_HOME/essence.sqlite``).
        results: computed results held in memory.
        locks: the models' locks.
    """

    store: Store
    results: Results
    locks: ModelLocks


_plain_results = Results()
_plain_locks = ModelLocks()
_plain_stores: dict[str, Store] = {}
_plain_guard = threading.Lock()


def _plain() -> Shared:
    location = str(default_store_path())
    with _plain_guard:
        if location not in _plain_stores:
            _plain_stores[location] = Store.open(location)
        return Shared(_plain_stores[location], _plain_results, _plain_locks)


_provider: Callable[[], Shared] = _plain


def provide(provider: Callable[[], Shared] | None) -> None:
    """Take the shared resources from ``provider`` from now on (``None``: one plain set per process)."""
    global _provider
    _provider = provider or _plain


def shared() -> Shared:
    """The current shared resources (the store is the one of ``$ESSENCE_HOME``, read at each call)."""
    return _provider()


def store() -> Store:
    """The app's store: ``$ESSENCE_HOME/essence.sqlite`` (read at each call, so tests can point it elsewhere)."""
    return shared().store


def holding(*models: LoadedModel) -> contextlib.AbstractContextManager[None]:
    """Hold the locks of ``models`` (shared by every session; in fingerprint order)."""
    return shared().locks.holding(*models)


def remembered(key: Hashable, compute: Callable[[], T]) -> T:
    """The result under ``key``, computed once (the computation runs outside the table's lock)."""
    table = shared().results
    hit = table.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    return table.put(key, compute())
