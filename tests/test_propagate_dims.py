"""Negative dims: nodes save them as unsigned 64-bit ints (-1 as 2**64 - 1).

Taken ``% ndim`` as saved, a dim is right only when ``ndim`` divides ``2**64``
(2-D and 4-D values), so every rule that reads a saved dim is checked here on
3-D values against torch's dense Hessian.
"""

from __future__ import annotations

import pytest
import torch

from gradgraph.derivatives.propagation import (
    diagonal_method,
    propagated_hessian_diagonal,
)

F = torch.nn.functional
torch.manual_seed(0)
X = torch.randn(2, 3, 6, dtype=torch.float64)
WEIGHTS = torch.randn(2, 4, 3, dtype=torch.float64)
LABELS = torch.tensor([[0, 2, 1], [3, 1, 0]])

OPS = {
    "mean(-1, keepdim)": lambda h: h.pow(2).mean(-1, keepdim=True).tanh().sum(),
    "mean(-1)": lambda h: h.pow(2).mean(-1).tanh().sum(),
    "sum(-1)": lambda h: h.tanh().sum(-1).tanh().sum(),
    "mean((-1, -2))": lambda h: h.pow(2).mean((-1, -2)).tanh().sum(),
    "softmax(-1)": lambda h: (F.softmax(h, -1) * h).sum(),
    "log_softmax(-1)": lambda h: F.nll_loss(
        F.log_softmax(h, -1).reshape(-1, 4), LABELS.reshape(-1)
    ),
    "max(-1)": lambda h: h.tanh().max(-1).values.pow(2).sum(),
    "permute(0, -1, 1)": lambda h: (h.permute(0, -1, 1).tanh() * WEIGHTS).sum(),
}


@pytest.mark.parametrize("name", list(OPS))
def test_negative_dims_on_3d_values(name):
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)

    def loss_of(weight):
        return OPS[name](X @ weight)

    assert diagonal_method(loss_of(w), w) == "propagate"
    got = propagated_hessian_diagonal(loss_of(w), w)
    dense = torch.autograd.functional.hessian(loss_of, w.detach())
    expected = dense.reshape(w.numel(), w.numel()).diagonal().reshape(w.shape)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
