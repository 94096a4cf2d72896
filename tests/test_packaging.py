"""Packaging: every subpackage is listed (an unlisted one is silently left out of the wheel), and the CLI
registers the commands of DESIGN §4."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
EXCLUDED_PARTS = {"__pycache__", "tests"}

COMMANDS = ["app", "demo", "profile", "precompute", "triage", "experts", "diagnose", "compare", "explain",
            "layers", "report", "store"]  # fmt: skip


def package_folders() -> dict[str, Path]:
    """Every folder holding an ``__init__.py`` under the mapped roots, by its installed package name."""
    found = {}
    for package, folder in SETUPTOOLS["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if EXCLUDED_PARTS & set(rel.parts):
                continue
            found[".".join([package, *rel.parts])] = init.parent
    return found


def test_every_package_folder_is_listed():
    listed = set(SETUPTOOLS["packages"])
    folders = package_folders()
    assert {"essence", "essence.core", "essence.cli"} <= set(folders)
    missing = sorted(set(folders) - listed)
    assert missing == [], f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_every_listed_package_exists():
    folders = package_folders()
    ghosts = sorted(set(SETUPTOOLS["packages"]) - set(folders))
    assert ghosts == [], f"{ghosts} are listed in pyproject.toml but have no folder with __init__.py"


def test_help_lists_the_commands_of_the_design():
    out = subprocess.run(
        [sys.executable, "-m", "essence.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()}
    missing = [c for c in COMMANDS if c not in listed]
    assert missing == [], f"`essence --help` does not list {missing}"
