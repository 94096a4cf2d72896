"""Packaging: every subpackage is listed (an unlisted one is silently left out of the wheel), a wheel builds
without setuptools warnings and carries the demo weights, cards and migrations, and the CLI registers the
commands of DESIGN §4."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
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


WHEEL_SOURCES = ["pyproject.toml", "README.md", "src", "core", "storage", "app", "sample_data"]
BUILD_WARNINGS = ["BuildBackendWarning", "absent from the `packages`", "SetuptoolsDeprecationWarning"]


def build_wheel(tmp_path: Path) -> tuple[Path, str]:
    """Build the wheel from a copy of the sources (the build writes ``build/`` and ``*.egg-info`` in place)
    with the environment's own setuptools, offline; return the wheel and pip's whole output."""
    source = tmp_path / "src-copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")
    for name in WHEEL_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    (wheel,) = out.glob("essence-*.whl")
    return wheel, output


def test_wheel_builds_quietly_and_carries_the_data(tmp_path):
    wheel, output = build_wheel(tmp_path)
    noisy = [line for line in output.splitlines() if any(w in line for w in BUILD_WARNINGS)]
    assert noisy == [], "the wheel build warns:\n" + "\n".join(noisy)
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "essence/cli/__init__.py",
        "essence/core/__init__.py",
        "essence/storage/alembic.ini",
        "essence/storage/migrations/env.py",
        "essence/storage/migrations/script.py.mako",
        "essence/app/main.py",
    }
    for folder, pattern, prefix in [
        ("sample_data/models", "*.safetensors", "essence/sample_data/models/"),
        ("sample_data/models", "*.json", "essence/sample_data/models/"),
        ("storage/migrations/versions", "*.py", "essence/storage/migrations/versions/"),
    ]:
        files = sorted((ROOT / folder).glob(pattern))
        assert files, f"no {pattern} under {folder}"
        expected |= {prefix + f.name for f in files}
    missing = sorted(expected - names)
    assert missing == [], f"the wheel lacks {missing}: add them to [tool.setuptools.package-data]"
    assert not [n for n in names if "/tests/" in n or "__pycache__" in n]
