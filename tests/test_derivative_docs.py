"""The docstring examples of the derivative engine run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["estimate", "hessian", "higher", "hvp", "matrix_free", "params"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"gradgraph.derivatives.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
