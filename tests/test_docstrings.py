"""Every docstring example in the package runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gradgraph

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(gradgraph.__path__, "gradgraph.")
    if not m.name.startswith("gradgraph.examples") and m.name != "gradgraph.__main__"
)


def test_modules_are_found():
    assert "gradgraph.graph" in MODULES and "gradgraph.derivatives.hvp" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
