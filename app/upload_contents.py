"""What an extracted dataset upload holds: the data spec that reads it, and its DICOM files in Essence's own form.

:func:`dataset_root` finds the data in an extracted zip (a CSV of ``path,label``, class folders, DICOM files in
either). :func:`deidentify_tree` rewrites every DICOM file in it before the folder is moved into place: the pixel
data and the few header elements the analyses read are kept, with the patient's pseudonym instead of the patient
ID; names, birth dates, institutions and every other element are not (:mod:`essence.core.inputs.dicom_spec`).
:mod:`essence.app.uploads` extracts the zip and calls both.

Nothing here imports Streamlit.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from essence.core.base.errors import DataLoadError
from essence.core.inputs.formats import IMAGE_SUFFIXES

DICOM_SUFFIXES = (".dcm", ".dicom")


def dataset_root(root: Path) -> str:
    """The data spec of an extracted upload: ``csv:FILE`` for a CSV, else ``folder:DIR`` (ImageFolder).

    A single wrapping folder (``mydata/class_a/...``) is stepped into.

    Raises:
        DataLoadError: neither a CSV nor class folders with images.
    """
    here = root
    while True:
        entries = [p for p in here.iterdir() if not p.name.startswith(".")]
        csvs = [p for p in entries if p.suffix.lower() == ".csv"]
        dirs = [p for p in entries if p.is_dir()]
        if len(csvs) == 1:
            return f"{_csv_kind(csvs[0])}:{csvs[0]}"
        if len(csvs) > 1:
            raise DataLoadError(
                f"the zip holds several CSV files ({', '.join(p.name for p in csvs[:3])}): keep one, of path,label"
            )
        images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        if len(dirs) == 1 and not images:
            here = dirs[0]
            continue
        if dirs:
            dicom = any(f.suffix.lower() in DICOM_SUFFIXES for d in dirs for f in d.rglob("*"))
            return f"{'dicom' if dicom else 'folder'}:{here}"
        raise DataLoadError(
            "the zip has neither class folders nor a CSV: put each class's images in a folder named after the "
            "class (ImageFolder), or add a CSV of path,label"
        )


def _csv_kind(path: Path) -> str:
    """``dicom`` for a CSV listing DICOM files (``path,label`` rows of ``.dcm``), else ``csv``."""
    try:
        head = path.read_text(encoding="utf-8", errors="replace").splitlines()[:5]
    except OSError:
        return "csv"
    cells = [line.split(",", 1)[0].strip().lower() for line in head]
    return "dicom" if any(c.endswith(DICOM_SUFFIXES) for c in cells) else "csv"


def deidentify_tree(root: Path, *, skip_bad_images: bool = False) -> None:
    """Rewrite every DICOM file under ``root`` in Essence's own form, in place (see the module docstring).

    A DICOM file is one named ``.dcm``/``.dicom`` or carrying the ``DICM`` marker. One that cannot be read (its
    header refused, or not DICOM at all) is emptied, and the loader then leaves it out or refuses it as it
    would any unreadable image; where the dataset is DICOM and ``skip_bad_images`` is off, the upload is
    refused at once instead, naming the file.

    Raises:
        DataLoadError: a DICOM dataset's file that cannot be read (without ``skip_bad_images``).
    """
    from essence.core.inputs.dicom_spec import in_own_form, looks_like_dicom, write_deidentified

    try:
        strict = not skip_bad_images and dataset_root(root).startswith("dicom:")
    except DataLoadError:
        strict = False  # no dataset here: the same error comes again, once the folder is in place
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or not path.stat().st_size or not looks_like_dicom(path):
            continue
        if in_own_form(path):  # rewritten already (the same zip uploaded again)
            continue
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".deid-", suffix=".part")
        os.close(fd)
        try:
            try:
                write_deidentified(path, Path(tmp))
            except DataLoadError as exc:
                if strict:
                    raise DataLoadError(f"{exc} (or pass --skip-bad-images to leave such files out)") from exc
                # Nothing of it is kept: the loader finds an empty file, unreadable like any broken image.
                Path(tmp).write_bytes(b"")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
