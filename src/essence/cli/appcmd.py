"""``essence app``: start the Streamlit app (bound to 127.0.0.1 unless told otherwise).

On loopback the app also accepts only loopback host names (``server.allowedHosts``), so a web page that
rebinds its own domain to 127.0.0.1 (DNS rebinding) cannot open the app's WebSocket. Bound beyond loopback it
warns: the app has no accounts, and the host names it is reached by are the user's to allow (SECURITY.md).
"""

from __future__ import annotations

import ipaddress
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


# Host names a browser uses for an app on this machine; any other Host header is refused on the WebSocket.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _option(extra: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` among Streamlit's options (the last one given)."""
    value = None
    for i, arg in enumerate(extra):
        if arg == name and i + 1 < len(extra):
            value = extra[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def is_loopback(address: str) -> bool:
    """Whether a ``--server.address`` binds this machine only (``""`` binds every interface)."""
    host = address.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def streamlit_command(extra: list[str]) -> list[str]:
    """The ``streamlit run`` command line, with safe defaults that the user's options may override."""
    defaults = {
        "--server.address": "127.0.0.1",
        "--server.maxUploadSize": str(UPLOAD_LIMIT_MB),
        "--browser.gatherUsageStats": "false",
        "--server.fileWatcherType": "none",
        "--client.toolbarMode": "viewer",  # no developer menu or "Deploy" button for clinicians
    }
    given = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    cmd = [sys.executable, "-m", "streamlit", "run", str(entry_file())]
    for key, value in defaults.items():
        if key not in given:
            cmd += [key, value]
    address = _option(extra, "--server.address")
    hosts_chosen = "--server.allowedHosts" in given or os.environ.get("STREAMLIT_SERVER_ALLOWED_HOSTS")
    if not hosts_chosen and (address is None or is_loopback(address)):
        for host in LOOPBACK_HOSTS:
            cmd += ["--server.allowedHosts", host]
    return cmd + list(extra)


def exposure_warning(extra: list[str]) -> str | None:
    """The one-line warning for an app bound beyond loopback, or ``None``."""
    address = _option(extra, "--server.address")
    if address is None or is_loopback(address):
        return None
    return (
        f"warning: the app will listen on {address or 'every interface'!r}, reachable from other machines; it has "
        "no accounts and accepts any Host header unless you pass --server.allowedHosts NAME: serve it behind a "
        "reverse proxy with authentication, TLS and a Host check, or keep it on 127.0.0.1 (see SECURITY.md)"
    )


def run_streamlit(cmd: list[str]) -> int:
    """Run Streamlit; returns its exit status (128 + N when a signal N ended it)."""
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached Streamlit too (same process group): let it shut down, then report the interrupt.
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        raise
    return 128 - code if code < 0 else code


def register(app: typer.Typer) -> None:
    @app.command(
        "app",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def run_app(ctx: typer.Context) -> None:
        """Open the app on the bundled demo (Streamlit options pass through, e.g. --server.port 8600)."""
        extra = list(ctx.args)
        warning = exposure_warning(extra)
        if warning:
            typer.echo(warning, err=True)
        code = run_streamlit(streamlit_command(extra))
        if code:
            raise typer.Exit(code)
