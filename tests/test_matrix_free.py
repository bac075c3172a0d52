"""hessian_trace / eigenvalues / operator / density against the dense reference."""

from __future__ import annotations

import pytest
import torch
from scipy.sparse.linalg import eigsh

from gradgraph import (
    hessian_density,
    hessian_diagonal,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
    hvp,
)

from .cases_models import MODELS
from .model_reference import case_and_hessian, flat


@pytest.mark.parametrize("name", MODELS)
def test_eigenvalues_match_eigvalsh(name):
    case, H = case_and_hessian(name)
    exact = torch.linalg.eigvalsh(H)
    for which, want in (("LA", exact.flip(0)[:2]), ("SA", exact[:1])):
        loss = case.loss()
        values, vectors = hessian_eigenvalues(
            loss,
            case.model,
            k=len(want),
            which=which,
            tol=1e-10,
            generator=0,
            allow_unused=case.unused,
            progress=False,
        )
        torch.testing.assert_close(values, want, atol=1e-8, rtol=1e-8)
        for value, vector in zip(values, vectors, strict=True):
            assert list(vector) == [n for n, _ in case.model.named_parameters()]
            Hv = hvp(loss, case.model, vector, allow_unused=case.unused)
            torch.testing.assert_close(
                flat(Hv), value * flat(vector), atol=1e-7, rtol=0
            )


@pytest.mark.parametrize("name", ["seed_simple_net", "conv_net", "tied_parameters"])
def test_exact_trace_and_operator(name):
    case, H = case_and_hessian(name)
    got = hessian_trace(case.loss(), case.model, method="exact", progress=False)
    torch.testing.assert_close(got, torch.trace(H))
    op = hessian_operator(case.loss(), case.model)
    assert op.shape == H.shape and op.dtype == "float64"
    v = torch.linspace(-1, 1, H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(torch.from_numpy(op @ v.numpy()), H @ v)
    top = eigsh(op, k=1, which="LA", tol=1e-12)[0]
    torch.testing.assert_close(
        torch.from_numpy(top), torch.linalg.eigvalsh(H)[-1:], rtol=1e-9, atol=0
    )


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_estimates_improve_with_matvecs(method):
    case, H = case_and_hessian("seed_simple_net")
    exact = float(torch.trace(H))
    errors = []
    for matvecs in (9, 48, 141 * 2):
        est = hessian_trace(
            case.loss(),
            case.model,
            method,
            matvecs=matvecs,
            generator=0,
            progress=False,
        )
        errors.append(abs(float(est) / exact - 1))
    assert errors[0] > errors[2]
    if method == "xtrace":  # a full sketch (141 vectors) gives the exact trace
        assert errors[2] < 1e-8


@pytest.mark.parametrize("method", ["hutchinson", "xdiag"])
def test_diagonal_estimates_improve_with_matvecs(method):
    case, H = case_and_hessian("seed_simple_net")
    exact = torch.diagonal(H)
    errors = []
    for matvecs in (8, 64, 256):
        est = hessian_diagonal(
            case.loss(),
            case.model,
            method,
            matvecs=matvecs,
            generator=1,
            progress=False,
        )
        errors.append(float((flat(est) - exact).norm() / exact.norm()))
    assert errors[0] > errors[1] > errors[2]


def test_density_moments_match_the_reference():
    case, H = case_and_hessian("residual_net")
    n = H.shape[0]
    density = hessian_density(
        case.loss(), case.model, probes=40, steps=n, generator=0, progress=False
    )
    eig = torch.linalg.eigvalsh(H)
    # full-length Lanczos: every probe's nodes are the eigenvalues themselves
    distance = (density.nodes[:, None] - eig[None, :]).abs().min(dim=1).values
    assert float(distance.max()) < 1e-6
    for power in (1, 2):  # moments are unbiased estimates of trace(H^p) / n
        torch.testing.assert_close(
            density.moment(power), (eig**power).mean(), rtol=0.15, atol=0
        )


def test_matrix_free_bad_inputs():
    case = MODELS["unused_parameter"]()
    with pytest.raises(ValueError, match="allow_unused"):
        hessian_trace(case.loss(), case.model)
    with pytest.raises(ValueError, match="allow_unused"):
        hessian_eigenvalues(case.loss(), case.model)
    mixed = [
        torch.zeros(2, requires_grad=True),
        torch.zeros(2).double().requires_grad_(),
    ]
    loss = (mixed[0].double() ** 2).sum() + (mixed[1] ** 3).sum()
    with pytest.raises(ValueError, match="mix dtypes"):
        hessian_density(loss, mixed)
    with pytest.raises(ValueError, match="choose one of"):
        hessian_trace(case.loss(), case.model.net, method="power")
    with pytest.raises(ValueError, match="which"):
        hessian_eigenvalues(case.loss(), case.model.net, which="XX")
