"""hessian_trace / eigenvalues / operator / density against the dense reference."""

from __future__ import annotations

import pytest
import torch
from scipy.sparse.linalg import eigsh

from gradgraph import (
    Curvature,
    HessianOperator,
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
            seed=0,
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
            seed=0,
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
            seed=1,
            progress=False,
        )
        errors.append(float((flat(est) - exact).norm() / exact.norm()))
    assert errors[0] > errors[1] > errors[2]


def test_density_moments_match_the_reference():
    case, H = case_and_hessian("residual_net")
    n = H.shape[0]
    density = hessian_density(
        case.loss(), case.model, probes=40, steps=n, seed=0, progress=False
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


def test_one_loss_is_a_dataset_of_one_batch():
    """hessian_operator(loss) and Curvature over the one batch are one operator
    type, and every quantity comes out the same (up to rounding: the dataset
    weighs its one batch by 9 samples / 9)."""
    case, H = case_and_hessian("gelu_mlp")
    one = hessian_operator(case.loss(), case.model, progress=False)
    data = [(case.inputs, torch.zeros(len(case.inputs)))]  # targets: batch size only
    dataset = Curvature(case.model, lambda out, _: case.loss_fn(out), data)
    dataset.progress = False
    assert isinstance(one, HessianOperator) and isinstance(dataset, HessianOperator)
    for op in (one, dataset):
        torch.testing.assert_close(flat(op.diagonal("exact")), H.diagonal())
    calls = [
        lambda op: flat(op.diagonal("xdiag", 8, seed=3)),
        lambda op: op.trace("hutch++", 9, seed=3),
        lambda op: op.eigenvalues(k=2, seed=4)[0],
        lambda op: op.density(2, 5, seed=5).nodes,
        lambda op: op @ torch.linspace(-1, 1, op.dim, dtype=torch.float64),
    ]
    for call in calls:
        torch.testing.assert_close(call(one), call(dataset), rtol=1e-10, atol=1e-12)


def test_the_functions_take_an_operator():
    case, H = case_and_hessian("seed_simple_net")
    op = hessian_operator(case.loss(), case.model, progress=False)
    torch.testing.assert_close(hessian_trace(op, method="exact"), torch.trace(H))
    torch.testing.assert_close(flat(hessian_diagonal(op)), H.diagonal())
    values, _ = hessian_eigenvalues(op, k=1, tol=1e-10, seed=0)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(H)[-1:])
    same = hessian_density(case.loss(), case.model, probes=2, steps=4, seed=1)
    assert torch.equal(hessian_density(op, probes=2, steps=4, seed=1).nodes, same.nodes)
    with pytest.raises(TypeError, match="belong to the operator"):
        hessian_trace(op, case.model)
    with pytest.raises(TypeError, match="belong to the operator"):
        hessian_trace(op, progress=False)
    with pytest.raises(TypeError, match="pass the params"):
        hessian_trace(case.loss())


def test_old_spellings_warn_and_give_the_same_numbers():
    case, _ = case_and_hessian("seed_simple_net")
    options = {"method": "hutchinson", "matvecs": 3, "progress": False}
    new = hessian_trace(case.loss(), case.model, seed=2, **options)
    with pytest.warns(DeprecationWarning, match="pass seed= instead"):
        old = hessian_trace(case.loss(), case.model, generator=2, **options)
    assert torch.equal(old, new)
    exact = hessian_diagonal(case.loss(), case.model, progress=False)
    with pytest.warns(DeprecationWarning, match="method='exact'"):
        auto = hessian_diagonal(case.loss(), case.model, "auto", progress=False)
    assert torch.equal(flat(auto), flat(exact))
    with pytest.raises(TypeError, match="unexpected keyword argument 'matvec'"):
        hessian_trace(case.loss(), case.model, matvec=4)  # not swallowed
    with pytest.raises(TypeError, match="unexpected keyword argument 'generatr'"):
        hessian_diagonal(case.loss(), case.model, generatr=0)
