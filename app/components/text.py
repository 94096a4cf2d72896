"""Text that comes from data (class names, notes, file names) shown as data, never as markup.

Streamlit renders markdown in titles, captions, messages and ``st.markdown``: a class folder named
``![x](https://…)`` would make every viewer's browser fetch that address. :func:`plain` escapes every character
markdown (and Streamlit's ``:icon:``/``:color[…]`` and ``$math$`` directives) gives a meaning to, and drops
control characters.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
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


# What the library's messages advise (its parameters), said as the switches the app's upload page has.
# A route only the command line has (a ``package.module:function`` factory) is said as the upload page's own.
APP_SWITCHES = (
    (
        re.compile(r"use the spec torchvision:ARCH or package\.module:function with weights=\S+"),
        "choose its architecture in the list and add it again",
    ),
    (
        re.compile(r"load the PyTorch model itself \(package\.module:function with weights=FILE\)"),
        "upload the PyTorch model's weights instead, with its architecture chosen in the list",
    ),
    (
        re.compile(r"or use package\.module:function with weights=FILE"),
        "or upload its weights with its architecture chosen in the list",
    ),
    (
        re.compile(
            r"use demo:blurred\|sharp, torchvision:ARCH with weights=FILE, "
            r"package\.module:function with weights=FILE, or an exported program PATH\.pt2 \(torch\.export\.save\)"
        ),
        "upload weights (a state_dict or .safetensors) with their architecture chosen in the list, or an "
        "exported program (.pt2, torch.export.save)",
    ),
    (
        re.compile(r"package\.module:function( with)?( weights=\S+)?"),
        "its weights with the architecture chosen in the list",
    ),
    (re.compile(r"pass trust_pickle=True"), "tick “Trust this pickle”"),
    (re.compile(r"pass (--skip-bad-images|on_bad_image='skip')"), "tick “Skip unreadable images”"),
    (re.compile(r"weights=FILE(\.safetensors)?"), "a weights file"),
    (re.compile(r"use the spec torchvision:ARCH"), "choose its architecture"),
    (
        re.compile(r"in output order \(class_names, e\.g\. "),
        "in output order (the model's “Class names” field, e.g. ",
    ),
)


def for_people(message: str, uploads: Path, labels: Mapping[str, str] | None = None) -> str:
    """An error about an upload as the app's user can act on it.

    A spec or path in ``labels`` (an upload's data spec, its weights file) becomes what the sidebar calls it;
    any other path under ``uploads`` becomes its file name, the folder around it "the store's folder" (a
    server's layout is nobody's business in the browser), and command-line flags become the page's own switches.
    """
    root, home = str(uploads), str(uploads.parent)
    text = message
    for spec, label in sorted((labels or {}).items(), key=lambda kv: -len(kv[0])):  # longest first
        if spec:
            text = text.replace(spec, label)
    text = re.sub(re.escape(root) + r"(/[^\s'\",;:()]*)?", lambda m: PurePosixPath(m[1] or "").name, text)
    text = text.replace(home, "the store's folder")
    for pattern, switch in APP_SWITCHES:
        text = pattern.sub(switch, text)
    return text
