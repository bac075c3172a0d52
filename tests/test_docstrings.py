"""Every docstring example in the package runs and prints what it says.

The only place doctests run (no other test file calls doctest, and pytest has
no --doctest-modules), so each example runs once per suite.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import gradgraph

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(gradgraph.__path__, "gradgraph.")
    if not m.name.startswith("gradgraph.examples") and m.name != "gradgraph.__main__"
)


def test_modules_are_found():
    assert "gradgraph.graph" in MODULES and "gradgraph.derivatives.hvp" in MODULES


PACKAGES_WITHOUT_EXAMPLES = {"gradgraph.derivatives", "gradgraph.render"}  # re-exports


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name not in PACKAGES_WITHOUT_EXAMPLES:  # every module opens with an example
        assert result.attempted > 0, f"{name} has no docstring example"


def test_no_other_test_runs_doctests():
    """Doctests ran twice when test files called doctest.testmod themselves."""
    here = Path(__file__).resolve()
    for path in sorted(here.parent.glob("test_*.py")):
        if path != here:
            assert "doctest" not in path.read_text(), f"{path.name} runs doctests"
