"""``--export FILE`` of ``essence triage`` and ``essence diagnose``: the result as a table other tools read.

The format follows the file's name (:func:`essence.core.analyses.exports.export_format`): ``.csv``, ``.json``,
``.parquet``; for the triage also ``.fiftyone.json`` (FiftyOne samples) and ``.npz`` (cleanlab's inputs).
See docs/interop.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from essence.cli.output import write_text_file
from essence.core.base.errors import SpecError

if TYPE_CHECKING:  # core's exports (NumPy) are imported where they are used, not by ``--help``
    from essence.core.analyses.diagnosis.results import Diagnosis
    from essence.core.analyses.triage import Triage
    from essence.core.inputs.data import ImageData

ExportOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--export",
        help="also write the result as FILE.csv, FILE.json or FILE.parquet (triage: also FILE.fiftyone.json "
        "for FiftyOne, FILE.npz for cleanlab); repeat for several; see docs/interop.md",
    ),
]


def check_export(paths: list[Path] | None, per_instance: bool) -> None:
    """Refuse an export name that names no format, before any computation.

    Raises:
        SpecError: naming the option, the path and the formats this command writes.
    """
    from essence.core.analyses.exports import TABLE_FORMATS, export_format

    for path in paths or []:
        try:
            export_format(path, (*TABLE_FORMATS, "fiftyone", "cleanlab") if per_instance else TABLE_FORMATS)
        except SpecError as exc:  # core speaks of an export path; here it is the option's value
            fix = str(exc).rsplit(": ", 1)[-1]  # the path may hold ": "; the list of formats does not
            raise SpecError(f"--export {path}: {fix}") from exc


def write_triage_export(
    paths: list[Path] | None, triage: Triage, data: ImageData, verdicts: Mapping[int, str | None]
) -> None:
    """Write the triage to each path in the format its name asks for."""
    from essence.core.analyses.exports import export_format, triage_export

    reviewed = {i: v for i, v in verdicts.items() if v}
    for path in paths or []:
        fmt = export_format(path)
        write_text_file(path, triage_export(triage, fmt, data, reviewed), "--export")
        typer.echo(f"wrote the triage of {len(triage)} instances to {path} ({fmt})")


def write_diagnosis_export(paths: list[Path] | None, diagnosis: Diagnosis) -> None:
    """Write the diagnosis (one row per class) to each path."""
    from essence.core.analyses.exports import (
        DIAGNOSIS_COLUMNS,
        TABLE_FORMATS,
        diagnosis_rows,
        export_format,
        table_bytes,
    )

    for path in paths or []:
        fmt = export_format(path, TABLE_FORMATS)
        table = table_bytes(diagnosis_rows(diagnosis), DIAGNOSIS_COLUMNS, fmt, "classes")
        write_text_file(path, table, "--export")
        typer.echo(f"wrote the diagnosis of {len(diagnosis.classes)} classes to {path} ({fmt})")
