"""Opening a user's files: only regular files are read, and JSON is read without trusting its shape.

Every loader reads what a user names (a dataset file, an image, a recipe, a model card, weights). Two families of
input end badly if read naively:

- *Special files.* ``open()`` on a FIFO blocks until a writer appears (forever, for a symlink to a FIFO in a
  dataset folder); a character device (``/dev/zero``, ``/dev/urandom``) never ends. :func:`regular_file` checks
  with ``os.stat`` (following links, as ``open`` would) that the path is a regular file before anything opens
  it, and names a symlink loop as one rather than as a missing file.
- *JSON that is valid but hostile.* Nesting 100,000 deep makes the decoder raise ``RecursionError``; a number of
  5,000 digits raises ``ValueError``; a file in Latin-1 raises ``UnicodeDecodeError``. :func:`read_json` turns
  each into one :class:`EssenceError` naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from essence.core.base.errors import EssenceError

# A recipe or a card is a few hundred bytes; a JSON file far larger than this is not one.
MAX_JSON_BYTES = 16 * 1024 * 1024


def regular_file(path: str | os.PathLike[str], what: str, error: type[EssenceError] = EssenceError) -> Path:
    """Check that ``path`` names a regular file (links followed) before it is opened.

    Args:
        path: the file a user named.
        what: what it is meant to be, for the message (``"the image"``, ``"npz:PATH"``).
        error: the :class:`EssenceError` subclass to raise.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        EssenceError (``error``): the path does not exist, is a symlink loop, a folder, a FIFO, a device or a
            socket, or cannot be examined.
    """
    p = Path(path)
    try:
        info = os.stat(p)
    except FileNotFoundError as exc:
        raise error(f"{p}: file not found; check the path of {what}") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(
                f"{p} is a symlink loop (a link that leads back to itself): point {what} at a file"
            ) from exc
        raise error(f"{p} cannot be read ({exc.strerror or exc}); check the path of {what}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{p} is a folder, but {what} must be a file: name a file inside it")
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "not a regular file"
        )
        raise error(
            f"{p} is {kind}, which is never read as data (it could block forever): point {what} at a file"
        )
    return p


def read_json(path: str | os.PathLike[str], what: str, error: type[EssenceError] = EssenceError) -> Any:
    """Read a small UTF-8 JSON file whatever it holds, with one-line errors.

    Args:
        path: the file.
        what: what it is meant to be (``"preprocessing recipe"``, ``"model card"``), for the message.
        error: the :class:`EssenceError` subclass to raise.

    Returns:
        The decoded value (any JSON type: the caller checks it).

    Raises:
        EssenceError (``error``): not a regular file, larger than :data:`MAX_JSON_BYTES`, not UTF-8, not JSON,
            nested too deep or holding a number too long to convert.
    """
    p = regular_file(path, f"the {what}", error)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise error(f"{p}: the {what} cannot be read ({exc.strerror or exc}); check the file") from exc
    if len(raw) > MAX_JSON_BYTES:
        raise error(f"{p}: the {what} is over {MAX_JSON_BYTES >> 20} MB, which no {what} is: check the file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{p}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from exc
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise error(
            f"{p}: the {what} is nested too deeply to be JSON a person wrote; check the file"
        ) from exc
    except ValueError as exc:  # JSONDecodeError, and numbers over Python's digit limit
        raise error(f"{p}: not valid {what} JSON ({exc}); check the file") from exc
