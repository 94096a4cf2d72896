"""The ``essence`` command line: every analysis of the app, scriptable, with ``--json`` output.

Errors a user can cause print one line on stderr naming the problem and the fix, and exit with status 2.
"""

from __future__ import annotations

import os
import sys
import warnings

import click
import typer

from essence.core.errors import EssenceError

try:  # typer ≥ 0.20 vendors its own click: its exceptions are not click's
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

_NO_ARGS = tuple({getattr(m, "NoArgsIsHelpError", None) for m in (click.exceptions, _typer_click)} - {None})
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
    from essence.cli import analyses, appcmd, compare, demo, explain, profile, report, store

    for module in (appcmd, demo, profile, store, analyses, compare, explain, report):
        module.register(app)


_register()


def _fail(message: str, code: int = 2) -> None:
    first = " ".join(str(message).split())
    sys.stderr.write(f"error: {first}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning user errors into one line and exit status 2."""
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    try:
        app(args=argv, standalone_mode=False, prog_name="essence")
    except EssenceError as exc:
        _fail(str(exc))
    except _NO_ARGS:
        app(args=["--help"], standalone_mode=False, prog_name="essence")
        sys.exit(0)
    except _NO_SUCH_OPTION as exc:
        where = f"essence {exc.ctx.command.name} --help" if getattr(exc, "ctx", None) else "essence --help"
        _fail(f"{exc.format_message()} (see `{where}`)")
    except _USAGE as exc:
        _fail(f"{exc.format_message()} (see --help)")
    except _ABORT:
        _fail("aborted", 130)
    except _EXIT as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except KeyboardInterrupt:
        _fail("interrupted; nothing half-written was kept", 130)
    except MemoryError:
        _fail("out of memory: lower --batch-size, or use fewer or smaller images")
    except Exception as exc:  # a bug of ours, not the user's input: one line, the traceback on request
        if os.environ.get("ESSENCE_DEBUG"):
            raise
        _fail(
            f"internal error {type(exc).__name__}: {exc} (a bug in Essence: rerun with ESSENCE_DEBUG=1 and report "
            "the traceback)",
            1,
        )
