"""Slices: layer names, close-name errors, unit reduction, and the capture context."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from essence.core.base.errors import LayerNotFoundError
from essence.core.engine.influence import influence
from essence.core.engine.slices import (
    LayoutError,
    capture,
    inference_state,
    layer_names,
    record_layout,
    reduce_units,
    resolve_layer,
    unit_shape,
)


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


# --- layouts: which units a slice has -----------------------------------------------------------------


def _tiny_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=3
    ).eval()


def _tiny_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
    ).eval()


def _layout(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[str, tuple[int, ...]]:
    with capture(model, layer) as cap, record_layout(model, layer) as record, torch.no_grad():
        model(x)
    z_shape = tuple(cap.leaf.shape[1:])
    return record.layout(z_shape), z_shape


def _images(n: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 3


def test_layouts_of_swin_vit_and_conv_slices():
    x, _ = _images(2)
    swin, vit = _tiny_swin(), _tiny_vit()
    assert _layout(swin, "features.1", x) == ("channels_last", (4, 4, 8))  # [B, H, W, C], not 4 "channels"
    assert _layout(swin, "features.0.0", x) == ("channels_first", (8, 4, 4))  # the patch conv
    assert _layout(vit, "encoder.layers.encoder_layer_0", x) == ("tokens", (5, 8))
    assert _layout(vit, "conv_proj", x) == ("channels_first", (8, 2, 2))
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(784, 3)
    ).eval()
    assert _layout(cnn, "2", x)[0] == "channels_first"  # an elementwise slice keeps the layout before it
    assert _layout(cnn, "4", x)[0] == "features"


def test_channel_units_are_refused_where_channels_are_not_axis_1():
    data = _images()
    swin, vit = _tiny_swin(), _tiny_vit()
    with pytest.raises(LayoutError, match=r"channels last.*use --granularity feature or token or neuron"):
        influence(swin, data, "features.1", batch_size=4)
    features = influence(swin, data, "features.1", granularity="feature", batch_size=4)
    assert features.unit_shape == (8,)
    with pytest.raises(LayoutError, match="tokens"):
        influence(vit, data, "encoder.layers.encoder_layer_0", batch_size=4)
    tokens = influence(vit, data, "encoder.layers.encoder_layer_0", granularity="token", batch_size=4)
    neurons = influence(vit, data, "encoder.layers.encoder_layer_0", granularity="neuron", batch_size=4)
    assert tokens.unit_shape == (5,) and neurons.unit_shape == (5, 8)
    torch.testing.assert_close(tokens.mean, neurons.mean.reshape(-1, 5, 8).sum(-1), rtol=1e-5, atol=1e-6)
    with pytest.raises(LayoutError, match="channel"):
        influence(_tiny_swin(), data, "features.0.0", granularity="token", batch_size=4)


def test_unknown_layouts_allow_neurons_only():
    class Mystery(nn.Module):  # a custom leaf: Essence cannot know which axis is what
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 3) * 2

    model = nn.Sequential(Mystery(), nn.Flatten(), nn.Linear(3 * 16 * 16, 3)).eval()
    data = _images()
    with pytest.raises(LayoutError, match="not known.*use --granularity neuron"):
        influence(model, data, "0", batch_size=4)
    assert influence(model, data, "0", granularity="neuron", batch_size=4).unit_shape == (16, 16, 3)
