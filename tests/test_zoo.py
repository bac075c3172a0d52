"""The model zoo (tests/zoo.py) on the propagation path, exact in float64.

For every model: ``diagonal_method`` says "propagate", and the propagated
float64 diagonal equals Hessian-vector-product rows on a few entries of every
parameter tensor (first, last and random ones).
"""

from __future__ import annotations

import pytest
import torch

from gradgraph.derivatives.propagation import (
    diagonal_method,
    propagated_hessian_diagonal,
)

from .zoo import BUILDERS, build, picks, reference_entries

# relative error of the picked entries against HVP rows
TOLERANCE = 1e-8
# ViT and LLaMA compute their softmax (LLaMA its RMSNorm too) and T5 its RMS
# norm's variance in float32 even in a float64 model, so both sides carry
# float32 roundings there (with those casts made float64, all three agree to
# 1e-13: see the zoo survey in the issue 14 notes)
FLOAT32_INSIDE = {"vit": 1e-5, "llama": 1e-5, "t5": 1e-5}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_zoo_diagonal_is_exact_in_float64(name):
    case = build(name, torch.float64)
    assert diagonal_method(case.loss(), case.params) == "propagate"
    got = propagated_hessian_diagonal(case.loss(), case.params)
    chosen = picks(case.params)
    expected = reference_entries(case, chosen)
    got = torch.cat([got[n].reshape(-1)[chosen[n]] for n in chosen])
    expected = torch.cat(list(expected.values()))
    assert expected.abs().max() > 0
    error = ((got - expected).norm() / expected.norm()).item()
    assert error <= FLOAT32_INSIDE.get(name, TOLERANCE), error


class _Loss(torch.nn.Module):
    """A zoo case's loss as a module, so functional_call can swap its weights."""

    def __init__(self, case):
        super().__init__()
        self.model, self.loss = case.model, case.loss

    def forward(self):
        return self.loss()


def test_reference_entries_are_the_dense_diagonal():
    """The HVP-row reference itself, on a small model, against torch's Hessian."""
    case = build("gru", torch.float64)
    params = case.params
    chosen = picks(params)
    expected = reference_entries(case, chosen)
    wrapped = _Loss(case)
    for name in ("body.weight_hh_l0", "body.bias_ih_l1", "head.weight"):
        p = params[name]

        def loss_of(value, name=name):
            swapped = {f"model.{k}": v for k, v in params.items()}
            swapped[f"model.{name}"] = value
            return torch.func.functional_call(wrapped, swapped, ())

        dense = torch.autograd.functional.hessian(loss_of, p.detach())
        diagonal = dense.reshape(p.numel(), p.numel()).diagonal()
        torch.testing.assert_close(expected[name], diagonal[chosen[name]])
