"""Three small architectures built in code (no downloaded weights) and their short, seeded training.

Every model ends in a module named ``hidden`` whose output ``[B, 32]`` is what the linear ``head`` reads: the
benchmark's default slice (the last hidden layer, one meaning for all three).

- ``cnn``: two conv–ReLU–pool stages (16, 32 channels), a 2×2 adaptive pool, ``fc1`` 32, ReLU (``hidden``);
- ``resnet``: a conv stem and three BasicBlocks (16; 32 with stride 2; 32), global average pool, ``hidden``;
- ``vit``: a patch embedding (4×4 patches of the input, 32 dims, learned positions), two pre-norm
  ``nn.TransformerEncoderLayer`` blocks (4 heads), mean over tokens, LayerNorm (``hidden``).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

ARCHS = ("cnn", "resnet", "vit")
WIDTH = 32
# Adam steps per architecture at batch 64: each reaches 0.9+ review accuracy on clean digits in seconds on one
# CPU thread (the transformer needs more steps than the convolutions).
STEPS = {"cnn": 400, "resnet": 200, "vit": 600}
LEARNING_RATE = {"cnn": 3e-3, "resnet": 3e-3, "vit": 2e-3}


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 conv–BN stages and a skip (a 1×1 conv where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class Tokens(nn.Module):
    """Patch embedding: non-overlapping ``patch``×``patch`` patches → ``[B, T, D]`` with learned positions."""

    def __init__(self, channels: int, size: int, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, patch)
        self.position = nn.Parameter(torch.zeros(1, (size // patch) ** 2, dim))
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.position


class MeanTokens(nn.Module):
    """The mean over tokens ``[B, T, D]`` → ``[B, D]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def build(arch: str, channels: int, size: int, classes: int) -> nn.Module:
    """An untrained ``arch`` for ``channels``×``size``×``size`` inputs and ``classes`` outputs."""
    if arch == "cnn":
        return nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(channels, 16, 3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(16, 32, 3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                squeeze=nn.AdaptiveAvgPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(128, WIDTH),
                hidden=nn.ReLU(),
                head=nn.Linear(WIDTH, classes),
            )
        )
    if arch == "resnet":
        return nn.Sequential(
            OrderedDict(
                stem=nn.Sequential(
                    nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
                ),
                block1=BasicBlock(16, 16),
                block2=BasicBlock(16, WIDTH, stride=2),
                block3=BasicBlock(WIDTH, WIDTH),
                pool=nn.AdaptiveAvgPool2d(1),
                hidden=nn.Flatten(),
                head=nn.Linear(WIDTH, classes),
            )
        )
    if arch == "vit":
        patch = max(1, size // 4)

        def block() -> nn.Module:
            return nn.TransformerEncoderLayer(
                WIDTH, 4, dim_feedforward=2 * WIDTH, dropout=0.0, batch_first=True, norm_first=True
            )

        return nn.Sequential(
            OrderedDict(
                tokens=Tokens(channels, size, patch, WIDTH),
                block1=block(),
                block2=block(),
                pool=MeanTokens(),
                hidden=nn.LayerNorm(WIDTH),
                head=nn.Linear(WIDTH, classes),
            )
        )
    raise ValueError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")


def train(
    arch: str, x: torch.Tensor, y: torch.Tensor, classes: int, seed: int, steps: int | None = None
) -> nn.Module:
    """Train a fresh ``arch`` on preprocessed inputs ``x [N, C, H, W]`` and labels ``y [N]``; seeded.

    Args:
        arch: one of :data:`ARCHS`.
        x, y: the training set (already through the case's recipe).
        classes: outputs of the head.
        seed: seeds the initial weights and the batches.
        steps: Adam steps at batch 64 (default :data:`STEPS` of the architecture).

    Returns:
        The trained model, in eval mode.
    """
    torch.manual_seed(seed)
    model = build(arch, int(x.shape[1]), int(x.shape[-1]), classes)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE[arch])
    model.train()
    for _ in range(STEPS[arch] if steps is None else steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    """The model's argmax on ``x`` ``[N]``."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()
