"""``--export FILE`` of ``essence triage`` and ``essence diagnose``: the result as a table other tools read.

The format follows the file's name (:func:`essence.core.exports.export_format`): ``.csv``, ``.json``,
``.parquet``; for the triage also ``.fiftyone.json`` (FiftyOne samples) and ``.npz`` (cleanlab's inputs).
See docs/interop.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from essence.cli.output import write_text_file
from essence.core.exports import (
    DIAGNOSIS_COLUMNS,
    TABLE_FORMATS,
    diagnosis_rows,
    export_format,
    table_bytes,
    triage_export,
)

if TYPE_CHECKING:
    from essence.core.data import ImageData
    from essence.core.diagnosis_results import Diagnosis
    from essence.core.triage import Triage

ExportOpt = Annotated[
    Path | None,
    typer.Option(
        "--export",
        help="also write the result as FILE.csv, FILE.json or FILE.parquet (triage: also FILE.fiftyone.json "
        "for FiftyOne, FILE.npz for cleanlab); see docs/interop.md",
    ),
]


def check_export(path: Path | None, per_instance: bool) -> None:
    """Refuse an export name that names no format, before any computation.

    Raises:
        SpecError: naming the formats this command writes.
    """
    if path is not None:
        export_format(path, (*TABLE_FORMATS, "fiftyone", "cleanlab") if per_instance else TABLE_FORMATS)


def write_triage_export(
    path: Path | None, triage: Triage, data: ImageData, verdicts: Mapping[int, str | None]
) -> None:
    """Write the triage to ``path`` in the format its name asks for (nothing when ``path`` is None)."""
    if path is None:
        return
    fmt = export_format(path)
    reviewed = {i: v for i, v in verdicts.items() if v}
    write_text_file(path, triage_export(triage, fmt, data, reviewed), "--export")
    typer.echo(f"wrote the triage of {len(triage)} instances to {path} ({fmt})")


def write_diagnosis_export(path: Path | None, diagnosis: Diagnosis) -> None:
    """Write the diagnosis (one row per class) to ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    fmt = export_format(path, TABLE_FORMATS)
    write_text_file(
        path, table_bytes(diagnosis_rows(diagnosis), DIAGNOSIS_COLUMNS, fmt, "classes"), "--export"
    )
    typer.echo(f"wrote the diagnosis of {len(diagnosis.classes)} classes to {path} ({fmt})")
