"""The GPU path's options: pinned prefetching, channels-last, autocast; CUDA-only checks are skipped without CUDA.

The prefetch thread and the memory-format context on their own: ``tests/core/test_prefetch.py``, ``test_state.py``.
"""

from __future__ import annotations

import pytest
import torch

from essence.core.analyses.profiles import class_profiles
from essence.core.engine.prefetch import prefetch


def needs_cuda(test):
    """Mark a test as needing CUDA and skip it, saying why, where there is none."""
    skip = pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device; none on this machine"
    )
    return pytest.mark.cuda(skip(test))


# Autocast error bounds for the small test CNN, relative to the largest fp32 entry (max |Δ| / max |fp32|).
# Measured on this machine's CPU: bf16 2.9e-3 (8 mantissa bits, unit roundoff 2**-8 ≈ 3.9e-3), fp16 2.4e-4
# (2**-11). Bounds: about 5× the measured error (GPU kernels round differently). docs/scale.md gives the
# errors measured on resnet18/50 at 224 px (up to 5e-2 for bf16).
BF16_BOUND = 1.5e-2
FP16_BOUND = 1.5e-3


def test_channels_last_gives_the_same_profiles_and_restores_the_model(cnn, cnn_xy, rel_close):
    plain = class_profiles(cnn, cnn_xy, "block", device="cpu")
    fast = class_profiles(cnn, cnn_xy, "block", device="cpu", channels_last=True)
    rel_close(fast.mean, plain.mean, 1e-5)
    rel_close(fast.stderr, plain.stderr, 1e-4)
    assert all(p.is_contiguous() for p in cnn.parameters())


@pytest.mark.parametrize("amp,bound", [("bf16", BF16_BOUND), ("fp16", FP16_BOUND)])
def test_autocast_error_against_fp32_is_within_its_bound_on_the_cpu(cnn, cnn_xy, amp, bound):
    ref = class_profiles(cnn, cnn_xy, "block", device="cpu")
    try:
        low = class_profiles(cnn, cnn_xy, "block", device="cpu", autocast=amp)
    except RuntimeError as exc:  # a CPU build without fp16 autocast kernels
        pytest.skip(f"{amp} autocast is not supported on this CPU build: {exc}")
    err = float((low.mean - ref.mean).abs().max() / ref.mean.abs().max())
    assert 0 < err <= bound  # > 0: autocast really ran in lower precision


# ------------------------------------------------------------------------------------------------ CUDA


@needs_cuda
def test_cuda_profiles_equal_the_cpu_ones(cnn, cnn_xy, rel_close):
    cpu = class_profiles(cnn, cnn_xy, "block", device="cpu")
    gpu = class_profiles(cnn, cnn_xy, "block", device="cuda", batch_size=5)  # pinned, prefetched batches
    rel_close(gpu.mean, cpu.mean, 1e-4)
    assert torch.equal(gpu.counts, cpu.counts)
    assert next(cnn.parameters()).device.type == "cpu"  # moved back


@needs_cuda
def test_cuda_autocast_and_channels_last_stay_within_the_bound(cnn, cnn_xy):
    ref = class_profiles(cnn, cnn_xy, "block", device="cuda")
    for amp, bound in (("bf16", BF16_BOUND), ("fp16", FP16_BOUND)):
        low = class_profiles(cnn, cnn_xy, "block", device="cuda", autocast=amp, channels_last=True)
        err = float((low.mean - ref.mean).abs().max() / ref.mean.abs().max())
        assert err <= bound, (amp, err)


@needs_cuda
def test_cuda_prefetch_pins_host_batches():
    batches = ((torch.full((2, 3), float(i)), torch.tensor([i, i])) for i in range(3))
    got = list(prefetch(batches, pin=True))
    assert all(t.is_pinned() for batch in got for t in batch)
