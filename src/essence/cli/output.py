"""Writing the CLI's outputs safely: ``--json`` results, and text files that never replace a special file.

Every JSON object Essence writes carries the marker key :data:`OUTPUT_MARKER` (so no output is ever read as a
model card, :mod:`essence.cli.common`) and the preprocessing recipe as applied (DESIGN §4). A file is written
beside its target and renamed into place, so a reader (or Ctrl-C) never sees half of it; a FIFO or a device
(``/dev/null``, ``/dev/stdout``) is written through, never replaced, and a FIFO that no program reads is
waited for :data:`FIFO_READER_WAIT_S` seconds, then refused with one line instead of blocking forever.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from essence.core.base.errors import SpecError

if TYPE_CHECKING:  # imported where used: ``essence --help`` loads this module, and neither torch nor numpy
    from essence.core.inputs.cards import OUTPUT_MARKER, ClassOrder
    from essence.core.inputs.preprocessing import Preprocessing

    Recipe = Preprocessing | Mapping[str, Preprocessing | None] | None
    Classes = ClassOrder | Mapping[str, ClassOrder] | None

__all__ = ["OUTPUT_MARKER", "OUTPUT_VERSION", "Recipe", "write_json", "write_text_file"]

# OUTPUT_MARKER: the key every JSON output of Essence carries (its value: the output format's version). A card
# never has it; it is defined beside the cards (core), which refuse any JSON object that has it.
OUTPUT_VERSION = 1
# How long a FIFO without a reader is waited for (a reader started just after Essence), before one line.
FIFO_READER_WAIT_S = 5.0


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf → null, tuples → lists, numpy/torch scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, str):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def __getattr__(name: str) -> Any:
    """``OUTPUT_MARKER``, ``Recipe`` and ``Classes``, resolved on first use (they need core's cards)."""
    if name not in ("OUTPUT_MARKER", "Recipe", "Classes"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from essence.core.inputs.cards import OUTPUT_MARKER, ClassOrder
    from essence.core.inputs.preprocessing import Preprocessing

    return {
        "OUTPUT_MARKER": OUTPUT_MARKER,
        "Recipe": Preprocessing | Mapping[str, Preprocessing | None] | None,
        "Classes": ClassOrder | Mapping[str, ClassOrder] | None,
    }[name]


def write_json(path: Path | None, obj: Any, preprocessing: Recipe = None, classes: Classes = None) -> None:
    """Write an output ``obj`` as JSON to ``path`` (see :func:`write_text_file`); ``-`` writes to stdout.

    An object gets the marker :data:`OUTPUT_MARKER` (so no output is ever read as a model card) and, unless it
    has one already, ``"preprocessing"``: the recipe as applied (a mapping of them, e.g. ``{"a", "b"}`` for
    ``compare``), or ``null`` where no recipe was applied (DESIGN §4). Given ``classes`` (the class order, or a
    mapping of them), it also gets ``"class_source"`` (``"card"``, ``"model"``, ``"option"`` or ``"data"``:
    where the class order came from) and ``"class_order"`` (``{"names", "from"}``).
    """
    if path is None:
        return
    from essence.core.inputs.cards import OUTPUT_MARKER, ClassOrder

    if isinstance(obj, dict):
        obj = {OUTPUT_MARKER: OUTPUT_VERSION, **obj}
        if "preprocessing" not in obj:
            obj["preprocessing"] = _recipe_json(preprocessing)
        if isinstance(classes, ClassOrder):
            obj.setdefault("class_source", classes.source)
            obj.setdefault("class_order", classes.to_json())
        elif isinstance(classes, Mapping):
            obj.setdefault("class_source", {k: v.source for k, v in classes.items()})
            obj.setdefault("class_order", {k: v.to_json() for k, v in classes.items()})
    text = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    write_text_file(Path(path), text, "--json")


def _recipe_json(recipe: Recipe) -> dict[str, Any] | None:
    from essence.core.inputs.preprocessing import Preprocessing

    if isinstance(recipe, Preprocessing):
        return recipe.to_dict()
    if isinstance(recipe, Mapping):
        return {k: _recipe_json(v) for k, v in recipe.items()}
    return None


def write_text_file(path: Path, text: str | bytes, option: str) -> None:
    """Write ``text`` (or bytes: a PNG) to ``path`` without replacing what is there with something of another kind.

    - A symlink is followed: its target is written, the link stays.
    - A FIFO, a character device (``/dev/null``, ``/dev/stdout``) or a socket is written through, never
      replaced (as root, replacing ``/dev/null`` would break the machine). A FIFO that no program has open
      for reading is waited for :data:`FIFO_READER_WAIT_S` seconds, then refused (opening it for writing
      would block forever).
    - A regular file, or a new one, is written atomically: a temporary file beside it, flushed to disk and
      renamed into place, so a reader (or Ctrl-C) never sees half a file. An existing file keeps its mode;
      a new one gets the usual ``0666 & ~umask``.
    - A folder is refused.

    Raises:
        SpecError: the path is a folder, a FIFO without a reader, or cannot be written; the message names
            ``option`` and the fix.
    """
    try:
        info: os.stat_result | None = os.stat(path)  # follows links, /dev/stdout's into /proc included
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc.strerror or exc}; choose another {option} path") from exc
    try:
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise SpecError(f"{option} {path} is a folder: name a file inside it")
        if info is not None and stat.S_ISFIFO(info.st_mode):
            with os.fdopen(_open_fifo(path, option), "wb") as f:
                f.write(_encoded(text))
            return
        if info is not None and not stat.S_ISREG(info.st_mode):
            with open(path, "wb") as f:  # the kernel resolves the path: written through
                f.write(_encoded(text))
            return
        target = Path(os.path.realpath(path))  # the file a link names is the one replaced
        _replace_atomically(target, text, stat.S_IMODE(info.st_mode) if info is not None else None)
    except OSError as exc:
        raise SpecError(
            f"cannot write {path}: {exc.strerror or exc}; choose a writable {option} path (or free space)"
        ) from exc


def _open_fifo(path: Path, option: str) -> int:
    """A descriptor writing to the FIFO at ``path`` once a program reads it (waited for, not forever).

    Opened without blocking (which fails while no reader has it open), then switched back to blocking writes,
    so a slow reader is waited for as usual.

    Raises:
        SpecError: no reader within :data:`FIFO_READER_WAIT_S` seconds.
        OSError: any other failure to open it.
    """
    deadline = time.monotonic() + FIFO_READER_WAIT_S
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no program has the FIFO open for reading
                raise
            if time.monotonic() >= deadline:
                raise SpecError(
                    f"{option} {path} is a FIFO that no program reads (waited {FIFO_READER_WAIT_S:g} s): start "
                    f"its reader first (e.g. cat {path} &), or name a regular file"
                ) from exc
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd


def _encoded(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def _replace_atomically(target: Path, text: str | bytes, mode: int | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_encoded(text))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:  # Ctrl-C included: no temporary file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
