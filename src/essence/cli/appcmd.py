"""``essence app``: start the Streamlit app (bound to 127.0.0.1 unless told otherwise).

On loopback the app also accepts only loopback host names (``server.allowedHosts``), so a web page that
rebinds its own domain to 127.0.0.1 (DNS rebinding) cannot open the app's WebSocket. Bound beyond loopback it
warns: the app has no accounts, and the host names it is reached by are the user's to allow (SECURITY.md).

Streamlit runs in a session of its own. Stopped by SIGTERM, SIGINT (Ctrl-C) or SIGHUP, ``essence app`` stops
the server and every process under it (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S` seconds), says so in
one line on stderr, and exits with 128 + the signal's number; the port is free for a restart.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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


# How long the server is given to shut down on a signal before it and its children are killed.
STOP_GRACE_S = 5.0
# The signals that stop the app (those that exist here: Windows has no SIGHUP).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


class _Stopped(BaseException):
    """Raised in the main thread by a stop signal (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """While inside, SIGTERM, SIGINT and SIGHUP raise :class:`_Stopped` (the previous handlers come back after).

    A signal the process was told to ignore stays ignored (``nohup essence app``, ``essence app &``).
    """

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        with contextlib.suppress(ValueError, OSError):  # not the main thread: the default handlers stay
            previous[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _process_table() -> dict[int, tuple[int, str]] | None:
    """Each live process's parent and start time (``pid → (ppid, start)``) from ``/proc``; None without it."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    table = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:
            continue
        if fields[0] != b"Z":  # a zombie has ended already
            table[int(name)] = (int(fields[1]), fields[19].decode())
    return table


def _descendants(pid: int) -> dict[int, str]:
    """Every process under ``pid`` (children, grandchildren...) with its start time, where ``/proc`` says."""
    table = _process_table() or {}
    found: dict[int, str] = {}
    parents = {pid}
    while parents:
        children = {p: start for p, (ppid, start) in table.items() if ppid in parents and p not in found}
        found.update(children)
        parents = set(children)
    return found


def _signal_all(proc: subprocess.Popen, others: dict[int, str], sig: int) -> None:
    """Send ``sig`` to the server's process group and to each of ``others`` still alive (the same process: the
    start time is checked, so a reused pid is left alone)."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, sig)  # the server leads a session, hence a group, of its own
    elif proc.poll() is None:  # no process groups here: the server alone
        proc.send_signal(sig)
    table = _process_table() or {}
    for pid, start in others.items():
        if table.get(pid, (0, None))[1] == start:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)


def _alive(others: dict[int, str]) -> dict[int, str]:
    table = _process_table() or {}
    return {pid: start for pid, start in others.items() if table.get(pid, (0, None))[1] == start}


def stop_server(proc: subprocess.Popen) -> int:
    """Stop the server and every process under it: SIGTERM, then SIGKILL after :data:`STOP_GRACE_S` seconds.

    Returns:
        How many processes under the server had to be stopped with it.
    """
    others = _descendants(proc.pid)
    _signal_all(proc, others, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and (proc.poll() is None or _alive(others)):
        others.update(_descendants(proc.pid))  # one started while shutting down
        time.sleep(0.05)
    if proc.poll() is None or _alive(others):
        _signal_all(proc, others, getattr(signal, "SIGKILL", signal.SIGTERM))
    proc.wait()
    return len(others)


def run_streamlit(cmd: list[str]) -> int:
    """Run Streamlit; returns its exit status (128 + N when a signal N ended it).

    A stop signal to this process (SIGTERM, SIGINT, SIGHUP) stops the server and every process under it
    (:func:`stop_server`) and is reported in one line; SIGINT then ends the command as Ctrl-C does (status
    130), the others with 128 + their number.
    """
    proc: subprocess.Popen | None = None
    with _stop_signals():
        try:
            proc = subprocess.Popen(cmd, env=dict(os.environ), start_new_session=True)
            code = proc.wait()
        except (_Stopped, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, _Stopped) else int(signal.SIGINT)
            for sig in STOP_SIGNALS:  # a second Ctrl-C must not leave the server half-stopped
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(sig, signal.SIG_IGN)
            if proc is not None:
                children = stop_server(proc)
                under = f" and the {children} processes it started" if children else ""
                sys.stderr.write(
                    f"stopped the app on {signal.Signals(signum).name}: the Streamlit server (pid {proc.pid})"
                    f"{under} ended; its port is free\n"
                )
                sys.stderr.flush()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt from None
            return 128 + signum
    return 128 - code if code < 0 else code


def run_app(ctx: typer.Context) -> None:
    """Open the app on the bundled demo (Streamlit options pass through, e.g. --server.port 8600)."""
    extra = list(ctx.args)
    warning = exposure_warning(extra)
    if warning:
        typer.echo(warning, err=True)
    code = run_streamlit(streamlit_command(extra))
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``app`` to the root app: its unknown options are Streamlit's, passed through."""
    app.command("app", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(run_app)
