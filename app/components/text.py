"""Text that comes from data (class names, notes, file names) shown as data, never as markup.

Streamlit renders markdown in titles, captions, messages and ``st.markdown``: a class folder named
``![x](https://…)`` would make every viewer's browser fetch that address. :func:`plain` escapes every character
markdown (and Streamlit's ``:icon:``/``:color[…]`` and ``$math$`` directives) gives a meaning to, and drops
control characters.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath

MARKDOWN_SPECIAL = "\\`*_{}[]<>#|~$!"  # meaningful anywhere in a line
LINE_START = "-+="  # meaningful only where a line starts (lists, headings)
# A colon that opens Streamlit's ``:emoji:``, ``:material/icon:`` or ``:color[text]`` ("demo:blurred" does not).
DIRECTIVE = re.compile(r":(?=[\w/-]+[:\[])")


def plain(text: object) -> str:
    """``text`` as it is, safe inside markdown: special characters escaped, control characters dropped.

    The text becomes one line (newlines are control characters), so only its first character can start a
    list or heading; a ``:`` that would open a Streamlit ``:icon:`` or ``:color[…]`` is escaped too. Readable characters (``.``, ``(``, ``-`` inside a line) stay as they are.
    """
    chars = printable(text)
    directives = {m.start() for m in DIRECTIVE.finditer(chars)}
    out = []
    for i, ch in enumerate(chars):
        if (
            ch in MARKDOWN_SPECIAL
            or (i == 0 and ch in LINE_START)
            or i in directives
            or (ch == "." and chars[:i].isdigit())
        ):
            out.append("\\")
        out.append(ch)
    return "".join(out)


def printable(text: object) -> str:
    """``text`` with control characters dropped (for places that show text as it is: options, tables)."""
    spaced = str(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return "".join(ch for ch in spaced if unicodedata.category(ch) not in ("Cc", "Cf"))


# What the library's messages advise on the command line, said as the switches the app's upload page has.
APP_SWITCHES = (
    (re.compile(r"pass --trust-pickle"), "tick “Trust this pickle”"),
    (re.compile(r"pass --skip-bad-images"), "tick “Skip unreadable images”"),
    (re.compile(r"--weights FILE(\.safetensors)?"), "a weights file"),
    (re.compile(r"use --model torchvision:ARCH"), "choose its architecture"),
)


def for_people(message: str, uploads: Path) -> str:
    """An error about an upload as the app's user can act on it.

    A path under ``uploads`` becomes its file name, the folder around it "the store's folder" (a server's
    layout is nobody's business in the browser), and command-line flags become the page's own switches.
    """
    root, home = str(uploads), str(uploads.parent)
    text = re.sub(re.escape(root) + r"(/[^\s'\",;:()]*)?", lambda m: PurePosixPath(m[1] or "").name, message)
    text = text.replace(home, "the store's folder")
    for pattern, switch in APP_SWITCHES:
        text = pattern.sub(switch, text)
    return text
