"""A follow-up question at a stored slice against the physical reference R and against the first question.

In one run, on the same data — torchvision resnet18 (random weights, 10 classes, batch norm statistics made
non-trivial), slice ``layer3``, channel granularity, 64 px, N = 512 images, batch 64, 2 CPU threads:

* **R** — the physical reference, written here by hand: one forward through the whole model and one backward
  through the layers above the slice only (z detached at the slice), per-class sums of ∂logit[y]/∂z, on the
  preprocessed tensors (no store, no data reading);
* **first** — the first question, end to end, as the CLI and the app ask it: open the store, class profiles
  of the logits through ``Store.cached_profiles`` (a miss: the data is read and preprocessed, the whole model
  runs, z is written to the store batch by batch), the profiles written, the store closed;
* **follow-up** — the next question, end to end, the same way: class profiles of another quantity (the
  softmax probability) — open the store, find the stored z (memory-mapped; the graph cut and checked against
  the stored outputs), g forward and backward only, the profiles written, the store closed;
* **follow-up (comparative)** — ``influence`` of a comparative quantity (class 1 rather than 2 over the
  whole dataset) with ``activations=store.slice_source(model, data)``: the Python API route;
* **follow-up, g at batch 64** — the follow-up with g's batch held at 64 (``ELEMENTS_PER_PASS`` = 0), to show
  how much of the gain is the larger batches g can take (the rest is not running h);
* **content check** — the part of every follow-up that proves the stored slice is byte for byte what was
  written: its manifest checked and the SHA-256 of each file streamed over the whole file (page cache warm, as
  in the follow-ups); its ratio to the follow-up is what the check costs against the pass through h it saves.

Routes are rotated within each round; each route's median over the rounds is reported, with its ratio to R and
to the first question. The first question's stored slice is removed before each of its runs (untimed), and
every profile is recomputed (``refresh``), so no answer is served from the store. Targets (DESIGN §7): the
follow-up ≤ 0.4 × R and ≤ 0.5 × the first question. The follow-ups' profiles are checked against a fresh
computation without the store.

Run: ``.venv/bin/python benchmarks/bench_followup.py [--images N] [--size PX] [--rounds R] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_profiles import CLASSES, LAYER, build_model, reference  # noqa: E402

from essence.core.analyses.profiles import class_profiles  # noqa: E402
from essence.core.engine import activation_source as slice_source  # noqa: E402
from essence.core.engine.distributions import WholeDataset  # noqa: E402
from essence.core.engine.influence import influence  # noqa: E402
from essence.core.engine.quantities import Comparative  # noqa: E402
from essence.core.inputs.data import ImageData, hash_arrays  # noqa: E402
from essence.core.inputs.model_fingerprints import model_fingerprint  # noqa: E402
from essence.core.inputs.models import LoadedModel  # noqa: E402
from essence.core.inputs.preprocessing import Preprocessing  # noqa: E402
from essence.storage import Store  # noqa: E402


def make_inputs(n: int, size: int) -> tuple[LoadedModel, ImageData]:
    module = build_model()
    model = LoadedModel(module, "bench:resnet18", model_fingerprint(module, "bench:resnet18"))
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % CLASSES
    names = [f"c{k}" for k in range(CLASSES)]
    data = ImageData(
        "bench:images", labels, names, Preprocessing(), hash_arrays(images, labels), arrays=images
    )
    return model, data


def ask(store_path: Path, model: LoadedModel, data: ImageData, kind: str, batch: int) -> object:
    """One question end to end through the store, recomputed (never served from the store's profiles)."""

    with Store.open(store_path) as store:
        source = store.slice_source(model, data)

        def compute() -> object:
            return class_profiles(
                model.module,
                data,
                LAYER,
                kind=kind,  # type: ignore[arg-type]
                batch_size=batch,
                device="cpu",
                activations=source,
            )

        return store.cached_profiles(
            model, data, LAYER, "channel", kind, compute, refresh=True, activations=source
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, data = make_inputs(args.images, args.size)
    x = data.tensors(np.arange(len(data)))
    y = torch.from_numpy(data.labels).long()
    folder = Path(tempfile.mkdtemp(prefix="bench-followup-"))
    store_path = folder / "essence.sqlite"

    def drop_slices() -> None:
        with Store.open(store_path) as store:
            store.prune(slices=True)

    def has_slice() -> bool:
        with Store.open(store_path) as store:
            return store.info().slices > 0

    def comparative() -> object:
        with Store.open(store_path) as store:
            return influence(
                model.module,
                data,
                LAYER,
                Comparative(1, 2),
                WholeDataset(),
                batch_size=args.batch,
                device="cpu",
                activations=store.slice_source(model, data),
            )

    def at_batch() -> object:
        keep = slice_source.ELEMENTS_PER_PASS
        slice_source.ELEMENTS_PER_PASS = 0
        try:
            return ask(store_path, model, data, "prob", args.batch)
        finally:
            slice_source.ELEMENTS_PER_PASS = keep

    def content_check() -> object:
        from essence.storage.activation_manifest import SliceKey, check_file, checked_manifest

        with Store.open(store_path) as store:
            key = SliceKey.of(model, data, LAYER)
            slice_folder = store.slice_files.folder(key)
            manifest = checked_manifest(slice_folder, key)
            for name, facts in manifest["files"].items():
                check_file(slice_folder / name, facts)
        return manifest

    routes: dict[str, Callable[[], object]] = {
        "R": lambda: reference(model.module, x, y, args.batch),
        "first": lambda: ask(store_path, model, data, "logit", args.batch),
        "follow-up": lambda: ask(store_path, model, data, "prob", args.batch),
        "follow-up (comparative)": comparative,
        "follow-up, g at batch 64": at_batch,
        "content check": content_check,
    }
    prepare: dict[str, Callable[[], None]] = {
        "first": drop_slices,
        "follow-up": lambda: None if has_slice() else ask(store_path, model, data, "logit", args.batch),
        "follow-up (comparative)": lambda: (
            None if has_slice() else ask(store_path, model, data, "logit", args.batch)
        ),
        "follow-up, g at batch 64": lambda: (
            None if has_slice() else ask(store_path, model, data, "logit", args.batch)
        ),
        "content check": lambda: None if has_slice() else ask(store_path, model, data, "logit", args.batch),
    }
    for p in model.module.parameters():
        p.requires_grad_(False)
    names = list(routes)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    start_all = time.perf_counter()
    for n in names:  # warm-up: allocator, kernels, the store's schema
        prepare.get(n, lambda: None)()
        routes[n]()
    for r in range(args.rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            prepare.get(n, lambda: None)()
            t0, c0 = time.perf_counter(), time.process_time()
            routes[n]()
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    med = {n: statistics.median(times[n]) for n in names}
    med_cpu = {n: statistics.median(cpu[n]) for n in names}

    # The follow-ups' answers against a fresh computation without the store.
    fresh = class_profiles(model.module, data, LAYER, kind="prob", batch_size=args.batch, device="cpu")
    follow = ask(store_path, model, data, "prob", args.batch)
    gap = float((follow.mean - fresh.mean).abs().max() / fresh.mean.abs().max())  # type: ignore[attr-defined]
    fresh_c = influence(
        model.module, data, LAYER, Comparative(1, 2), WholeDataset(), batch_size=args.batch, device="cpu"
    )
    gap_c = float((comparative().mean - fresh_c.mean).abs().max() / fresh_c.mean.abs().max())  # type: ignore[attr-defined]
    with Store.open(store_path) as store:
        info = store.info()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": args.threads,
        "images": args.images,
        "size": args.size,
        "batch": args.batch,
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
        "seconds": med,
        "cpu_seconds": med_cpu,
        "all_seconds": times,
        "ratio_to_R": {n: med[n] / med["R"] for n in names},
        "ratio_to_first": {n: med[n] / med["first"] for n in names},
        "cpu_ratio_to_R": {n: med_cpu[n] / med_cpu["R"] for n in names},
        "max_relative_difference": {"follow-up": gap, "follow-up (comparative)": gap_c},
        "stored_slice_bytes": info.slice_bytes,
        "run_seconds": time.perf_counter() - start_all,
    }
    print(f"{'route':<26}{'median s':>10}{'÷ R':>8}{'÷ first':>9}{'CPU ÷ R':>9}")
    for n in names:
        print(
            f"{n:<26}{med[n]:>10.3f}{med[n] / med['R']:>8.2f}{med[n] / med['first']:>9.2f}"
            f"{med_cpu[n] / med_cpu['R']:>9.2f}"
        )
    print(
        f"stored z: {info.slice_bytes / 2**20:.1f} MiB; follow-up vs fresh: max rel. difference {gap:.1e}, {gap_c:.1e}"
    )
    print(f"content check: {med['content check'] / med['follow-up']:.1%} of the follow-up")
    print(f"load average {os.getloadavg()[0]:.1f}; whole run {result['run_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
