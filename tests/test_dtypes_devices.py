"""Half precision, complex and meta-device parameters: right numbers or clear errors."""

from __future__ import annotations

import pytest
import torch

from gradgraph import hessian_diagonal, hessian_eigenvalues, hessian_trace, hvp

VALUES = [1.0, 2.0, 3.0, 0.5, 1.5, -1.0, 2.0, 0.25]


def _cubic(dtype):
    x = torch.tensor(VALUES, dtype=dtype, requires_grad=True)
    return x, (x**3).sum()  # H = diag(6 x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("matvecs", [4, 6, 64])
def test_half_precision_estimators_match_a_float32_run(dtype, matvecs):
    got, want = {}, {}
    for into, kind in ((got, dtype), (want, torch.float32)):
        x, loss = _cubic(kind)
        into["trace"] = hessian_trace(loss, x, matvecs=matvecs, seed=0, progress=False)
        x, loss = _cubic(kind)
        into["xdiag"] = hessian_diagonal(
            loss, x, method="xdiag", matvecs=matvecs, seed=0, progress=False
        )
    for key in got:
        assert got[key].dtype == dtype
        torch.testing.assert_close(
            got[key].float(), want[key], rtol=0.05, atol=0.1, msg=key
        )
    if matvecs >= len(VALUES):  # exact: the true diagonal 6 x
        truth = 6 * torch.tensor(VALUES)
        torch.testing.assert_close(got["xdiag"].float(), truth, rtol=1e-2, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_eigenvalues(dtype):
    x, loss = _cubic(dtype)
    values, _ = hessian_eigenvalues(loss, x, k=2, progress=False)
    torch.testing.assert_close(
        values.float(), torch.tensor([18.0, 12.0]), rtol=1e-2, atol=0
    )


def test_complex_parameters_get_a_clear_type_error():
    z = torch.tensor([1.0 + 1.0j, 2.0 - 0.5j], requires_grad=True)
    for call in (
        lambda: hessian_trace((z.abs() ** 2).sum(), z, progress=False),
        lambda: hessian_diagonal(
            (z.abs() ** 2).sum(), z, method="xdiag", progress=False
        ),
    ):
        with pytest.raises(TypeError, match="view_as_real"):
            call()


def test_meta_parameters_get_a_clear_error():
    x = torch.ones(3, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="meta device"):
        hvp((x**3).sum(), x, torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="meta device"):
        hessian_diagonal((x**3).sum(), x, progress=False)
    model = torch.nn.Linear(2, 2, device="meta")
    with pytest.raises(ValueError, match="meta device"):
        hessian_trace(model(torch.ones(1, 2, device="meta")).sum(), model)
