"""Commands of this group are registered here."""

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
