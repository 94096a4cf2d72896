"""The app's heap freeze (app/heap.py): the collection Streamlit runs after every script run walks only what was
made since the last freeze, garbage is never frozen, and the entry file freezes at the end of its runs."""

from __future__ import annotations

import gc
import sys
import time
import types
import weakref

from essence.app import heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def _new_module(name: str) -> None:
    sys.modules[name] = types.ModuleType(name)


def test_a_freeze_follows_new_modules_only_and_keeps_no_garbage() -> None:
    _new_module("essence_heap_probe_a")
    try:
        assert heap.freeze_new_modules()
        assert not heap.freeze_new_modules()  # nothing imported since: no second collection
        cycle = _Node()
        dead = weakref.ref(cycle)
        del cycle  # garbage, but only a collection can see it
        assert dead() is not None
        _new_module("essence_heap_probe_b")
        assert heap.freeze_new_modules()
        assert dead() is None, "a freeze kept a garbage cycle alive"
        assert gc.get_freeze_count() > 0
    finally:
        del sys.modules["essence_heap_probe_a"], sys.modules["essence_heap_probe_b"]


def test_after_the_apps_runs_a_full_collection_walks_a_small_part_of_the_heap(open_app, clean) -> None:
    at = open_app("triage")
    clean(at)
    at.run()  # a second run: what the first imported is frozen by now
    clean(at)
    frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
    # The modules (hundreds of thousands of objects with PyTorch) are frozen; what a collection still walks is
    # what the runs made since. Without the freeze everything is tracked and the ratio is above 1.
    assert tracked < frozen / 10, (tracked, frozen)
    began = time.perf_counter()
    gc.collect(2)
    print(f"\nfrozen {frozen}, tracked {tracked}: a full collection took {time.perf_counter() - began:.4f} s")
