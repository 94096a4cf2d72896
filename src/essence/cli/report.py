"""``essence report``: the review report (one self-contained HTML file) from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from essence.cli.common import (
    BlurOpt,
    ClassNamesOpt,
    DataOpt,
    DeviceOpt,
    LayerOpt,
    ModelOpt,
    RecipeOpt,
    SizeOpt,
    SkipBadOpt,
    StoreOpt,
    TrustPickleOpt,
    WeightsOpt,
    load_inputs,
    progress_bar,
    write_text_file,
)

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="the HTML file to write")]


def register(app: typer.Typer) -> None:
    """Add ``report`` to the root app."""

    @app.command("report")
    def report(
        model: ModelOpt,
        data: DataOpt,
        out: OutOpt,
        weights: WeightsOpt = None,
        trust_pickle: TrustPickleOpt = False,
        layer: LayerOpt = None,
        store: StoreOpt = None,
        device: DeviceOpt = "auto",
        size: SizeOpt = None,
        blur: BlurOpt = None,
        recipe: RecipeOpt = None,
        skip_bad: SkipBadOpt = False,
        class_names: ClassNamesOpt = None,
    ) -> None:
        """Write the review report: model, preprocessing recipe, diagnosis, reviewed cases and verdicts."""
        import dataclasses

        import numpy as np
        import torch

        from essence.app.report import review_report
        from essence.core.analyses.diagnosis.verdict import diagnose
        from essence.core.analyses.profiles import class_profiles
        from essence.core.engine.slices import inference_state
        from essence.storage import RunInfo, Store

        inputs = load_inputs(
            model, weights, trust_pickle, data, layer,
            size=size, blur=blur, recipe_file=recipe, skip_bad_images=skip_bad, class_names=class_names,
        )  # fmt: skip
        names = list(inputs.classes.names)
        with Store.open(store) as opened:
            with progress_bar(f"class profiles at {inputs.layer}") as bar:
                profiles = opened.cached_profiles(
                    inputs.model,
                    inputs.data,
                    inputs.layer,
                    "channel",
                    "logit",
                    lambda: class_profiles(
                        inputs.model.module,
                        inputs.data,
                        inputs.layer,
                        class_names=names,
                        allow_empty=True,
                        device=device,
                        progress=bar,  # type: ignore[arg-type]
                    ),
                    run_info=RunInfo(command="essence report", device=device),
                )
            # The recipe as applied to the data: the model's, with --size and a DICOM window step on top.
            recipe = inputs.data.preprocessing.describe()
            diag = diagnose(
                inputs.model.module,
                inputs.data,
                inputs.layer,
                profiles=profiles,
                preprocessing=recipe,
                device=device,
            )
            predicted = []
            with inference_state(inputs.model.module), torch.no_grad():
                for x, _, _ in inputs.data.batches(256):
                    predicted.append(inputs.model.module(x).argmax(1).numpy())
            shown = dataclasses.replace(inputs.model, preprocessing=inputs.data.preprocessing)
            text = review_report(
                shown, inputs.data, inputs.layer, diag, opened, predicted=np.concatenate(predicted)
            )
            reviewed = len(opened.latest_verdicts(inputs.data.fingerprint))
        write_text_file(out, text, "--out")  # atomic; links and special files written through, modes kept
        typer.echo(f"wrote {out}: {inputs.model.name} on {inputs.data.spec}, {reviewed} reviewed cases")
