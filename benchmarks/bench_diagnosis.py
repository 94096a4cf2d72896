"""How often the diagnosis names the planted cause, on scikit-learn's digits, over seeds and classes.

For each seed s a small CNN (conv 8 → pool → ``fc1`` 32 → ReLU → linear head) is trained 200 Adam steps on
digits 0..899 (the seed also shuffles the batches and initialises the weights); the other 897 are diagnosed
at ``fc1``. Four planted cases per seed, each on a different class:

- **ok**: the trained model, every class (10 verdicts per seed);
- **drowning experts**: class s's output bias lowered just below the point where any image is predicted as it;
- **not read out**: class (s + 5) mod 10's read-out row zeroed and its bias set far below the others;
- **not learned**: a seeded quarter of class (s + 1) mod 10 relabelled as an 11th class (a model with 11
  outputs trained on those labels): nothing in an image tells the two apart.

Plus the preprocessing audit on digits for a class pair per seed: a resize to 1×1 (which keeps only each
image's mean brightness) and a 4×4 resize followed by a σ = 0.5 px blur (lossy steps that keep the digits
legible). The audit row counts pairs where the 1×1 resize is named and the mild steps are not; a pair whose
mean brightness alone still separates it (survival ≥ ½) is rightly not named, so the row is not an accuracy.

Run: ``.venv/bin/python benchmarks/bench_diagnosis.py [seeds]`` (default 3).
"""

from __future__ import annotations

import copy
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from essence.core.analyses.diagnosis.suspect_steps import audit_steps
from essence.core.analyses.diagnosis.verdict import DROWNING, NOT_LEARNED, NOT_READ_OUT, OK, diagnose
from essence.core.inputs.data import ImageData
from essence.core.inputs.preprocessing import Preprocessing

TRAIN = 900


def fit(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(128, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, classes),
        )
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        idx = torch.randint(0, TRAIN, (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def data(images: np.ndarray, labels: np.ndarray, names: list[str], **recipe: object) -> ImageData:
    pre = Preprocessing(mode="L", mean=(0.0,), std=(1.0,), scale=16.0, **recipe)  # type: ignore[arg-type]
    return ImageData("digits", labels, names, pre, "bench", arrays=images.astype(np.float32))


def main(seeds: int) -> None:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    names = [str(i) for i in range(10)]
    held = data(d.images[TRAIN:], d.target[TRAIN:], names)
    hits: dict[str, list[bool]] = {OK: [], DROWNING: [], NOT_READ_OUT: [], NOT_LEARNED: [], "audit": []}
    for s in range(seeds):
        start = time.perf_counter()
        model = fit(x, torch.tensor(d.target), 10, s)
        verdicts = [c.diagnosis for c in diagnose(model, held, "fc1", device="cpu").classes]
        hits[OK] += [v == OK for v in verdicts]
        drowned, cls = copy.deepcopy(model), s % 10
        with torch.no_grad():
            out = drowned(x[TRAIN:])
            others = out.clone()
            others[:, cls] = -torch.inf
            drowned.fc2.bias[cls] -= (out[:, cls] - others.max(1).values).max() + 0.5
        c = diagnose(drowned, held, "fc1", device="cpu").classes[cls]
        hits[DROWNING].append(c.diagnosis == DROWNING)
        print(f"seed {s} drowning {cls}: {c.diagnosis} — {c.advice[:160]}")
        unread, cls = copy.deepcopy(model), (s + 5) % 10
        with torch.no_grad():
            unread.fc2.weight[cls] = 0
            unread.fc2.bias[cls] = unread.fc2.bias.min() - 20
        c = diagnose(unread, held, "fc1", device="cpu").classes[cls]
        hits[NOT_READ_OUT].append(c.diagnosis == NOT_READ_OUT)
        print(
            f"seed {s} not read out {cls}: {c.diagnosis} (probe {c.probe.auc:.3f} > {c.probe.threshold:.3f})"
        )
        labels, cls = d.target.copy(), (s + 1) % 10
        members = np.flatnonzero(labels == cls)
        labels[np.random.default_rng(s).choice(members, size=len(members) // 4, replace=False)] = 10
        split = fit(x, torch.tensor(labels), 11, s)
        c = diagnose(
            split, data(d.images[TRAIN:], labels[TRAIN:], [*names, f"{cls}b"]), "fc1", device="cpu"
        ).classes[10]
        hits[NOT_LEARNED].append(c.diagnosis == NOT_LEARNED)
        print(
            f"seed {s} not learned {cls}b: {c.diagnosis} (predicted {c.predicted_count}/{c.count}, "
            f"probe {c.probe.auc:.3f} vs {c.probe.threshold:.3f})"
        )
        i, j = (s + 2) % 10, (s + 7) % 10
        erased = audit_steps(data(d.images, d.target, names, size=(1, 1)), i, j)
        kept = audit_steps(data(d.images, d.target, names, size=(4, 4), blur_sigma=0.5), i, j)
        ok = [t.step for t in erased.suspects] == ["resize to 1×1"] and not kept.suspects
        hits["audit"].append(ok)
        print(
            f"seed {s} audit {i} vs {j}: 1×1 survival {erased.steps[0].survival:.2f}, "
            f"4×4+blur survival {[round(t.survival, 2) for t in kept.steps]} -> {ok}"
            f"  ({time.perf_counter() - start:.0f} s)"
        )
    print("\ncase                verdicts right")
    for case, h in hits.items():
        print(f"{case:<18} {sum(h):>3} / {len(h)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
