"""How well does each triage score find problems? ROC AUC, measured.

Two questions, each answered with the ROC AUC (scikit-learn) of every score:

1. **misclassified vs correct** — on the evaluation half of scikit-learn's digits (a small CNN trained on the
   other half inside this script, seeded) and on the demo's test split (``demo:blurred`` on ``demo:test``,
   when the demo's weights are present);
2. **label errors** — 10 % of the digits evaluation labels flipped at random to another class (seeded): the
   AUC for finding the flipped instances (their class profiles computed with the noisy labels, as in life).

Beside Essence's scores: 1 − softmax confidence, FiftyOne's mistakenness and cleanlab's self-confidence.

Run: ``.venv/bin/python benchmarks/bench_triage.py [--layers fc1 relu3 conv2] [--top-k 16]``.
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import nn

from essence.core.triage import SCORES, deviation_scores

SEED = 0


def digits_net() -> nn.Sequential:
    """A small CNN for 8×8 digits; ``relu3`` sits right below the linear head, ``fc1`` one layer lower."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(8, 16, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, 10),
        )
    )


def digits_split(seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits scaled to [0, 1], split in two halves at random (seeded): ``(x_train, y_train, x_eval, y_eval)``."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    half = len(y) // 2
    tr, ev = perm[:half], perm[half:]
    return x[tr], y[tr], x[ev], y[ev]


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300, seed: int = SEED
) -> nn.Module:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def flip_labels(
    y: torch.Tensor, fraction: float, classes: int, seed: int = SEED
) -> tuple[torch.Tensor, np.ndarray]:
    """Flip ``fraction`` of the labels to a different class at random; returns the new labels and the mask."""
    rng = np.random.default_rng(seed)
    n = len(y)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, size=int(round(fraction * n)), replace=False)] = True
    noisy = y.clone().numpy()
    shift = rng.integers(1, classes, size=n)
    noisy[flipped] = (noisy[flipped] + shift[flipped]) % classes
    return torch.from_numpy(noisy), flipped


def aucs(model: nn.Module, data: object, layer: str, target: np.ndarray | None, top_k: int | None) -> dict:
    t = deviation_scores(model, data, layer, top_k=top_k, device="cpu")
    truth = (t.predicted != t.labels) if target is None else target[t.indices]
    return {name: roc_auc_score(truth, t.scores[name]) for name in SCORES}, int(truth.sum()), len(truth)


def table(title: str, rows: dict[str, tuple[dict, int, int]]) -> None:
    print(f"\n{title}")
    head = f"{'case':34s}" + "".join(f"{s[:10]:>11s}" for s in SCORES)
    print(head)
    for case, (auc, pos, n) in rows.items():
        print(f"{case + f' ({pos}/{n})':34s}" + "".join(f"{auc[s]:11.3f}" for s in SCORES))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", nargs="+", default=["fc1", "relu3", "conv2"])
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    mis: dict = {}
    flips: dict = {}
    for seed in args.seeds:
        xt, yt, xe, ye = digits_split(seed)
        torch.manual_seed(seed)  # the initial weights too
        model = train(digits_net(), xt, yt, seed=seed)
        noisy, flipped = flip_labels(ye, 0.10, 10, seed=seed)
        for layer in args.layers:
            mis[f"digits s{seed} {layer}"] = aucs(model, (xe, ye), layer, None, args.top_k)
            flips[f"digits s{seed} {layer} 10% flipped"] = aucs(
                model, (xe, noisy), layer, flipped, args.top_k
            )
    demo = _demo(args.top_k)
    if demo:
        mis.update(demo)
    table("ROC AUC: misclassified vs correct", mis)
    table("ROC AUC: flipped labels vs clean", flips)
    for name, rows in (("misclassified", mis), ("flipped", flips)):
        mean = {s: np.mean([r[0][s] for r in rows.values()]) for s in SCORES}
        print(f"mean over {name:14s}" + " " * 10 + "".join(f"{mean[s]:11.3f}" for s in SCORES))
    print(f"\n{time.perf_counter() - start:.1f} s, torch threads {torch.get_num_threads()}")


def _demo(top_k: int | None) -> dict:
    try:
        from essence.core import load_dataset, load_model

        model = load_model("demo:blurred")
    except Exception as exc:  # the demo's weights are not built yet
        print(f"(demo skipped: {exc})")
        return {}
    data = load_dataset("demo:test", model.preprocessing, class_names=model.class_names)
    return {f"demo:blurred {model.default_layer}": aucs(model.module, data, model.default_layer, None, top_k)}


if __name__ == "__main__":
    main()
