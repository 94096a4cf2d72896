"""Batches prepared ahead of the compute: a background thread and pinned host memory for the GPU path.

On a GPU the next batch is decoded and preprocessed while this one computes, and pinned host memory lets
``.to(device, non_blocking=True)`` copy asynchronously. On the CPU a thread would only compete with the compute
for the same cores, so there the batches are produced in line.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar, cast

import torch

THREAD_NAME = "essence-prefetch"
Batch = TypeVar("Batch", bound=tuple[torch.Tensor, ...])


def prefetch(
    batches: Iterator[Batch], *, pin: bool, depth: int = 2, background: bool | None = None
) -> Iterator[Batch]:
    """Yield ``batches`` prepared up to ``depth`` ahead in a background thread, pinned if ``pin``.

    Order is kept; an error raised while preparing a batch is raised here; leaving early stops the thread.

    Args:
        batches: an iterator of tuples of tensors.
        pin: copy each tensor into pinned (page-locked) host memory.
        depth: batches prepared ahead at most.
        background: run the producer in a thread (default: ``pin``).

    Returns:
        An iterator over the same batches, in order.
    """
    if not (pin if background is None else background):
        yield from batches
        return
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(tuple(t.pin_memory() for t in batch) if pin else batch):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, name=THREAD_NAME, daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield cast(
                Batch, item
            )  # what produce() put: a batch (pinned: the same tensors, in pinned copies)
    finally:
        stop.set()
        worker.join(timeout=5)
