"""The docstring examples of the derivative engine run and print what they say."""

from __future__ import annotations

import doctest

import pytest

from gradgraph.derivatives import estimate, hessian, higher, hvp, matrix_free, params


@pytest.mark.parametrize(
    "module", [estimate, hessian, higher, hvp, matrix_free, params], ids=str
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
