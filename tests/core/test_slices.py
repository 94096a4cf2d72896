"""Slices: layer names, close-name errors, unit reduction, and the capture context."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from essence.core.errors import LayerNotFoundError
from essence.core.slices import capture, inference_state, layer_names, reduce_units, resolve_layer, unit_shape


def test_names_are_module_paths(cnn):
    names = layer_names(cnn)
    assert names == [n for n, _ in cnn.named_modules() if n]
    assert resolve_layer(cnn, "block.conv2") is cnn.block.conv2
    assert resolve_layer(cnn, "") is None and resolve_layer(cnn, "input") is None


@pytest.mark.parametrize("bad,close", [("block.conv3", "block.conv2"), ("Stem", "stem"), ("fc_", "fc")])
def test_unknown_layer_lists_close_names(cnn, bad, close):
    with pytest.raises(LayerNotFoundError) as err:
        resolve_layer(cnn, bad)
    assert bad in str(err.value) and close in str(err.value)


def test_reduce_units_and_shapes():
    g = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert reduce_units(g, "neuron").shape == (2, 12)
    torch.testing.assert_close(reduce_units(g, "channel"), g.sum((2, 3)))
    flat = torch.randn(4, 5)
    assert torch.equal(reduce_units(flat, "channel"), flat) and torch.equal(
        reduce_units(flat, "neuron"), flat
    )
    assert unit_shape((3, 2, 2), "channel") == (3,) and unit_shape((3, 2, 2), "neuron") == (3, 2, 2)
    assert unit_shape((5,), "channel") == (5,)
    with pytest.raises(ValueError, match="granularity"):
        reduce_units(g, "pixel")  # type: ignore[arg-type]


def test_capture_stops_the_backward_at_the_slice_and_removes_its_hooks(cnn, cnn_xy):
    x, _ = cnn_xy
    with inference_state(cnn), capture(cnn, "block") as cap:
        out = cnn(x)
        assert cap.leaf is not None and cap.leaf.is_leaf and cap.leaf.requires_grad
        (g,) = torch.autograd.grad(out[:, 0].sum(), cap.leaf)
        assert g.shape == cap.leaf.shape
        assert all(p.grad is None for p in cnn.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())
    with pytest.raises(RuntimeError), capture(cnn, "block"):
        raise RuntimeError("an error inside the context")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())


def test_substitute_replaces_z(cnn, cnn_xy):
    x, _ = cnn_xy
    with torch.no_grad():
        z = torch.zeros(len(x), 8, 4, 4)
        with capture(cnn, "head", substitute=z):
            out = cnn(x)
        expected = cnn.fc(cnn.flatten(cnn.pool(cnn.act(z))))
    torch.testing.assert_close(out, expected)


def test_a_shared_module_is_refused():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu, nn.Linear(3, 2))
    with pytest.raises(LayerNotFoundError, match="more than once"), capture(model, "1"):
        model(torch.randn(2, 3))


def test_inference_state_restores(cnn):
    cnn.train()
    cnn.fc.bias.requires_grad_(False)
    with inference_state(cnn):
        assert not cnn.training and not any(p.requires_grad for p in cnn.parameters())
    assert cnn.training and not cnn.fc.bias.requires_grad and cnn.fc.weight.requires_grad
