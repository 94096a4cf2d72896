"""One-image explanations: influence at the slice, comparative linearity, unit maps, bad questions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import NAMES, tiny_cnn
from torch import nn

from essence.core.analyses.explanation import Explanation, explain
from essence.core.analyses.interpret import unit_input_gradients
from essence.core.base.errors import ClassNotFoundError, LayerNotFoundError, SpecError


@pytest.fixture
def model() -> nn.Sequential:
    return tiny_cnn()


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(3, 10, 10, generator=torch.Generator().manual_seed(1))


def test_explanation_shapes_and_top_units(model, image) -> None:
    e = explain(model, image, "owl", layer="2", top_k=3, class_names=NAMES, device="cpu")
    assert isinstance(e, Explanation) and e.cls == 2 and e.vs is None and e.quantity == "logit[2]"
    assert e.influence.shape == (8,)
    assert e.unit_ids.shape == (3,) and e.saliency.shape == (3, 10, 10)
    assert e.overlays.shape == (3, 10, 10, 3) and e.overlays.dtype == np.uint8
    assert e.heatmaps.shape == (3, 10, 10, 3) and e.image.shape == (10, 10, 3)
    assert e.ig.shape == (3, 10, 10) and e.unit_gradients.shape == (3, 3, 10, 10)
    order = torch.argsort(e.influence, descending=True)
    assert torch.equal(e.unit_ids, order[:3]) and torch.equal(e.negative_ids, order.flip(0)[:3])
    torch.testing.assert_close(e.unit_influence, e.influence[e.unit_ids])
    torch.testing.assert_close(e.unit_gradients, unit_input_gradients(model, image, "2", e.unit_ids.tolist()))
    with torch.no_grad():
        logits = model(image[None])[0]
    assert e.prediction == int(logits.argmax())
    assert e.quantity_value == pytest.approx(float(logits[2]))
    torch.testing.assert_close(e.probabilities, torch.softmax(logits, 0))
    # the influence at the slice is the gradient of the class score with respect to the channel, summed over positions
    got = {}
    handle = model[2].register_forward_hook(
        lambda m, i, o: got.setdefault("z", o.detach().requires_grad_(True))
    )
    z = model[:3](image[None])
    handle.remove()
    z = z.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model[3:](z)[0, 2], z)
    torch.testing.assert_close(e.influence, g[0].sum((1, 2)), rtol=1e-5, atol=1e-6)
    js = e.to_json()
    assert js["class"] == "owl" and js["top_units"][0]["unit"] == int(e.unit_ids[0])
    assert abs(js["ig_completeness_error"]) < 0.05 * max(1.0, abs(js["ig_sum"]))


def test_comparative_influence_is_the_difference_of_the_class_influences(model, image) -> None:
    a = explain(model, image, 1, layer="6", top_k=2, device="cpu")
    b = explain(model, image, 3, layer="6", top_k=2, device="cpu")
    ab = explain(model, image, 1, vs=3, layer="6", top_k=2, device="cpu")
    assert ab.quantity == "logit[1]-logit[3]" and ab.vs == 3
    torch.testing.assert_close(ab.influence, a.influence - b.influence, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ab.ig.sum(), a.ig.sum() - b.ig.sum(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_methods_change_the_maps_not_the_influence(model, image, method) -> None:
    plain = explain(model, image, 0, layer="2", device="cpu")
    other = explain(model, image, 0, layer="2", method=method, device="cpu")
    torch.testing.assert_close(plain.influence, other.influence)
    assert not torch.allclose(plain.unit_gradients, other.unit_gradients)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_questions_are_clear_errors(model, image) -> None:
    with pytest.raises(ClassNotFoundError, match="unknown class 'zebra'.*cat"):
        explain(model, image, "zebra", layer="2", class_names=NAMES, device="cpu")
    with pytest.raises(ClassNotFoundError, match="out of range"):
        explain(model, image, 7, layer="2", device="cpu")
    with pytest.raises(ClassNotFoundError):
        explain(model, image, 0, vs="zebra", layer="2", class_names=NAMES, device="cpu")
    with pytest.raises(SpecError, match="same class"):
        explain(model, image, "dog", vs=1, layer="2", class_names=NAMES, device="cpu")
    with pytest.raises(LayerNotFoundError, match="conv9.*essence layers"):
        explain(model, image, 0, layer="conv9", device="cpu")
    with pytest.raises(LayerNotFoundError, match="above the input"):
        explain(model, image, 0, layer="", device="cpu")
    with pytest.raises(SpecError, match="one preprocessed image"):
        explain(model, image[None].repeat(2, 1, 1, 1), 0, layer="2", device="cpu")
    with pytest.raises(SpecError, match="top_k"):
        explain(model, image, 0, layer="2", top_k=0, device="cpu")


def test_model_state_is_restored(model, image) -> None:
    model.train()
    with pytest.warns(UserWarning, match="train mode"):
        explain(model, image, 0, layer="2", device="cpu")
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_the_package_name_explain_is_the_function_on_every_access() -> None:
    import essence.core
    import essence.core.analyses.explanation

    first = essence.core.explain
    from essence.core import explain as again

    assert first is explain and again is explain and essence.core.explain is explain
    assert essence.core.Explanation is Explanation
