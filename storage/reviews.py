"""The store's review records: runs, triage verdicts (never overwritten: a change of mind is a new row, with
history) and registered uploads.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import socket
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from essence import __version__
from essence.core.base.errors import SpecError, StoreError
from essence.storage.models import RunRow, UploadRow, VerdictRow
from essence.storage.records import (
    UPLOAD_KINDS,
    VERDICTS,
    Run,
    RunInfo,
    Upload,
    Verdict,
)


class Reviews:
    """The review half of :class:`~essence.storage.store.Store` (a mixin: it uses the store's sessions)."""

    # Provided by Store (storage/store.py).
    if TYPE_CHECKING:

        def _session(self, write: bool = False) -> AbstractContextManager[Session]: ...

    # ------------------------------------------------------------------------------------------- runs

    def record_run(
        self, kind: str, info: RunInfo, *, model_fp: str = "", dataset_fp: str = "", layer: str = ""
    ) -> Run:
        """Record a computation that stores nothing else (e.g. an analysis), for the runs list."""
        with self._session(write=True) as s:
            row = new_run_row(kind, model_fp, dataset_fp, layer, info)
            s.add(row)
            s.flush()
            return _run_of(row)

    def runs(self, limit: int | None = 20) -> list[Run]:
        """Recorded runs, newest first."""
        with self._session() as s:
            q = select(RunRow).order_by(RunRow.id.desc())
            if limit is not None:
                q = q.limit(limit)
            return [_run_of(r) for r in s.scalars(q)]

    # ------------------------------------------------------------------------------------------- verdicts

    def record_verdict(
        self, dataset_fp: str, instance_id: int, verdict: str, note: str = "", reviewer: str | None = None
    ) -> Verdict:
        """Add a review verdict (earlier ones are kept: the newest is the current one).

        Args:
            dataset_fp: the dataset's fingerprint.
            instance_id: the instance's position in the dataset.
            verdict: one of ``"label error"``, ``"model error"``, ``"ambiguous"``, ``"fine"``, ``"custom"``.
            note: free text; required for ``"custom"``.
            reviewer: who decided (default: the login name).

        Raises:
            SpecError: an unknown verdict, a custom verdict without a note, or a negative instance id.
            StoreError: the store cannot be written.
        """
        if verdict not in VERDICTS:
            raise SpecError(f"verdict {verdict!r} is not known: use one of {', '.join(VERDICTS)}")
        note = (note or "").strip()
        if verdict == "custom" and not note:
            raise SpecError("a custom verdict needs a note saying what it is")
        if isinstance(instance_id, bool) or int(instance_id) != instance_id or instance_id < 0:
            raise SpecError(
                f"instance id {instance_id!r} must be a non-negative integer (its dataset position)"
            )
        if reviewer is None:
            try:
                reviewer = getpass.getuser()
            except (KeyError, OSError):
                reviewer = ""
        with self._session(write=True) as s:
            row = VerdictRow(
                dataset_fp=dataset_fp,
                instance_id=int(instance_id),
                verdict=verdict,
                note=note,
                reviewer=reviewer,
            )
            s.add(row)
            s.flush()
            return _verdict_of(row)

    def latest_verdicts(self, dataset_fp: str) -> dict[int, Verdict]:
        """The current (newest) verdict of each reviewed instance of a dataset, by instance id."""
        newest = (
            select(func.max(VerdictRow.id))
            .where(VerdictRow.dataset_fp == dataset_fp)
            .group_by(VerdictRow.instance_id)
        )
        with self._session() as s:
            rows = s.scalars(select(VerdictRow).where(VerdictRow.id.in_(newest)))
            return {r.instance_id: _verdict_of(r) for r in rows}

    def reviewers_latest(self, dataset_fp: str) -> dict[str, dict[int, Verdict]]:
        """Each reviewer's own current (newest) verdict on each instance they judged: ``{reviewer: {id: verdict}}``.

        Unlike :meth:`latest_verdicts` (the newest of anyone), one reviewer's change of mind does not hide
        another's verdict: what two reviewers' agreement is measured on.
        """
        mine: dict[str, dict[int, Verdict]] = {}
        for v in self.all_verdicts(dataset_fp):  # oldest first: the newest of each reviewer stays
            mine.setdefault(v.reviewer or "", {})[v.instance_id] = v
        return mine

    def verdict_history(self, dataset_fp: str, instance_id: int) -> list[Verdict]:
        """Every verdict on one instance, oldest first."""
        with self._session() as s:
            rows = s.scalars(
                select(VerdictRow)
                .where(VerdictRow.dataset_fp == dataset_fp, VerdictRow.instance_id == int(instance_id))
                .order_by(VerdictRow.id)
            )
            return [_verdict_of(r) for r in rows]

    def all_verdicts(self, dataset_fp: str | None = None) -> list[Verdict]:
        """Every verdict (of one dataset, or all), oldest first."""
        with self._session() as s:
            q = select(VerdictRow).order_by(VerdictRow.id)
            if dataset_fp is not None:
                q = q.where(VerdictRow.dataset_fp == dataset_fp)
            return [_verdict_of(r) for r in s.scalars(q)]

    def export_verdicts(self, fmt: Literal["csv", "json"] = "csv", dataset_fp: str | None = None) -> str:
        """The full verdict history as CSV or JSON text; a ``latest`` column marks each instance's current one
        (the newest of anyone), ``reviewer_latest`` each reviewer's own current one on it (every reviewer's
        latest verdict per image: the rows with ``reviewer_latest`` true).

        CSV cells are made safe for spreadsheets (:func:`spreadsheet_safe`); JSON keeps the text as typed.

        Raises:
            SpecError: an unknown format.
        """
        if fmt not in ("csv", "json"):
            raise SpecError(f"export format {fmt!r} is not known: use csv or json")
        verdicts = self.all_verdicts(dataset_fp)
        latest: dict[tuple[str, int], int] = {}
        mine: dict[tuple[str, int, str], int] = {}
        for v in verdicts:
            latest[(v.dataset_fp, v.instance_id)] = v.id
            mine[(v.dataset_fp, v.instance_id, v.reviewer or "")] = v.id
        records = [
            {
                **v.to_json(),
                "latest": latest[(v.dataset_fp, v.instance_id)] == v.id,
                "reviewer_latest": mine[(v.dataset_fp, v.instance_id, v.reviewer or "")] == v.id,
            }
            for v in verdicts
        ]
        if fmt == "json":
            return json.dumps({"verdicts": records}, indent=2) + "\n"
        out = io.StringIO()
        fields = [
            "id",
            "dataset_fingerprint",
            "instance_id",
            "verdict",
            "note",
            "reviewer",
            "created_at",
            "latest",
            "reviewer_latest",
        ]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in r.items()} for r in records)
        return out.getvalue()

    # ------------------------------------------------------------------------------------------- uploads

    def register_upload(
        self, kind: str, label: str, spec: str, details: dict[str, Any] | None = None
    ) -> Upload:
        """Register a model or dataset uploaded in the app (the same kind and label again replaces it).

        Args:
            kind: ``"model"`` or ``"dataset"``.
            label: what the app shows for it (unique per kind).
            spec: its model or data spec.
            details: plain JSON values given beside the spec (weights file, class names, recipe, slice).

        Raises:
            SpecError: an unknown kind or an empty label.
            StoreError: the store cannot be written.
        """
        if kind not in UPLOAD_KINDS:
            raise SpecError(f"upload kind {kind!r} is not known: use one of {', '.join(UPLOAD_KINDS)}")
        if not label.strip():
            raise SpecError("an upload needs a label to be shown under")
        text = json.dumps(details or {}, sort_keys=True)
        with self._session(write=True) as s:
            row = s.scalars(select(UploadRow).where(UploadRow.kind == kind, UploadRow.label == label)).first()
            if row is None:
                row = UploadRow(kind=kind, label=label, spec=spec, details=text)
                s.add(row)
            else:
                row.spec, row.details = spec, text
            s.flush()
            return _upload_of(row)

    def uploads(self, kind: str | None = None) -> list[Upload]:
        """The registered uploads (of one kind, or all), oldest first."""
        with self._session() as s:
            q = select(UploadRow).order_by(UploadRow.id)
            if kind is not None:
                q = q.where(UploadRow.kind == kind)
            return [_upload_of(r) for r in s.scalars(q)]

    def remove_upload(self, kind: str, label: str) -> bool:
        """Forget an upload (its files stay on disk, named by their hash). Returns whether it was registered."""
        with self._session(write=True) as s:
            row = s.scalars(select(UploadRow).where(UploadRow.kind == kind, UploadRow.label == label)).first()
            if row is None:
                return False
            s.delete(row)
            return True


# ----------------------------------------------------------------------------------------------- helpers


def new_run_row(kind: str, model_fp: str, dataset_fp: str, layer: str, info: RunInfo) -> RunRow:
    """A run row, its text made storable (a path that is not UTF-8 is kept as its escape)."""
    return RunRow(
        kind=kind,
        description=storable(info.description),  # may name a path that is not UTF-8
        model_fp=model_fp,
        dataset_fp=dataset_fp,
        layer=storable(layer),
        device=info.device,
        seconds=info.seconds,
        essence_version=__version__,
        command=storable(info.command),
        host=socket.gethostname(),
        preprocessing=json.dumps(info.preprocessing, sort_keys=True) if info.preprocessing else "",
    )


# A spreadsheet reads a cell starting with one of these as a formula (or, for tab and CR, strips them and
# reads what follows): OWASP's list for CSV injection.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def storable(text: str | None) -> str | None:
    """Text a SQLite row can hold: a lone surrogate (a file name that was not UTF-8, as Python decodes it) is
    kept as its escape (``\\udcff``) instead of failing the whole transaction."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def damaged_row(store: str, exc: BaseException) -> StoreError:
    """The error for a row that no longer decodes (edited by hand, or by another program): a JSON column that is
    not JSON, a date that is not a date, a dtype that is none. Essence never writes such rows."""
    text = " ".join(str(exc).split())[:160]
    return StoreError(
        f"the store {store} holds a damaged row ({type(exc).__name__}: {text}); it was not written by Essence: "
        "restore the store from a backup, or move it aside and let Essence start a new one (or use --store PATH)"
    )


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text: a string starting like a formula gets a leading ``'``.

    OWASP's advice against CSV injection (a note ``=HYPERLINK(...)`` or ``=cmd|...`` run by whoever opens the
    export). Numbers and booleans are left alone; the JSON export is not changed.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _run_of(r: RunRow) -> Run:
    return Run(
        id=r.id,
        created_at=r.created_at,
        kind=r.kind,
        description=r.description,
        model_fp=r.model_fp,
        dataset_fp=r.dataset_fp,
        layer=r.layer,
        device=r.device,
        seconds=r.seconds,
        command=r.command,
        host=r.host,
        essence_version=r.essence_version,
        preprocessing=_recipe_of(r.preprocessing),
    )


def _recipe_of(text: str | None) -> dict[str, Any] | None:
    """The recorded recipe, or ``None`` (not recorded, or not readable: a run record is never an error)."""
    if not text:
        return None
    try:
        recipe = json.loads(text)
    except ValueError:
        return None
    return recipe if isinstance(recipe, dict) else None


def _upload_of(r: UploadRow) -> Upload:
    try:
        details = json.loads(r.details or "{}")
    except ValueError:
        details = {}
    return Upload(
        id=r.id,
        kind=r.kind,
        label=r.label,
        spec=r.spec,
        details=details if isinstance(details, dict) else {},
        created_at=r.created_at,
    )


def _verdict_of(r: VerdictRow) -> Verdict:
    return Verdict(
        id=r.id,
        dataset_fp=r.dataset_fp,
        instance_id=r.instance_id,
        verdict=r.verdict,
        note=r.note,
        reviewer=r.reviewer,
        created_at=r.created_at,
    )
