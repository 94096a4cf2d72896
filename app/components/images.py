"""Images at a size a clinician can read: small inputs enlarged with nearest-neighbour sampling."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Display width in px: a 64×64 fundus becomes 256×256, each input pixel a visible 4×4 block.
READABLE = 256


def enlarge(image: np.ndarray, size: int = READABLE) -> np.ndarray:
    """uint8 ``[H, W, C]`` (or ``[H, W]``) → uint8 RGB ``[size, size·W/H, 3]`` with crisp pixels."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    img = Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if img.height >= size:
        return np.asarray(img)
    width = max(1, round(img.width * size / img.height))
    return np.asarray(img.resize((width, size), Image.Resampling.NEAREST))
