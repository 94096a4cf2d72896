"""The demo's small CNN: three conv blocks, then the bottom-most fully connected layer ``fc1`` (the slice)."""

from __future__ import annotations

from torch import Tensor, nn

DEFAULT_LAYER = "fc1"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """conv 3×3 → batch norm → ReLU → 2×2 max-pool (max keeps a one-pixel lesion's response)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class DemoCNN(nn.Module):
    """A small classifier of 64×64 RGB fundus images.

    Module paths (``model.named_modules()``): ``block1``..``block3`` (conv-bn-relu-pool), ``flatten``, ``fc1``
    (the paper's slice: the bottom-most fully connected layer), ``relu_fc``, ``dropout``, ``classifier``.

    Args:
        num_classes: number of outputs.
        size: input side in pixels (a multiple of 8).
        width: channels of the first block (doubled per block).
        hidden: units of ``fc1``.
    """

    def __init__(self, num_classes: int = 5, size: int = 64, width: int = 8, hidden: int = 64) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"input size must be a multiple of 8, got {size}")
        self.block1 = _block(3, width)
        self.block2 = _block(width, 2 * width)
        self.block3 = _block(2 * width, 4 * width)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * width * (size // 8) ** 2, hidden)
        self.relu_fc = nn.ReLU()  # not in-place: a hook on fc1 must see its output unchanged
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` of images ``[N, 3, size, size]``."""
        z = self.flatten(self.block3(self.block2(self.block1(x))))
        return self.classifier(self.dropout(self.relu_fc(self.fc1(z))))
