"""``essence diagnose``: each class's verdict with its evidence and remedy, from the shell (docs/analyses.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from essence.cli.analyses import _fmt, _profiles, _say_if_cached
from essence.cli.common import Inputs, progress_bar
from essence.cli.exports import ExportOpt, check_export, write_diagnosis_export
from essence.cli.options import (
    BatchOpt,
    DeviceOpt,
    GranularityOpt,
    InputOptions,
    JsonOpt,
    NoCacheOpt,
    StoreOpt,
    TrainDataOpt,
    with_option_groups,
)
from essence.cli.output import write_json
from essence.cli.profile import stored_activations
from essence.core.base.errors import SpecError

if TYPE_CHECKING:
    from essence.core.analyses.diagnosis.results import ClassDiagnosis, Diagnosis
    from essence.core.inputs.data import ImageData

RareShareOpt = Annotated[
    float, typer.Option("--rare-share", help="rarely predicted: predictions < share × count")
]


@with_option_groups
def diagnose(
    inputs: InputOptions,
    rare_share: RareShareOpt = 0.5,
    granularity: GranularityOpt = "channel",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 256,
    json_path: JsonOpt = None,
    store: StoreOpt = None,
    no_cache: NoCacheOpt = False,
    export: ExportOpt = None,
    train_data: TrainDataOpt = None,
) -> None:
    """Per class: ok, drowning experts, not read out or not learned — with the evidence, the remedy, the
    preprocessing step to suspect, and with --train-data what the training data says of each class
    (docs/analyses.md)."""
    from essence.core.analyses.diagnosis.verdict import DiagnosisSettings
    from essence.core.analyses.diagnosis.verdict import diagnose as run_diagnosis

    if not 0 < rare_share <= 1:
        raise SpecError(f"--rare-share {rare_share} must lie in (0, 1]")
    check_export(export, per_instance=False)
    loaded = inputs.load(batch_size=batch_size)
    training = _training_data(loaded, inputs, train_data)
    settings = DiagnosisSettings(rare_share=rare_share, granularity=granularity)  # type: ignore[arg-type]
    profiles = _profiles(loaded, granularity, settings.kind, batch_size, device, store, no_cache)
    with progress_bar(f"diagnosis at {loaded.layer}") as bar:
        result = run_diagnosis(
            loaded.model.module,
            loaded.data,
            loaded.layer,
            profiles=profiles,
            settings=settings,
            batch_size=batch_size,
            device=device,
            progress=bar,
            activations=stored_activations(loaded, store, no_cache),  # the slice's stored z: g alone runs
            train_data=training,
        )
    _print_diagnosis(result, loaded.data.spec)
    write_json(json_path, result.to_json(), loaded.data.preprocessing, loaded.classes)
    write_diagnosis_export(export, result)
    _say_if_cached(profiles)


def _training_data(loaded: Inputs, inputs: InputOptions, spec: str | None) -> ImageData | None:
    """``--train-data`` read as ``--data`` is (the model's recipe and classes, the same options), checked to fit
    the model and to name its classes in the same order as the evaluated data (``None`` when not given).

    Raises:
        DataLoadError, SpecError: the spec cannot be read. LabelMismatchError: other classes than the model's.
    """
    if spec is None:
        return None
    from essence.cli.common import load_data
    from essence.core.base.errors import LabelMismatchError
    from essence.core.inputs.cards import class_order
    from essence.core.inputs.models import check_compatible

    train = load_data(
        loaded.model, spec, size=inputs.size, blur=inputs.blur, recipe_file=inputs.recipe,
        skip_bad_images=inputs.skip_bad,
    )  # fmt: skip
    if train.skipped:
        typer.echo(f"note: {len(train.skipped)} unreadable training images were skipped", err=True)
    check_compatible(loaded.model, train)
    names = class_order(loaded.model, train).names
    if tuple(names) != tuple(loaded.classes.names):
        raise LabelMismatchError(
            f"--train-data {spec} has the classes {', '.join(names[:6])}, not the model's "
            f"{', '.join(loaded.classes.names[:6])} in that order: give the data the model was trained on"
        )
    typer.echo(f"training data: {spec}, {len(train)} images")
    return train


def _print_diagnosis(result: Diagnosis, data_spec: str) -> None:
    """Each class's verdict with its evidence, the advice and the suspect preprocessing steps."""
    typer.echo(
        f"diagnosis at {result.layer!r}: accuracy {result.accuracy:.3f} on {data_spec}; "
        f"preprocessing: {result.preprocessing or 'unknown'}"
    )
    if result.never_predicted:
        typer.echo(f"never predicted: {', '.join(result.never_predicted)}")
    for c in result.classes:
        probe = (
            f"probe vs {c.probe.against} AUC {_fmt(c.probe.auc)} (chance ≤ {_fmt(c.probe.threshold)})"
            if c.probe
            else "probe —"
        )
        typer.echo(
            f"  {c.name:>14}  n={c.count:<5} recall {_fmt(c.recall)}  precision {_fmt(c.precision)}  "
            f"predicted {c.predicted_count:<5} {probe}  {c.diagnosis}"
        )
        if c.advice:
            typer.echo(f"      {c.advice}")
        for step in c.suspect_steps:
            typer.echo(f"      suspect step: {step.step} — {step.evidence}")
        _print_training_and_benchmark(c)
        typer.echo(f"      top units + {c.top_positive}  − {c.top_negative}")
    ok = next((c for c in result.classes if c.diagnosis == "ok" and c.benchmark_precision), None)
    if ok is not None:
        from essence.core.analyses.diagnosis.benchmark import said

        typer.echo(f"benchmark: {said(ok.diagnosis, ok.benchmark_precision, ok.training is not None)}")


def _print_training_and_benchmark(c: ClassDiagnosis) -> None:
    """The training data's facts of the class (with --train-data; the advice of a flagged class holds them
    already) and how often its verdict was right on the held-out benchmark (said once for "ok", after the table)."""
    from essence.core.analyses.diagnosis.benchmark import STEP_NAMED, said

    if c.training is not None and "training data:" not in c.advice:
        typer.echo(f"      training data: {c.training.describe(c.name)}")
    with_training = c.training is not None
    if c.benchmark_precision is not None and c.diagnosis != "ok":
        typer.echo(f"      benchmark: {said(c.diagnosis, c.benchmark_precision, with_training)}")
    if c.step_benchmark_precision is not None:
        typer.echo(f"      benchmark: {said(STEP_NAMED, c.step_benchmark_precision, with_training)}")
