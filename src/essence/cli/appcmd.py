"""``essence app``: start the Streamlit app (bound to 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

# The app size-checks uploads itself; the server's limit is kept in step with the same figure (MB).
from essence.app.limits import UPLOAD_LIMIT_MB


def entry_file() -> Path:
    import essence.app

    return Path(essence.app.__file__).with_name("main.py")


def streamlit_command(extra: list[str]) -> list[str]:
    """The ``streamlit run`` command line, with safe defaults that the user's options may override."""
    defaults = {
        "--server.address": "127.0.0.1",
        "--server.maxUploadSize": str(UPLOAD_LIMIT_MB),
        "--browser.gatherUsageStats": "false",
        "--server.fileWatcherType": "none",
    }
    given = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    cmd = [sys.executable, "-m", "streamlit", "run", str(entry_file())]
    for key, value in defaults.items():
        if key not in given:
            cmd += [key, value]
    return cmd + list(extra)


def register(app: typer.Typer) -> None:
    @app.command(
        "app",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def run_app(ctx: typer.Context) -> None:
        """Open the app on the bundled demo (Streamlit options pass through, e.g. --server.port 8600)."""
        cmd = streamlit_command(list(ctx.args))
        env = dict(os.environ)
        raise typer.Exit(subprocess.call(cmd, env=env))
