"""Core's errors in the command line's words: a parameter named as the option that sets it.

Core is a library: its errors name the Python parameter that fixes them (``allow_empty=True``, ``size=(H, W)``,
``layer_b=``), as captum's and cleanlab's do. A user of ``essence`` sets the same thing with a flag, so the CLI
rewrites each ``name=value`` whose parameter an option of the running command sets: ``--allow-empty``,
``--size H W``, ``--layer-b``. A parameter named alone, without ``=``, is left as it is: it may be a key of a
file (a card's ``class_names``) rather than the option. The rule is general (``foo_bar`` is ``--foo-bar``), with :data:`RENAMED` for
the few options named otherwise; a parameter no option of the command sets, or one inside a call
(``torch.load(weights_only=True)``), is left as Python.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# ``name=value``: the value a tuple (one level of nesting), a list, a quoted string (with the alternatives that
# follow it: ``'feature' or 'token'``) or a bare word; or nothing (``pass layer_b=``), when a space, punctuation
# or the end follows the ``=``. A bare word runs to its end (a full stop after it ends the sentence); one
# followed by ``(`` is a call (``preprocessing=Preprocessing(...)``), left as it is.
PARAMETER = re.compile(
    r"(?<![\w.\-])(?P<name>[a-z][a-z0-9_]*)="
    r"(?:(?P<value>\((?:[^()]|\([^()]*\))*\)|\[[^\]]*\]"
    r"|(?:'[^']*'|\"[^\"]*\")(?:(?:,\s*|\s+or\s+)(?:'[^']*'|\"[^\"]*\"))*"
    r"|[\w.+\-/:~]*\w(?![\w(]|\.\w))"
    r"|(?=[\s,.;:)\]]|$))"
)
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")

# Core parameters set by an option of another name, the first the command has (every other parameter is its
# option's: ``batch_size`` is ``--batch-size``). ``top_k`` is ``triage --units`` (its ``--top`` counts rows) and
# ``explain --top``.
RENAMED = {
    "allow_partial": ("--partial",),
    "cls": ("--class",),
    "keep_instances": ("--instances",),
    "layer_a": ("--layer",),
    "on_bad_image": ("--skip-bad-images",),
    "top_k": ("--units", "--top"),
}
# Core's name for the model a command reads, and the option that gives it.
SPECS = {"the model spec": "--model"}
# The values that turn a switch on (``on_bad_image='skip'`` is ``--skip-bad-images``).
SWITCHED_ON = {"", "True", "'skip'", '"skip"'}


def _inside_call(text: str, at: int) -> bool:
    """Whether position ``at`` of ``text`` lies among a call's arguments (``f(..., x=1)``): Python, not a fix."""
    depth = 0
    for i in range(at - 1, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            if depth == 0:
                return i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")
            depth -= 1
    return False


def _unquoted(word: str) -> str:
    word = word.strip()
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "'\"" and not any(c.isspace() for c in word):
        return word[1:-1]
    return word


def as_typed(value: str) -> str:
    """A Python value as it is typed after the option: ``(H, W)`` → ``H W``, ``['a', 'b']`` → ``a,b``,
    ``'cpu'`` → ``cpu``."""
    if value.startswith("(") and value.endswith(")"):
        return " ".join(_unquoted(v) for v in value[1:-1].split(",") if v.strip())
    if value.startswith("[") and value.endswith("]"):
        return ",".join(_unquoted(v) for v in value[1:-1].split(",") if v.strip())
    return QUOTED.sub(
        lambda m: _unquoted(m.group()), value
    )  # ``'feature' or 'token'`` → ``feature or token``


def in_cli_words(text: str, options: Mapping[str, bool]) -> str:
    """``text`` with each parameter that one of ``options`` sets written as that option.

    Args:
        text: an error message of core.
        options: the long options of the command that ran, each mapped to whether it is a switch (takes no
            value): ``{"--allow-empty": True, "--size": False, ...}``.

    Returns:
        The message a user of the command line reads.

    Examples:
        >>> in_cli_words("allow empty classes (allow_empty=True)", {"--allow-empty": True})
        'allow empty classes (--allow-empty)'
        >>> in_cli_words("or give the recipe a size (size=(224, 224))", {"--size": False})
        'or give the recipe a size (--size 224 224)'
        >>> in_cli_words("torch.load(weights_only=True) refuses it", {"--weights": False})
        'torch.load(weights_only=True) refuses it'
        >>> in_cli_words("use batch_size=8 (or less)", {"--batch-size": False})
        'use --batch-size 8 (or less)'
        >>> in_cli_words("it is a FIFO: point the model spec at a file", {"--model": False})
        'it is a FIFO: point the model spec (--model) at a file'
        >>> in_cli_words("card_names.card.json: class_names must be a list", {"--class-names": False})
        'card_names.card.json: class_names must be a list'
    """

    def rewrite(match: re.Match[str], within: str) -> str:
        name, value = match["name"], match.groupdict().get("value") or ""
        flag = next((f for f in RENAMED.get(name, ("--" + name.replace("_", "-"),)) if f in options), None)
        if flag is None or _inside_call(within, match.start()):
            return match.group()
        if options[flag]:  # a switch: only its being on can be typed
            return flag if value in SWITCHED_ON else match.group()
        typed = as_typed(value)
        return f"{flag} {typed}" if typed else flag

    for phrase, flag in SPECS.items():
        if flag in options:
            text = text.replace(phrase, f"{phrase} ({flag})")
    return PARAMETER.sub(lambda m: rewrite(m, text), text)
