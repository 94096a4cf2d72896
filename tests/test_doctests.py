"""Every public name of ``essence.core`` carries an ``Examples:`` section, and its examples run as written.

One test per name of ``essence.core.__all__``: the object's own docstring (not its methods') is run with
:mod:`doctest` in the namespace of the module that defines it, as ``python -m doctest`` would. A public function
or class without an ``Examples:`` section fails. A last test shows the runner fails on an example that is wrong.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import io
from typing import Any

import pytest

import essence.core

# ``...`` stands for the rest of a long message or a long list; line breaks in printed output do not matter.
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def run_examples(obj: Any, name: str) -> tuple[doctest.TestResults, str]:
    """Run the examples of ``obj``'s own docstring in its defining module's namespace.

    Returns:
        The counts (failed, attempted) and the runner's report of any failure.
    """
    module = importlib.import_module(obj.__module__)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    for test in finder.find(obj, name, module=module, globs=dict(vars(module))):
        runner.run(test, out=report.write)
    return runner.summarize(verbose=False), report.getvalue()


@pytest.mark.parametrize("name", essence.core.__all__)
def test_public_name_has_examples_that_run(name: str) -> None:
    obj = getattr(essence.core, name)
    doc = inspect.getdoc(obj) or ""
    assert "Examples:" in doc, (
        f"essence.core.{name} ({obj.__module__}) has no Examples: section in its docstring"
    )
    results, report = run_examples(obj, name)
    assert results.attempted > 0, f"the Examples: section of essence.core.{name} holds no >>> example"
    assert results.failed == 0, report


def _wrongly_documented(x: int) -> int:
    """Twice ``x``.

    Examples:
        >>> _wrongly_documented(2)
        5
    """
    return 2 * x


def test_the_runner_fails_on_a_wrong_example() -> None:
    results, report = run_examples(_wrongly_documented, "_wrongly_documented")
    assert results == doctest.TestResults(failed=1, attempted=1)
    assert "Expected:\n    5\nGot:\n    4" in report
