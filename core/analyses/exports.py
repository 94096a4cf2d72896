"""Interop exports: triage scores, verdicts and diagnoses as tables other tools read (docs/interop.md).

Every table has stable columns (the tuples below: a column is added at the end, never renamed or removed) and
is written as CSV, JSON or Parquet, chosen by the file's name. In the triage, ``confidence`` is max p, the
probability of the predicted class, and ``doubt`` is 1 − max p, as in ``essence triage --json``. The per-instance triage also comes in the two
forms review tools load directly, without Essence and without those packages installed here:

- ``*.fiftyone.json``: one sample per instance with FiftyOne's fields (``filepath``, ``ground_truth`` and
  ``predictions`` as Classification dicts, whose ``confidence`` is max p) and Essence's scores as ``essence_*``
  fields (``essence_doubt`` is 1 − max p);
- ``*.npz`` (cleanlab): ``labels`` ``[N]`` and ``pred_probs`` ``[N, K]`` in dataset order, as
  ``cleanlab.filter.find_label_issues(labels, pred_probs)`` takes them, with ``essence_score`` ``[N]``.

Patient identifiers never appear: a DICOM dataset contributes its patient pseudonyms (a hash) only.

A name that is not valid UTF-8 (a class folder or file named in another encoding, which Python reads with lone
surrogates) is written to CSV and Parquet with its undecodable bytes as backslash escapes: a folder named
``c``, byte 0xFF, ``1`` becomes the text ``c\\xff1``, so both files stay valid UTF-8 (JSON keeps its own
``\\udcff`` escape).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from essence.core.base.errors import SpecError

if TYPE_CHECKING:
    from essence.core.analyses.diagnosis.results import Diagnosis
    from essence.core.analyses.triage import Triage
    from essence.core.inputs.data import ImageData

ExportFormat = Literal["csv", "json", "parquet", "fiftyone", "cleanlab"]
_EXPORT_FORMATS: dict[str, ExportFormat] = {
    "csv": "csv", "json": "json", "parquet": "parquet", "fiftyone": "fiftyone", "cleanlab": "cleanlab",
}  # fmt: skip
TABLE_FORMATS = ("csv", "json", "parquet")
# The triage table, in this order; the score columns are every score of essence.core.analyses.triage.SCORES.
# ``confidence`` is max p (the predicted class's probability), ``doubt`` 1 − max p (added last, as columns are).
TRIAGE_COLUMNS: tuple[str, ...] = (
    "rank", "index", "label", "label_name", "predicted", "predicted_name", "confidence", "label_probability",
    "score_name", "deviation", "merged", "reasoning", "combined", "spearman", "kendall", "cosine", "mass",
    "self_confidence", "mistakenness", "reading", "verdict", "source", "patient", "doubt",
)  # fmt: skip
# The score columns (after ``deviation``), each filled from Triage.scores.
_SCORE_COLUMNS = (*TRIAGE_COLUMNS[10:19], "doubt")
DIAGNOSIS_COLUMNS: tuple[str, ...] = (
    "class_index", "class_name", "count", "recall", "precision", "predicted_count", "diagnosis",
    "expert_alpha", "expert_beta", "expert_recall", "expert_precision", "probe_auc", "probe_threshold",
    "suspect_steps", "advice", "remedy", "layer",
)  # fmt: skip
VERDICT_COLUMNS: tuple[str, ...] = (
    "id", "dataset_fingerprint", "instance_id", "verdict", "note", "reviewer", "created_at", "latest",
    "reviewer_latest",
)  # fmt: skip
_INTS = {"rank", "index", "label", "predicted", "class_index", "count", "predicted_count", "expert_alpha",
         "expert_beta", "id", "instance_id"}  # fmt: skip
_BOOLS = {"latest", "reviewer_latest"}
_STRINGS = {"label_name", "predicted_name", "score_name", "reading", "verdict", "source", "patient", "class_name",
            "diagnosis", "suspect_steps", "advice", "remedy", "layer", "dataset_fingerprint", "note", "reviewer",
            "created_at"}  # fmt: skip
PARQUET_HINT = "pip install 'essence[parquet]' (or pip install pyarrow)"
# A spreadsheet runs a cell that starts like a formula (OWASP, CSV injection); the same guard as the store's.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A lone surrogate: an undecodable byte of a file name (U+DC80..U+DCFF, Python's surrogateescape), or worse.
_SURROGATE = re.compile("[\ud800-\udfff]")


def export_format(
    path: Path, allowed: Sequence[str] = (*TABLE_FORMATS, "fiftyone", "cleanlab")
) -> ExportFormat:
    """The format a file name asks for: ``.csv``, ``.json``, ``.parquet``, ``.fiftyone.json`` or ``.npz``.

    Raises:
        SpecError: another name, or a form this table does not come in.
    """
    name = path.name.lower()
    fmt = (
        "fiftyone" if name.endswith(".fiftyone.json")
        else "cleanlab" if name.endswith(".npz")
        else name.rsplit(".", 1)[-1] if "." in name else ""
    )  # fmt: skip
    known = _EXPORT_FORMATS.get(fmt)
    if known is None or fmt not in allowed:
        shown = {"fiftyone": "FILE.fiftyone.json", "cleanlab": "FILE.npz (cleanlab)"}
        raise SpecError(
            f"export path {path}: name a {', '.join(shown.get(f, f'FILE.{f}') for f in allowed)} file"
        )
    return known


def triage_rows(
    triage: Triage,
    data: ImageData | None = None,
    verdicts: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """The triage as rows of :data:`TRIAGE_COLUMNS`, most suspect first.

    Args:
        triage: the ranking (:func:`~essence.core.analyses.triage.deviation_scores`).
        data: the dataset, for each instance's file (``source``) and patient pseudonym (DICOM), if any.
        verdicts: each reviewed instance's current verdict, by dataset index.
    """
    verdicts = verdicts or {}
    sources, patients = _instance_facts(data)
    rows = []
    for rank, r in enumerate(triage.ranking.tolist(), start=1):
        i, y, p = int(triage.indices[r]), int(triage.labels[r]), int(triage.predicted[r])
        row: dict[str, Any] = {
            "rank": rank, "index": i, "label": y, "label_name": triage.class_names[y], "predicted": p,
            "predicted_name": triage.class_names[p], "confidence": float(triage.confidence[r]),
            "label_probability": float(triage.label_probability[r]), "score_name": triage.score,
            "deviation": float(triage.deviation[r]),
        }  # fmt: skip
        for name in _SCORE_COLUMNS:
            values = triage.scores.get(name)
            row[name] = None if values is None else _number(values[r])
        row["reading"] = triage.reasoning.reading[r] or None
        row["verdict"] = verdicts.get(i)
        row["source"] = sources[i] if sources and i < len(sources) else None
        row["patient"] = patients[i] if patients and i < len(patients) else None
        rows.append(row)
    return rows


def diagnosis_rows(diagnosis: Diagnosis) -> list[dict[str, Any]]:
    """The diagnosis as rows of :data:`DIAGNOSIS_COLUMNS`, one per class (suspect steps joined by ``; ``)."""
    rows = []
    for c in diagnosis.classes:
        d = c.to_json()
        expert, probe = d.get("expert") or {}, d.get("probe") or {}
        rows.append({
            "class_index": d["index"], "class_name": d["name"], "count": d["count"],
            "recall": _number(d["recall"]), "precision": _number(d["precision"]),
            "predicted_count": d["predicted_count"], "diagnosis": d["diagnosis"],
            "expert_alpha": expert.get("alpha"), "expert_beta": expert.get("beta"),
            "expert_recall": _number(expert.get("recall")), "expert_precision": _number(expert.get("precision")),
            "probe_auc": _number(probe.get("auc")), "probe_threshold": _number(probe.get("threshold")),
            "suspect_steps": "; ".join(f"{s['step']}: {s['evidence']}" for s in d["suspect_steps"]),
            "advice": d.get("advice") or "", "remedy": d.get("remedy") or "", "layer": diagnosis.layer,
        })  # fmt: skip
    return rows


def table_bytes(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str, name: str = "rows") -> bytes:
    """Rows written as CSV, JSON (``{name: [...]}``) or Parquet, with exactly ``columns`` in that order.

    Raises:
        SpecError: an unknown format. DataLoadError-free: a missing pyarrow is a SpecError naming the extra.
    """
    table = [{k: row.get(k) for k in columns} for row in rows]
    if fmt == "json":
        return (
            json.dumps({"columns": list(columns), name: table}, indent=2, allow_nan=False, default=str) + "\n"
        ).encode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(utf8_text(v)) for k, v in row.items()} for row in table)
        return out.getvalue().encode("utf-8")
    if fmt == "parquet":
        return _parquet(table, columns)
    raise SpecError(f"table format {fmt!r} is not known: use csv, json or parquet")


def fiftyone_samples(
    triage: Triage, data: ImageData | None = None, verdicts: Mapping[int, str] | None = None
) -> bytes:
    """The triage as FiftyOne samples (JSON): ``filepath``, ``ground_truth``, ``predictions``, ``essence_*``.

    ``filepath`` is the image file's absolute path when the dataset has files (``folder:``, ``csv:``), else
    None (arrays, DICOM: key the samples by ``essence_index`` or ``essence_source`` instead).
    """
    rows = triage_rows(triage, data, verdicts)
    paths = None if data is None or data.paths is None else [str(Path(p).resolve()) for p in data.paths]
    samples = []
    for row in sorted(rows, key=lambda r: r["index"]):
        i = row["index"]
        samples.append({
            "filepath": paths[i] if paths is not None and i < len(paths) else None,
            "ground_truth": {"_cls": "Classification", "label": row["label_name"]},
            "predictions": {"_cls": "Classification", "label": row["predicted_name"],
                            "confidence": row["confidence"]},
            "essence_index": i, "essence_rank": row["rank"], "essence_deviation": row["deviation"],
            "essence_doubt": row["doubt"],
            "essence_score_name": row["score_name"], "essence_reasoning": row["reasoning"],
            "essence_reading": row["reading"], "essence_verdict": row["verdict"],
            "essence_source": row["source"], "essence_patient": row["patient"],
        })  # fmt: skip
    body = {"classes": list(triage.class_names), "samples": samples}
    return (json.dumps(body, indent=2, allow_nan=False, default=_nan_free) + "\n").encode()


def cleanlab_arrays(triage: Triage) -> bytes:
    """The triage as cleanlab's inputs (an ``.npz``): ``labels``, ``pred_probs``, in dataset order.

    Also ``essence_score`` (the ranking score, higher = more suspect), ``essence_rank`` (1 = most suspect),
    ``index`` (each row's dataset index) and ``class_names``.
    """
    order = np.argsort(triage.indices, kind="stable")
    rank = np.empty(len(triage), dtype=np.int64)
    rank[triage.ranking] = np.arange(1, len(triage) + 1)
    out = io.BytesIO()
    np.savez(
        out,
        labels=triage.labels[order].astype(np.int64),
        pred_probs=np.asarray(triage.probabilities, dtype=np.float64)[order],
        essence_score=np.asarray(triage.deviation, dtype=np.float64)[order],
        essence_rank=rank[order],
        index=triage.indices[order].astype(np.int64),
        class_names=np.array(triage.class_names, dtype=str),
    )
    return out.getvalue()


def triage_export(
    triage: Triage,
    fmt: ExportFormat,
    data: ImageData | None = None,
    verdicts: Mapping[int, str] | None = None,
) -> bytes:
    """The triage in ``fmt`` (:func:`export_format`): a table, FiftyOne samples or cleanlab arrays."""
    if fmt == "fiftyone":
        return fiftyone_samples(triage, data, verdicts)
    if fmt == "cleanlab":
        return cleanlab_arrays(triage)
    return table_bytes(triage_rows(triage, data, verdicts), TRIAGE_COLUMNS, fmt, "scores")


def _instance_facts(data: ImageData | None) -> tuple[list[str] | None, list[str | None] | None]:
    """Each instance's file (relative for DICOM, as given otherwise) and patient pseudonym, where known."""
    if data is None:
        return None, None
    sources = getattr(data, "sources", None) or (None if data.paths is None else [str(p) for p in data.paths])
    return sources, getattr(data, "patients", None) or None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if np.isfinite(v) else None


def _nan_free(value: Any) -> Any:
    return None if isinstance(value, float) and not np.isfinite(value) else str(value)


def utf8_text(value: Any) -> Any:
    """A string that UTF-8 can encode: each lone surrogate written as a backslash escape of what it stands for.

    ``"c\\udcff1"`` (a folder ``c``, 0xFF, ``1`` as Python decodes it) → ``"c\\\\xff1"``; a surrogate outside
    that range → ``"\\\\udXXX"``. Anything that is not a string is returned as it is.
    """
    if not isinstance(value, str) or not _SURROGATE.search(value):
        return value

    def escape(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    return _SURROGATE.sub(escape, value)


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _parquet(table: list[dict[str, Any]], columns: Sequence[str]) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SpecError(f"writing Parquet needs pyarrow: {PARQUET_HINT}") from exc

    def kind(column: str) -> Any:  # fixed per column, so an all-empty column keeps its type
        if column in _INTS:
            return pa.int64()
        if column in _BOOLS:
            return pa.bool_()
        return pa.string() if column in _STRINGS else pa.float64()

    arrays = {k: pa.array([utf8_text(row[k]) for row in table], type=kind(k)) for k in columns}
    out = io.BytesIO()
    pq.write_table(pa.table(arrays), out)
    return out.getvalue()
