"""The model-state context managers put the model back as it was, and the cancel flag reads every kind."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from essence.core.base.model_state import cancelled, memory_format, on_device


def test_cancelled_reads_none_events_and_callables():
    assert cancelled(None) is False
    event = threading.Event()
    assert cancelled(event) is False
    event.set()
    assert cancelled(event) is True
    calls: list[int] = []
    assert cancelled(lambda: bool(calls)) is False
    calls.append(1)
    assert cancelled(lambda: bool(calls)) is True
    assert cancelled(lambda: 1) is True  # any truthy answer counts


def test_memory_format_converts_inside_the_block_only(cnn):
    with memory_format(cnn, True):
        assert cnn.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert cnn.stem.weight.is_contiguous()


def test_memory_format_is_restored_on_error_and_off_means_untouched(cnn):
    with pytest.raises(RuntimeError, match="boom"), memory_format(cnn, True):
        raise RuntimeError("boom")
    assert cnn.stem.weight.is_contiguous()
    with memory_format(cnn, False) as same:
        assert same is cnn and cnn.stem.weight.is_contiguous()
        assert not cnn.stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_on_device_leaves_a_model_already_there_and_one_without_parameters(cnn):
    weight = cnn.stem.weight
    with on_device(cnn, torch.device("cpu")) as m:
        assert m is cnn and cnn.stem.weight is weight  # nothing moved, nothing copied
    bare = nn.ReLU()
    with on_device(bare, torch.device("cpu")) as m:
        assert m is bare
