"""Class profiles merged from disjoint parts: the sums add, so stored profiles grow with new images alone."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_cnn

from essence.core.analyses.profiles import class_profiles, merge_profiles
from essence.core.base.errors import SpecError


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(40, 3, 8, 8, generator=gen), torch.arange(40) % 4


def test_profiles_of_new_images_merged_into_stored_ones_equal_a_full_recompute(xy, rel_close):
    model, (x, y) = tiny_cnn(), xy
    old = class_profiles(model, (x[:25], y[:25]), "2", device="cpu")
    new = class_profiles(model, (x[25:], y[25:]), "2", device="cpu")
    full = class_profiles(model, (x, y), "2", device="cpu")
    merged = merge_profiles(old, new)
    assert torch.equal(merged.counts, full.counts)
    rel_close(merged.mean, full.mean, 1e-6)
    rel_close(merged.stderr, full.stderr, 1e-5)
    assert merged.class_names == old.class_names and merged.layer == "2" and merged.unit_shape == (8,)


def test_a_single_part_merges_to_itself(xy):
    model, (x, y) = tiny_cnn(), xy
    alone = class_profiles(model, (x, y), "2", device="cpu")
    assert torch.equal(merge_profiles(alone).mean, alone.mean)


def test_parts_of_different_slices_or_none_are_refused(xy):
    model, (x, y) = tiny_cnn(), xy
    conv = class_profiles(model, (x, y), "2", device="cpu")
    linear = class_profiles(model, (x, y), "6", device="cpu")
    with pytest.raises(SpecError, match="cannot merge"):
        merge_profiles(conv, linear)
    with pytest.raises(SpecError, match="nothing to merge"):
        merge_profiles()


def test_the_former_import_path_still_works():
    from essence.core.scale import distributed

    assert distributed.merge_profiles is merge_profiles
