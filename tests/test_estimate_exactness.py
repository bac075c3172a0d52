"""XDiag and XTrace are exact once their budget can span the space."""

from __future__ import annotations

import pytest
import torch

from gradgraph import hessian_diagonal, hessian_trace
from gradgraph.derivatives import diagonal_estimate, trace_estimate


def _full_rank(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, dtype=torch.float64, generator=g)
    return B + B.T  # indefinite, flat spectrum: the estimators' worst case


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("extra", [0, 1, 50])
def test_full_budget_gives_the_exact_answer(seed, extra):
    n = 7
    A = _full_rank(n, seed)
    calls = []

    def matvec(v):
        calls.append(1)
        return A @ v

    kwargs = {"matvecs": n + extra, "seed": seed, "progress": False}
    diagonal = diagonal_estimate(matvec, n, method="xdiag", **kwargs)
    trace = trace_estimate(matvec, n, method="xtrace", **kwargs)
    torch.testing.assert_close(diagonal, A.diag())
    torch.testing.assert_close(trace, A.trace())
    assert len(calls) <= 2 * (n + extra)  # within the budget of both calls


@pytest.mark.parametrize("seed", [0, 7])
def test_hessian_trace_and_xdiag_of_a_small_quadratic(seed):
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = (w**2).sum()  # H = 2 I: trace 6, diagonal 2
    trace = hessian_trace(loss, w, seed=seed, progress=False)
    diagonal = hessian_diagonal(loss, w, method="xdiag", seed=seed, progress=False)
    torch.testing.assert_close(trace, torch.tensor(6.0))
    torch.testing.assert_close(diagonal, torch.full((3,), 2.0))
