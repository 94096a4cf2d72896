"""``essence triage`` and ``essence experts`` (``essence diagnose``: ``diagnose.py``): the recipe's analyses from the shell."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import typer

from essence.cli.common import Inputs, progress_bar
from essence.cli.exports import ExportOpt, check_export, write_triage_export
from essence.cli.options import (
    KIND,
    SCORE,
    BatchOpt,
    DeviceOpt,
    GranularityOpt,
    InputOptions,
    JsonOpt,
    NoCacheOpt,
    ShortcutMapsOpt,
    ShortcutsOpt,
    ShortcutTopOpt,
    StoreOpt,
    with_option_groups,
)
from essence.cli.output import write_json, write_text_file
from essence.cli.profile import compute_profiles, stored_activations
from essence.core.base.errors import SpecError

if TYPE_CHECKING:
    from pathlib import Path

    from essence.core.analyses.experts.evidence import ExpertEvidence
    from essence.core.analyses.experts.sweep import ExpertSweep
    from essence.core.analyses.profiles import ClassProfiles
    from essence.core.analyses.shortcuts import SharedEvidence
    from essence.core.analyses.triage import Triage

TopOpt = Annotated[int, typer.Option("--top", min=1, help="rows to print (--json holds every instance)")]
ScoreOpt = Annotated[
    str,
    SCORE.option(
        "ranking score: merged (default), reasoning, combined, spearman, kendall, cosine, mass, doubt, "
        "self_confidence or mistakenness"
    ),
]
InstanceKindOpt = Annotated[str, KIND.option("quantity of the instance vectors: prob or logit")]
ProfileKindOpt = Annotated[str, KIND.option("quantity of the class profiles: logit or prob")]
UnitsOpt = Annotated[int | None, typer.Option("--units", help="top units per class for the rank scores")]
ClassOpt = Annotated[str, typer.Option("--class", "-c", help="class name or index")]
AlphasOpt = Annotated[str | None, typer.Option("--alphas", help="positive units to keep, e.g. 1,2,4,8")]
BetasOpt = Annotated[str | None, typer.Option("--betas", help="negative units to keep, e.g. 0,1,2,4")]

MAX_UNITS = 2**31 - 1


def _ints(text: str | None, what: str) -> list[int] | None:
    """Parse ``"1,2,4"`` (or ``"1 2 4"``) into ints."""
    if text is None:
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [int(p) for p in parts]
    except ValueError as exc:
        raise SpecError(f"--{what} {text!r}: give whole numbers separated by commas, e.g. 1,2,4,8") from exc
    if any(abs(v) > MAX_UNITS for v in values):  # a count of units: beyond any layer (and torch's integers)
        raise SpecError(
            f"--{what} {text!r}: counts of units above {MAX_UNITS:,} are more than any layer has; give counts "
            "up to the layer's number of units, e.g. 1,2,4,8"
        )
    return values


def _fmt(x: float, spec: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def verdict_status(store: str | None, dataset_fingerprint: str) -> dict[int, str]:
    """The current review verdict of each reviewed instance, from the store (default: ``$ESSENCE_HOME``)."""
    from essence.storage import Store

    with Store.open(store) as opened:
        latest = opened.latest_verdicts(dataset_fingerprint)
    return {int(i): v.verdict for i, v in latest.items()}


def _profiles(
    inputs: Inputs,
    granularity: str,
    kind: str,
    batch_size: int,
    device: str,
    store: str | None,
    no_cache: bool,
    keep_instances: bool = False,
) -> ClassProfiles:
    """The class profiles an analysis starts from, read through the store (empty classes kept: NaN rows)."""
    return compute_profiles(
        inputs,
        granularity=granularity,
        kind=kind,  # type: ignore[arg-type]
        batch_size=batch_size,
        device=device,
        allow_empty=True,
        store=store,
        no_cache=no_cache,
        keep_instances=keep_instances,
    )


def _say_if_cached(profiles: ClassProfiles) -> None:
    # Said last, after the result, so that an error found later stays the only line on stderr.
    if profiles.cached:
        typer.echo(f"class profiles at {profiles.layer!r} served from the store", err=True)


def _print_triage(header: str, rows: list[dict]) -> None:
    """The head of the triage queue as a table: the model's confidence (max p) and doubt (1 − max p), the given
    label's probability and the reasoning score side by side, the misclassified's reading. Each column is the
    JSON key of the same name (``p(lab)``: ``label_probability``)."""
    typer.echo(header)
    typer.echo(
        f"  {'index':>6} {'label':>12} {'predicted':>12} {'conf':>5} {'doubt':>5} {'p(lab)':>6} {'reason':>6} "
        f"{'score':>6}  {'reading':9} verdict  why (unit:z)"
    )
    for row in rows:
        why = " ".join(f"{w['unit']}:{w['z']:+.1f}" for w in row["why"][:3])
        reasoning = "—" if not math.isfinite(row["reasoning"]) else f"{row['reasoning']:.2f}"
        typer.echo(
            f"  {row['index']:>6} {row['label_name'][:12]:>12} {row['predicted_name'][:12]:>12} "
            f"{row['confidence']:5.2f} {row['doubt']:5.2f} {row['label_probability']:6.2f} {reasoning:>6} "
            f"{row['deviation']:6.3f}  {(row['reading'] or '-'):9} {(row['verdict'] or '-'):7}  {why}"
        )


@with_option_groups
def triage(
    inputs: InputOptions,
    top: TopOpt = 20,
    score: ScoreOpt = "merged",
    kind: InstanceKindOpt = "prob",
    units: UnitsOpt = None,
    granularity: GranularityOpt = "channel",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    json_path: JsonOpt = None,
    store: StoreOpt = None,
    no_cache: NoCacheOpt = False,
    export: ExportOpt = None,
    shortcuts: ShortcutsOpt = False,
    shortcut_top: ShortcutTopOpt = 50,
    shortcut_maps: ShortcutMapsOpt = None,
) -> None:
    """Instances ranked for review: the doubtful and those right for unusual reasons first, with why."""
    from essence.core.analyses.triage import deviation_scores

    check_export(export, per_instance=True)
    if shortcut_maps is not None and shortcut_maps.exists() and not shortcut_maps.is_dir():
        raise SpecError(f"--shortcut-maps {shortcut_maps} is a file: name a folder (made if missing)")
    loaded = inputs.load(batch_size=batch_size)
    profiles = _profiles(loaded, granularity, kind, batch_size, device, store, no_cache, keep_instances=True)
    with progress_bar("unit contributions") as bar:
        result = deviation_scores(
            loaded.model.module,
            loaded.data,
            loaded.layer,
            profiles=profiles,
            kind=kind,  # type: ignore[arg-type]
            granularity=granularity,  # type: ignore[arg-type]
            top_k=units,
            score=score,  # type: ignore[arg-type]
            batch_size=batch_size,
            device=device,
            progress=bar,
        )
    verdicts = verdict_status(store, loaded.data.fingerprint)
    rows = result.rows()  # every ranked instance goes to the JSON; --top limits what is printed
    for row in rows:
        row["verdict"] = verdicts.get(row["index"])
    wrong = int((result.predicted != result.labels).sum())
    header = (
        f"triage at {result.layer!r} by {result.score} ({result.quantity}): {len(result)} instances, "
        f"{wrong} misclassified; top {min(top, len(rows))}:"
    )
    _print_triage(header, rows[:top])
    out = result.to_json(top=0)
    out["scores"] = rows
    if shortcuts or shortcut_maps is not None:
        out["shortcuts"] = _shortcuts(loaded, result, granularity, device, shortcut_top, shortcut_maps)
    write_json(json_path, out, loaded.data.preprocessing, loaded.classes)
    write_triage_export(export, result, loaded.data, verdicts)
    _say_if_cached(profiles)


def _shortcuts(
    loaded: Inputs, result: Triage, granularity: str, device: str, top: int, maps: Path | None
) -> list[dict]:
    """The flagged images that share why-flagged units, one sentence each (printed), as the JSON's
    ``shortcuts`` entries; with ``--shortcut-maps`` each group's aggregated saliency written as a PNG."""
    from essence.core.analyses.shortcuts import shared_evidence
    from essence.core.base.devices import resolve_device
    from essence.core.base.model_state import on_device

    model = loaded.model.module
    with on_device(model, resolve_device(device)):
        found = shared_evidence(model, loaded.data, result, granularity=granularity, top=top)  # type: ignore[arg-type]
    searched = min(top, len(result))
    if not found:
        typer.echo(
            f"shortcuts: no flagged images among the first {searched} share why-flagged units more often than "
            "chance allows"
        )
    else:
        typer.echo(f"shortcuts: {len(found)} group(s) among the first {searched} flagged images:")
    entries = []
    for n, group in enumerate(found, 1):
        typer.echo(f"  {group.sentence}")
        entry = group.to_json()
        if maps is not None:
            entry["map"] = str(_write_map(loaded, group, maps / f"shortcut-{n}-class-{group.cls}.png"))
        entries.append(entry)
    if maps is not None and found:
        typer.echo(f"wrote {len(found)} map(s) of shared evidence to {maps}")
    return entries


def _write_map(loaded: Inputs, group: SharedEvidence, path: Path) -> Path:
    """The group's aggregated saliency over its first image, region outlined, beside it as a heat map (PNG)."""
    import io

    from PIL import Image

    from essence.core.analyses.interpret import display_image
    from essence.core.analyses.shortcuts import evidence_image

    recipe = loaded.data.preprocessing
    x = loaded.data.tensors([int(group.indices[0])])[0]
    picture = Image.fromarray(evidence_image(group, display_image(x, recipe.mean, recipe.std)))
    scale = max(1, -(-160 // picture.height))  # at least 160 px high, each input pixel a crisp block
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    png = io.BytesIO()
    picture.save(png, format="PNG")
    write_text_file(path, png.getvalue(), "--shortcut-maps")  # atomic; the folder is made if missing
    return path


@with_option_groups
def experts(
    inputs: InputOptions,
    cls: ClassOpt,
    alphas: AlphasOpt = None,
    betas: BetasOpt = None,
    kind: ProfileKindOpt = "logit",
    granularity: GranularityOpt = "channel",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 256,
    json_path: JsonOpt = None,
    store: StoreOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Expert masks of one class over an α×β grid (paper Fig. 5), the activation-ranked control, and the
    honest test (cross-fitted, against the control and random masks)."""
    from essence.core.analyses.experts.evidence import expert_evidence
    from essence.core.analyses.experts.sweep import cache_slice, expert_sweep

    loaded = inputs.load(batch_size=batch_size)
    m, d, lay = loaded.model.module, loaded.data, loaded.layer
    d.class_index(cls)  # fail early on an unknown class, before any pass
    a, b = _ints(alphas, "alphas"), _ints(betas, "betas")
    profiles = _profiles(loaded, granularity, kind, batch_size, device, store, no_cache)
    source = stored_activations(loaded, store, no_cache)  # the slice's z from the store where it holds it
    cache = cache_slice(m, d, lay, batch_size=batch_size, device=device, activations=source)
    common = dict(profiles=profiles, alphas=a, betas=b, granularity=granularity, cache=cache)
    sweep = expert_sweep(m, d, lay, cls, rank_by="influence", **common)  # type: ignore[arg-type]
    control = expert_sweep(m, d, lay, cls, rank_by="activation", **common)  # type: ignore[arg-type]
    _print_sweep(sweep, control, lay)
    evidence = expert_evidence(
        m, d, lay, d.class_index(cls), cache=cache, alphas=a, betas=b, kind=kind,  # type: ignore[arg-type]
        granularity=granularity, batch_size=batch_size, device=device,  # type: ignore[arg-type]
    )  # fmt: skip
    _print_honest(evidence)
    out = sweep.to_json()
    out["honest"] = evidence.to_json()
    out["activation_control"] = {
        k: out_c
        for k, out_c in control.to_json().items()
        if k in ("alphas", "betas", "recall", "precision", "predicted", "best")
    }
    write_json(json_path, out, loaded.data.preprocessing, loaded.classes)
    _say_if_cached(profiles)


def _print_sweep(sweep: ExpertSweep, control: ExpertSweep, layer: str) -> None:
    """The model's baseline, the grid of masks, the best expert and the activation-ranked control."""
    base = sweep.baseline
    typer.echo(
        f"experts for {sweep.class_name!r} at {layer!r} ({sweep.num_units} units, g on the "
        f"{'cut graph' if sweep.route == 'fx' else 're-run model'}): n={sweep.count}; model recall "
        f"{_fmt(base['recall'])} precision {_fmt(base['precision'])} (binary reading: recall "
        f"{_fmt(base['binary']['recall'])} precision {_fmt(base['binary']['precision'])})"
    )
    _grid(sweep)
    best = sweep.best()
    typer.echo(
        "best expert: "
        + (
            f"α={best['alpha']} β={best['beta']} recall {best['recall']:.2f} precision {best['precision']:.2f}"
            if best
            else "none in the grid"
        )
    )
    typer.echo(
        f"activation-ranked control: best recall {control.recall.max():.2f}, "
        f"expert {'found' if control.best() else 'none'}"
    )


def _print_honest(evidence: ExpertEvidence) -> None:
    """The cross-fitted test's verdict: an expert that beats every reference, or none."""
    honest = evidence.best
    typer.echo(
        f"honest test (cross-fitted; must beat the model, the control and {len(evidence.random)} random masks "
        f"of each size by {evidence.gain:.2f} recall): "
        + (
            f"expert α={honest['alpha']} β={honest['beta']} recall {honest['recall']:.2f} precision "
            f"{honest['precision']:.2f} (best reference {honest['reference_recall']:.2f})"
            if honest
            else "no expert"
        )
    )


def _grid(sweep: ExpertSweep) -> None:
    """Print recall/precision per (α, β) cell."""
    head = "    α\\β " + "".join(f"{int(b):>11}" for b in sweep.betas)
    typer.echo("recall / precision of each mask (binary reading):")
    typer.echo(head)
    for ai, a in enumerate(sweep.alphas):
        cells = "".join(
            f"  {sweep.recall[ai, bi]:4.2f}/{_fmt(float(sweep.precision[ai, bi]))[:4]:>4}"
            for bi in range(len(sweep.betas))
        )
        typer.echo(f"  {int(a):>5} {cells}")


def register(app: typer.Typer) -> None:
    """Add ``triage``, ``experts`` and ``diagnose`` to the root app."""
    app.command("triage")(triage)
    app.command("experts")(experts)
    from essence.cli.diagnose import diagnose

    app.command("diagnose")(diagnose)
