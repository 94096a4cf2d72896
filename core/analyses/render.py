"""The picture of an explanation: the input, its integrated-gradients map and each top unit's maps, as one PNG.

PIL draws it; nothing here computes influence (the numbers come from :func:`~essence.core.analyses.explanation.explain`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from essence.core.analyses.explanation import Explanation
from essence.core.analyses.interpret import overlay


def render_panel(expl: Explanation, tile: int = 160) -> Image.Image:
    """Draw an explanation: the input, the IG map, and each top unit's overlay (top row) and heat map (bottom row).

    Small inputs are enlarged with nearest-neighbour sampling so pixels stay visible.

    Args:
        expl: the explanation to draw (k top units).
        tile: side of each square tile in pixels.

    Returns:
        An RGB PIL image ``(2 + k) * tile`` wide and ``2 * (tile + 28) + 28`` high (28 px captions).
    """
    font = ImageFont.load_default()
    caption = 28
    cols = 2 + len(expl.unit_ids)
    panel = Image.new("RGB", (cols * tile, 2 * (tile + caption) + caption), "white")
    draw = ImageDraw.Draw(panel)
    draw.text(
        (4, 4),
        f"{expl.question} at {expl.layer}; predicted {expl.class_names[expl.prediction]!r}",
        fill="black",
        font=font,
    )

    def put(a: np.ndarray, col: int, row: int, text: str) -> None:
        img = Image.fromarray(a).resize((tile, tile), Image.Resampling.NEAREST)
        y = caption + row * (tile + caption)
        panel.paste(img, (col * tile, y))
        draw.text((col * tile + 3, y + tile + 2), text, fill="black", font=font)

    put(expl.image, 0, 0, "input (as the model sees it)")
    put(expl.ig_map, 1, 0, "integrated gradients")
    put(
        overlay(expl.image, np.abs(expl.ig.sum(0).numpy()) / max(float(expl.ig.sum(0).abs().max()), 1e-12)),
        1,
        1,
        "|IG| on image",
    )
    for i, (u, v) in enumerate(zip(expl.unit_ids.tolist(), expl.unit_influence.tolist(), strict=True)):
        put(expl.overlays[i], 2 + i, 0, f"unit {u}: {v:+.3g}")
        put(expl.heatmaps[i], 2 + i, 1, f"unit {u} ({expl.method})")
    return panel
