"""How well does each triage score find each kind of problem? ROC AUC on planted cases, measured.

On scikit-learn's digits (real images no one here made), per seed: a small CNN is trained on a random half in
which a **shortcut mark** (a 2×2 block at full intensity in the top-left corner, where digits are blank) is
added to ``--train-marked`` of one class's images (digit 3). The other half is the review set, with three
kinds of problem planted or found in it:

- **shortcut**: 10 % of its class-3 images carry the mark. The model predicts them right, and confidently —
  for a reason unlike its class's;
- **flipped**: 10 % of the other images get a random wrong label (the profiles use the noisy labels, as in life);
- **misclassified**: the remaining images the model gets wrong (genuine model errors, labels clean).

For each kind, the ROC AUC of every score at separating that kind from the clean, correctly predicted images
(higher = the kind ranks more suspect); beside Essence's ``reasoning`` and ``merged``: cleanlab's
self-confidence (1 − p_label) and normalised margin (max_{k≠y} p_k − p_label), doubt (1 − max p), FiftyOne's
mistakenness, and the older influence deviation ``cosine``. Also: how many of each kind the first 10 % of each
queue holds, and, for the misclassified read through the profiles, whether the reading separates label errors
(flipped) from model errors.

Run: ``.venv/bin/python benchmarks/bench_triage.py [--seeds 0 1 2] [--slices fc1:channel relu2:channel
pool1:neuron]`` (about two minutes on 2 CPU threads).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import nn

from essence.core.analyses.triage import Triage, deviation_scores

SEED = 0
SHORTCUT_CLASS = 3
KINDS = ("shortcut", "flipped", "misclassified")
SHOWN = ("reasoning", "merged", "self_confidence", "margin", "doubt", "mistakenness", "cosine")


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


def add_mark(x: torch.Tensor) -> torch.Tensor:
    """The shortcut: a 2×2 block at full intensity in the top-left corner (blank in every digit)."""
    x = x.clone()
    x[:, 0, 0:2, 0:2] = 1.0
    return x


def planted(seed: int, train_marked: float, steps: int = 300) -> dict:
    """Train on a half with the mark on part of one class; return the model and the review set's truth."""
    rng = np.random.default_rng(seed)
    xt, yt, xe, ye = digits_split(seed)
    cls_train = np.flatnonzero(yt.numpy() == SHORTCUT_CLASS)
    marked_train = rng.choice(cls_train, size=int(round(train_marked * len(cls_train))), replace=False)
    xt = xt.clone()
    xt[marked_train] = add_mark(xt[marked_train])
    torch.manual_seed(seed)  # the initial weights too
    model = train(digits_net(), xt, yt, steps=steps, seed=seed)
    n = len(ye)
    cls_eval = np.flatnonzero(ye.numpy() == SHORTCUT_CLASS)
    shortcut = np.zeros(n, dtype=bool)
    shortcut[rng.choice(cls_eval, size=max(2, len(cls_eval) // 10), replace=False)] = True
    xe = xe.clone()
    xe[shortcut] = add_mark(xe[shortcut])
    others = np.flatnonzero(~shortcut)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(others, size=len(others) // 10, replace=False)] = True
    noisy = ye.clone().numpy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, 10, size=int(flipped.sum()))) % 10
    with torch.no_grad():
        predicted = model(xe).argmax(1).numpy()
        clean_others = np.flatnonzero(ye.numpy() != SHORTCUT_CLASS)
        follows_mark = float((model(add_mark(xe[clean_others])).argmax(1).numpy() == SHORTCUT_CLASS).mean())
    wrong = (predicted != ye.numpy()) & ~shortcut & ~flipped
    return {
        "model": model,
        "data": (xe, torch.from_numpy(noisy)),
        "kinds": {"shortcut": shortcut, "flipped": flipped, "misclassified": wrong},
        "follows_mark": follows_mark,
    }


def all_scores(t: Triage) -> dict[str, np.ndarray]:
    """The triage's own scores and cleanlab's normalised margin, by name ``[N]`` each (higher = more suspect)."""
    rows = np.arange(len(t))
    others = t.probabilities.copy()
    others[rows, t.labels] = -np.inf
    return {**t.scores, "margin": others.max(1) - t.probabilities[rows, t.labels]}


def measure(case: dict, layer: str, granularity: str) -> dict:
    t = deviation_scores(case["model"], case["data"], layer, granularity=granularity, device="cpu")  # type: ignore[arg-type]
    kinds = {k: v[t.indices] for k, v in case["kinds"].items()}
    clean = ~(kinds["shortcut"] | kinds["flipped"] | kinds["misclassified"])
    scores = all_scores(t)
    auc = {
        kind: {
            s: roc_auc_score(
                np.r_[np.ones(m.sum()), np.zeros(clean.sum())], np.r_[scores[s][m], scores[s][clean]]
            )
            for s in SHOWN
        }
        for kind, m in ((k, kinds[k]) for k in KINDS)
    }
    auc = {kind: {s: float(v) for s, v in row.items()} for kind, row in auc.items()}
    top = len(t) // 10
    found = {
        s: {
            k: int(kinds[k][np.argsort(-np.nan_to_num(scores[s], nan=-np.inf), kind="stable")[:top]].sum())
            for k in KINDS
        }
        for s in SHOWN
    }
    wrong = t.predicted != t.labels
    label_error = kinds["flipped"][wrong]
    lean = (t.reasoning.score - t.reasoning.to_predicted)[wrong]  # > 0: nearer the predicted class's reasons
    ok = np.isfinite(lean)
    reading = {
        k: {
            str(a): int(b)
            for a, b in zip(*np.unique(t.reasoning.reading[wrong][m], return_counts=True), strict=True)
        }
        for k, m in (("flipped", label_error), ("model error", ~label_error))
    }
    separation = (
        float(roc_auc_score(label_error[ok], lean[ok]))
        if 0 < label_error[ok].sum() < ok.sum()
        else float("nan")
    )
    return {
        "auc": auc,
        "found": found,
        "top": top,
        "counts": {k: int(kinds[k].sum()) for k in KINDS},
        "separation": separation,
        "reading": reading,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--slices", nargs="+", default=["fc1:channel", "relu2:channel", "pool1:neuron"])
    parser.add_argument(
        "--train-marked", type=float, default=0.6, help="share of class 3's training images marked"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    results: dict[str, dict] = {}
    for seed in args.seeds:
        case = planted(seed, args.train_marked)
        print(
            f"seed {seed}: the marked clean images of other classes are predicted '3' "
            f"{case['follows_mark']:.0%} of the time (the shortcut was learned)"
        )
        for spec in args.slices:
            layer, _, gran = spec.partition(":")
            results[f"s{seed} {layer} ({gran or 'channel'})"] = measure(case, layer, gran or "channel")
    for kind in KINDS:
        print(f"\nROC AUC: {kind} vs clean and correct")
        print(f"{'case':28s}" + "".join(f"{s[:11]:>12s}" for s in SHOWN))
        for name, r in results.items():
            print(
                f"{name + ' (' + str(r['counts'][kind]) + ')':28s}"
                + "".join(f"{r['auc'][kind][s]:12.3f}" for s in SHOWN)
            )
        mean = {s: np.mean([r["auc"][kind][s] for r in results.values()]) for s in SHOWN}
        print(f"{'mean':28s}" + "".join(f"{mean[s]:12.3f}" for s in SHOWN))
    print(
        "\nFound in the first 10 % of each queue (summed over cases): shortcut / flipped / misclassified of all"
    )
    total = {k: sum(r["counts"][k] for r in results.values()) for k in KINDS}
    for s in SHOWN:
        got = {k: sum(r["found"][s][k] for r in results.values()) for k in KINDS}
        print(f"  {s:16s} " + "  ".join(f"{k} {got[k]}/{total[k]}" for k in KINDS))
    print(
        "\nMisclassified read through the profiles: AUC of (reasoning − reasoning_predicted) for label error vs"
        " model error, and the readings"
    )
    for name, r in results.items():
        print(
            f"  {name:28s} AUC {r['separation']:.3f}  flipped {r['reading']['flipped']}  "
            f"model error {r['reading']['model error']}"
        )
    print(
        f"\n{time.perf_counter() - start:.1f} s, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}"
    )


if __name__ == "__main__":
    main()
