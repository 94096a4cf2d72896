"""The ``essence`` command line: every analysis of the app, scriptable, with ``--json`` output.

Errors a user can cause print one line on stderr naming the problem and the fix, and exit with status 2.
Ctrl-C prints one line and exits with status 130 (also during start-up); results are written atomically, so
an interrupted command leaves nothing half-written. Warnings raised on the way (numpy's, torch's, the store's,
the user's model's) never add lines before an error; after a success each is shown once as ``warning: ...``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from typing import Any, NoReturn, TextIO

INTERRUPTED = "interrupted; nothing half-written was kept"


def _exit_interrupted() -> NoReturn:
    sys.stderr.write(f"error: {INTERRUPTED}\n")
    raise SystemExit(130)


# Start-up (typer, the command modules) is quick, and PyTorch is imported only when a command runs; Ctrl-C
# during either is one line too, not a traceback.
try:
    import click
    import typer

    from essence.core.base.errors import EssenceError

    try:  # typer ≥ 0.20 vendors its own click: its exceptions are not click's
        from typer._click import exceptions as _typer_click
    except ImportError:  # pragma: no cover - older typer uses click itself
        _typer_click = click.exceptions

    _NO_ARGS = tuple(
        {getattr(m, "NoArgsIsHelpError", None) for m in (click.exceptions, _typer_click)} - {None}
    )
    _NO_SUCH_OPTION = (click.exceptions.NoSuchOption, _typer_click.NoSuchOption)
    _USAGE = (click.exceptions.UsageError, _typer_click.UsageError)
    _ABORT = (click.exceptions.Abort, typer.Abort)
    _EXIT = (click.exceptions.Exit, typer.Exit)

    app = typer.Typer(
        name="essence",
        help="Debug image classifiers with influence-directed explanations (Leino et al., 2018).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )

    def _register() -> None:
        # One module per group of commands; each adds its commands to the root app.
        from essence.cli import analyses, appcmd, card, compare, demo, explain, profile, report, store

        for module in (appcmd, demo, profile, store, analyses, compare, explain, report, card):
            module.register(app)

    _register()
except KeyboardInterrupt:
    _exit_interrupted()


# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-byte CSI), and the bidirectional overrides
# and isolates that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with control characters shown as Python escapes (``\\x1b``, ``\\r``, ``\\u202e``), not obeyed.

    Class names, file names and notes come from data: printed raw, an escape sequence in one could move the
    cursor, rewrite what the terminal shows, set its title or plant a hyperlink.
    """
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TerminalText:
    """The CLI's stdout: data made :func:`visible`, and a reader that went away tolerated.

    ``essence profile --json F | head -1`` closes the pipe after one line; the command still finishes its
    work and writes ``F`` (later output is discarded) instead of dying on ``BrokenPipeError``. ``isatty()``
    answers ``False``: what passes here is filtered text, so click and rich emit no styling sequences of their
    own (they would be shown escaped).

    Args:
        stream: the real stdout.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._reader_gone = False

    def write(self, text: Any) -> int:
        if not isinstance(text, str):  # bytes: the text stream's own TypeError (click probes with b"")
            return self._stream.write(text)
        if not self._reader_gone:
            try:
                self._stream.write(visible(text))
            except BrokenPipeError:
                self._discard_from_now_on()
        return len(text)

    def flush(self) -> None:
        if not self._reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._discard_from_now_on()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _discard_from_now_on(self) -> None:
        self._reader_gone = True
        # Point the descriptor at /dev/null so that what is still buffered flushes quietly at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError):
            pass


def _say(kind: str, message: str) -> None:
    line = visible(" ".join(str(message).split()))
    try:
        sys.stderr.write(f"{kind}: {line}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass


def command_options(argv: list[str]) -> dict[str, bool]:
    """The long options of the command ``argv`` names, each mapped to whether it is a switch (every command's
    options when it names none)."""
    command = typer.main.get_command(app)
    words = list(argv)
    while words and words[0] in getattr(command, "commands", {}):
        command = command.commands[words.pop(0)]  # type: ignore[attr-defined]
    found: dict[str, bool] = {}
    pending = [command]
    while pending:
        current = pending.pop()
        pending += list(getattr(current, "commands", {}).values())
        for param in current.params:
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("--"):
                    found[name] = bool(getattr(param, "is_flag", False))
    return found


def cli_wording(exc: Exception, argv: list[str] | None = None) -> str:
    """An error of core in the command line's words: a parameter named as the option that sets it.

    Args:
        exc: the error.
        argv: the command line that ran (default: this process's), whose command's options are named.
    """
    from essence.cli.wording import in_cli_words

    # A ClassOrderError exists only once the cards are imported: wording an earlier error imports neither them
    # nor PyTorch.
    cards = sys.modules.get("essence.core.inputs.cards")
    text = str(exc)
    if cards is not None and isinstance(exc, cards.ClassOrderError):
        text = text.replace("in output order (class_names, e.g. ", "in output order (--class-names ")
        text += " (`essence card` writes one from --class-names)"
    return in_cli_words(text, command_options(sys.argv[1:] if argv is None else argv))


def _run(argv: list[str] | None) -> tuple[int, str | None]:
    """Run the app; returns the exit status and the error line (``None`` when there is none to print)."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="essence")
    except EssenceError as exc:
        return 2, cli_wording(exc, argv)
    except _NO_ARGS:
        app(args=["--help"], standalone_mode=False, prog_name="essence")
        return 0, None
    except _NO_SUCH_OPTION as exc:
        command = exc.ctx.command.name if getattr(exc, "ctx", None) else None
        where = f"essence {command} --help" if command and command != "essence" else "essence --help"
        return 2, f"{exc.format_message()} (see `{where}`)"
    except _USAGE as exc:
        return 2, f"{exc.format_message()} (see --help)"
    except _ABORT:
        return 130, INTERRUPTED
    except _EXIT as exc:
        code = getattr(exc, "exit_code", 0)
    except KeyboardInterrupt:
        return 130, INTERRUPTED
    except MemoryError:
        return 2, "out of memory: lower --batch-size, or use fewer or smaller images"
    except Exception as exc:  # a bug of ours, not the user's input: one line, the traceback on request
        if os.environ.get("ESSENCE_DEBUG"):
            raise
        return 1, (
            f"internal error {type(exc).__name__}: {exc} (a bug in Essence: rerun with ESSENCE_DEBUG=1 and report "
            "the traceback)"
        )
    # Without standalone mode typer returns the status of ``typer.Exit`` (and of Ctrl-C, as 130).
    if isinstance(code, int) and not isinstance(code, bool) and code:
        return code, INTERRUPTED if code == 130 else None
    return 0, None


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen: set[str] = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if text and text not in seen:
            seen.add(text)
            _say("warning", text)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI; user errors are one line and exit status 2, Ctrl-C exit status 130."""
    real_stdout = sys.stdout
    sys.stdout = TerminalText(real_stdout)  # type: ignore[assignment]
    try:
        with warnings.catch_warnings(record=True) as caught:
            if not sys.warnoptions:  # a user's -W / PYTHONWARNINGS choice stands
                warnings.simplefilter("default")
            warnings.filterwarnings("ignore", message=".*TypedStorage.*")
            code, error = _run(argv)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
    except KeyboardInterrupt:
        code, error = 130, INTERRUPTED
    finally:
        sys.stdout = real_stdout
    if error is not None:
        _say("error", error)
    else:
        _show_warnings(caught)
    if code:
        sys.exit(code)
