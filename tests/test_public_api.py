"""The public surface is what it says: every name in ``__all__`` resolves to the same kind of object on every
access, whatever was imported before it, and no public name is shadowed by a submodule of the same name.

Runs in a fresh interpreter so that no earlier test has already imported the submodules (the bug this guards
against showed only on the *second* access of a lazily imported name).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PACKAGES = ("essence.core", "essence.storage")

PROBE = r"""
import importlib, inspect, json, pkgutil, sys, types
pkg = importlib.import_module(sys.argv[1])
def kind(obj):
    if isinstance(obj, types.ModuleType):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "value"
first = {name: kind(getattr(pkg, name)) for name in pkg.__all__}
# Import every submodule, as an application eventually does, then ask again.
for info in pkgutil.iter_modules(pkg.__path__):
    importlib.import_module(f"{pkg.__name__}.{info.name}")
second = {name: kind(getattr(pkg, name)) for name in pkg.__all__}
from_import = {}
for name in pkg.__all__:
    ns = {}
    exec(f"from {pkg.__name__} import {name} as obj", ns)
    from_import[name] = kind(ns["obj"])
submodules = sorted(info.name for info in pkgutil.iter_modules(pkg.__path__))
print(json.dumps({"first": first, "second": second, "from_import": from_import, "submodules": submodules}))
"""


def _probe(package: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, package], capture_output=True, text=True, timeout=240, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=PACKAGES)
def surface(request) -> tuple[str, dict]:
    return request.param, _probe(request.param)


def test_every_public_name_keeps_its_kind_on_every_access(surface):
    package, found = surface
    assert found["first"] == found["second"] == found["from_import"], package


def test_no_public_name_is_a_module(surface):
    package, found = surface
    assert [n for n, k in found["first"].items() if k == "module"] == [], package


def test_no_public_name_shares_its_name_with_a_submodule(surface):
    package, found = surface
    assert sorted(set(found["first"]) & set(found["submodules"])) == [], package


def test_the_design_names_are_the_kinds_the_docs_say():
    """DESIGN §4: the verbs are functions, results and quantities/distributions are classes."""
    found = _probe("essence.core")["second"]
    functions = {
        "load_model",
        "load_dataset",
        "influence",
        "class_profiles",
        "deviation_scores",
        "expert_sweep",
        "diagnose",
        "compare_models",
        "explain",
        "suggest_layer",
    }
    classes = {
        "ClassScore",
        "Comparative",
        "PredictedClass",
        "OwnLabel",
        "Instance",
        "ClassConditional",
        "WholeDataset",
        "LinearPath",
        "GaussianNoise",
        "Influence",
        "ClassProfiles",
        "Triage",
        "ExpertSweep",
        "Diagnosis",
        "Comparison",
        "Explanation",
        "LayerSuggestion",
        "LoadedModel",
    }
    assert {n: found.get(n) for n in functions} == dict.fromkeys(functions, "function")
    assert {n: found.get(n) for n in classes} == dict.fromkeys(classes, "class")


def test_results_are_frozen_dataclasses():
    import dataclasses

    import essence.core as core

    for name in (
        "Influence",
        "ClassProfiles",
        "Triage",
        "ExpertSweep",
        "Diagnosis",
        "Comparison",
        "Explanation",
    ):
        cls = getattr(core, name)
        assert dataclasses.is_dataclass(cls), name
        assert cls.__dataclass_params__.frozen, name
        assert "[" in (cls.__doc__ or ""), f"{name}'s docstring gives no tensor shapes"


def test_probe_sees_a_shadowed_name(tmp_path):
    """The probe itself can fail: a package whose function shares a submodule's name is caught."""
    pkg = tmp_path / "shadowpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "__all__ = ['thing']\n"
        "def __getattr__(name):\n"
        "    import importlib\n"
        "    if name == 'thing':\n"
        "        return importlib.import_module('shadowpkg.thing').thing\n"
        "    raise AttributeError(name)\n"
    )
    (pkg / "thing.py").write_text("def thing():\n    return 1\n")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "shadowpkg"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["first"]["thing"] == "function"
    assert found["second"]["thing"] == "module"  # the bug: a submodule import rebinds the name
    assert "thing" in found["submodules"]
