"""The prefetch thread keeps order, hands its errors over, and stops when left; on the CPU it is not started."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from essence.core.engine.prefetch import THREAD_NAME, prefetch


def _batches(n: int = 7):
    for i in range(n):
        yield torch.full((2, 3), float(i)), torch.tensor([i, i]), torch.tensor([2 * i, 2 * i + 1])


def test_prefetch_in_a_thread_keeps_order_and_values():
    got = list(prefetch(_batches(), pin=False, background=True))
    want = list(_batches())
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(g, w, strict=True))


def test_prefetch_raises_the_loaders_error_here():
    def broken():
        yield from _batches(2)
        raise OSError("image 3 is unreadable")

    it = prefetch(broken(), pin=False, background=True)
    next(it), next(it)
    with pytest.raises(OSError, match="image 3"):
        next(it)


def test_prefetch_stops_its_thread_when_left_early():
    before = {t.name for t in threading.enumerate()}
    it = prefetch(_batches(1000), pin=False, background=True)
    next(it)
    it.close()
    time.sleep(0.3)
    alive = [t for t in threading.enumerate() if t.name == THREAD_NAME]
    assert not alive, alive
    assert THREAD_NAME not in before


def test_prefetch_on_the_cpu_uses_no_thread():
    it = prefetch(_batches(3), pin=False)
    first = next(it)
    assert torch.equal(first[0], torch.zeros(2, 3))
    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]
    assert len(list(it)) == 2
