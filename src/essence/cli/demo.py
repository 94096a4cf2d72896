"""``essence demo build``: re-create the bundled demo's two models (blurred and sharp) from the generator."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from essence.core.base.errors import SpecError

QUICK_SCALE = 0.25
QUICK_EPOCHS = 6


def register(app: typer.Typer) -> None:
    """Add the ``demo`` group to the root app."""
    demo = typer.Typer(
        help="The bundled demo (synthetic fundus images, models blurred and sharp).", no_args_is_help=True
    )
    demo.command("build")(build)
    app.add_typer(demo, name="demo")


def build(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for the weights and cards (default: the package's models)"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="base seed of the data and of training")] = 0,
    epochs: Annotated[int | None, typer.Option("--epochs", help="training epochs of each model")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help=f"a quarter of the data and {QUICK_EPOCHS} epochs (a smoke test)")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write both cards as JSON to FILE ('-': stdout)")
    ] = None,
) -> None:
    """Generate the synthetic fundus data and train the demo models ``blurred`` and ``sharp``."""
    from essence.sample_data import MODELS_DIR
    from essence.sample_data.build import DEFAULT_EPOCHS, build_demo

    if epochs is not None and epochs < 1:
        raise SpecError(f"--epochs must be at least 1, got {epochs}")
    if quick and out is None:
        # A quick build's toy models must never replace the committed ones by accident.
        raise SpecError(
            "--quick builds toy models: pass --out DIR so the committed demo models stay as they are"
        )
    target = out if out is not None else MODELS_DIR
    if target.exists() and not target.is_dir():
        raise SpecError(f"--out {target} is a file: pass a folder")
    n_epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else DEFAULT_EPOCHS)
    start = time.perf_counter()
    with _stage_bars() as progress:
        cards = build_demo(
            target, seed=seed, epochs=n_epochs, n_scale=QUICK_SCALE if quick else 1.0, progress=progress
        )
    _print_summary(cards, target, time.perf_counter() - start)
    if json_out is not None:
        from essence.cli.output import write_json

        write_json(json_out, cards)


@contextmanager
def _stage_bars() -> Iterator[Callable[[str, int, int], None]]:
    """One rich progress bar per stage (data, blurred, sharp) on stderr; yields a ``(stage, done, total)`` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    labels = {"data": "generating images", "blurred": "training blurred", "sharp": "training sharp"}
    with Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _print_summary(cards: dict[str, dict[str, Any]], target: Path, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"demo models in {target} ({seconds:.0f} s)")
    table.add_column("model")
    table.add_column("test accuracy", justify="right")
    for name in cards["blurred"]["class_names"]:
        table.add_column(f"recall {name}", justify="right")
    table.add_column("predicted per class")
    for name, card in cards.items():
        m = card["metrics"]["test"]
        recalls = ["–" if r is None else f"{r:.2f}" for r in m["recall"]]
        table.add_row(name, f"{m['accuracy']:.3f}", *recalls, " ".join(str(c) for c in m["predicted_counts"]))
    Console().print(table)
