"""The explanation panel: its layout and that the tiles are drawn."""

from __future__ import annotations

import numpy as np
import torch
from tiny_models import tiny_cnn

from essence.core.analyses.explanation import explain
from essence.core.analyses.render import render_panel


def test_panel() -> None:
    model, image = tiny_cnn(), torch.randn(3, 10, 10, generator=torch.Generator().manual_seed(1))
    e = explain(model, image, 0, vs=1, layer="2", top_k=2, device="cpu")
    panel = render_panel(e, tile=64)
    assert panel.size == (4 * 64, 2 * (64 + 28) + 28)
    px = np.asarray(panel)
    assert px[28:92, :64].std() > 0  # the input tile is drawn
