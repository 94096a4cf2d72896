"""``essence report``: the review report (one self-contained HTML file) from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from essence.cli.common import progress_bar
from essence.cli.options import DeviceOpt, InputOptions, ShortcutsOpt, StoreOpt, with_option_groups
from essence.cli.output import write_text_file

if TYPE_CHECKING:
    import numpy as np

    from essence.cli.common import Inputs
    from essence.core.analyses.profiles import ClassProfiles
    from essence.core.analyses.shortcuts import SharedEvidence
    from essence.storage import Store

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="the HTML file to write")]


@with_option_groups
def report(
    inputs: InputOptions,
    out: OutOpt,
    store: StoreOpt = None,
    device: DeviceOpt = "auto",
    shortcuts: ShortcutsOpt = False,
) -> None:
    """Write the review report: model, preprocessing recipe, diagnosis, reviewed cases and verdicts (and with
    --shortcuts the flagged images that share why-flagged units)."""
    import dataclasses

    from essence.app.report import review_report
    from essence.core.analyses.diagnosis.verdict import diagnose
    from essence.storage import Store

    loaded = inputs.load()
    with Store.open(store) as opened:
        profiles = _profiles(opened, loaded, device)
        # The recipe as applied to the data: the model's, with --size and a DICOM window step on top.
        recipe = loaded.data.preprocessing.describe()
        diag = diagnose(
            loaded.model.module,
            loaded.data,
            loaded.layer,
            profiles=profiles,
            preprocessing=recipe,
            device=device,
            activations=opened.slice_source(loaded.model, loaded.data),  # the slice's stored z: g alone runs
        )
        shown = dataclasses.replace(loaded.model, preprocessing=loaded.data.preprocessing)
        found = _shortcuts(loaded, device) if shortcuts else None
        predicted = _predictions(loaded)
        text = review_report(shown, loaded.data, loaded.layer, diag, opened, predicted, shortcuts=found)
        reviewed = len(opened.latest_verdicts(loaded.data.fingerprint))
    write_text_file(out, text, "--out")  # atomic; links and special files written through, modes kept
    typer.echo(f"wrote {out}: {loaded.model.name} on {loaded.data.spec}, {reviewed} reviewed cases")


def _profiles(opened: Store, loaded: Inputs, device: str) -> ClassProfiles:
    """The class profiles the diagnosis reads (channel, logit), through the store."""
    from essence.core.analyses.profiles import class_profiles
    from essence.storage import RunInfo

    names = list(loaded.classes.names)
    source = opened.slice_source(loaded.model, loaded.data)  # the first pass at the slice stores its z
    with progress_bar(f"class profiles at {loaded.layer}") as bar:
        return opened.cached_profiles(
            loaded.model,
            loaded.data,
            loaded.layer,
            "channel",
            "logit",
            lambda: class_profiles(
                loaded.model.module,
                loaded.data,
                loaded.layer,
                class_names=names,
                allow_empty=True,
                device=device,
                progress=bar,  # type: ignore[arg-type]
                activations=source,
            ),
            run_info=RunInfo(command="essence report", device=device),
            activations=source,
        )


def _shortcuts(loaded: Inputs, device: str) -> list[SharedEvidence]:
    """The triage's flagged images that share why-flagged units (the default triage at the report's slice)."""
    from essence.core.analyses.shortcuts import shared_evidence
    from essence.core.analyses.triage import deviation_scores
    from essence.core.base.devices import resolve_device
    from essence.core.base.model_state import on_device

    model = loaded.model.module
    with progress_bar(f"triage at {loaded.layer} for --shortcuts") as bar:
        result = deviation_scores(model, loaded.data, loaded.layer, device=device, progress=bar)  # type: ignore[arg-type]
    with on_device(model, resolve_device(device)):
        return shared_evidence(model, loaded.data, result)


def _predictions(loaded: Inputs) -> np.ndarray:
    """The model's predicted class of every instance."""
    import numpy as np
    import torch

    from essence.core.engine.slices import inference_state

    predicted = []
    with inference_state(loaded.model.module), torch.no_grad():
        for x, _, _ in loaded.data.batches(256):
            predicted.append(loaded.model.module(x).argmax(1).numpy())
    return np.concatenate(predicted)


def register(app: typer.Typer) -> None:
    """Add ``report`` to the root app."""
    app.command("report")(report)
