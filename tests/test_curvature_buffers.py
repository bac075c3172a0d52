"""Curvature leaves a training-mode model's buffers (BatchNorm statistics) alone."""

from __future__ import annotations

import math

import torch

from gradgraph import Curvature

from .reference import dense_hessian


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh()
    )
    model = torch.nn.Sequential(model, torch.nn.Linear(4, 1)).double().train()
    data = [
        (torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 1, dtype=torch.float64))
        for n in (8, 5)
    ]
    return model, data


def _mean_hessian(model, data):
    total = sum(
        n
        * dense_hessian(model, lambda out, t=t: torch.nn.functional.mse_loss(out, t), x)
        for (x, t), n in ((batch, batch[0].shape[0]) for batch in data)
    )
    return total / sum(x.shape[0] for x, _ in data)


def test_batchnorm_statistics_unchanged_and_numbers_right():
    model, data = _model_and_data()
    bn = model[0][1]
    before = {name: b.clone() for name, b in model.named_buffers()}
    H = _mean_hessian(model, data)
    for name, b in model.named_buffers():  # the reference works on a copy
        torch.testing.assert_close(b, before[name], rtol=0, atol=0)

    curv = Curvature(model, torch.nn.functional.mse_loss, data, progress=False)
    estimate = curv.trace(method="xtrace", matvecs=16)
    trace = curv.trace(method="exact")
    diagonal = curv.diagonal(method="exact")
    product = curv.matvec(torch.ones(curv.dim, dtype=torch.float64))
    curv.loss()
    curv.gradient()

    assert int(bn.num_batches_tracked) == 0
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, before[name], rtol=0, atol=0, msg=name)
    assert model.training
    flat = torch.cat([d.reshape(-1) for d in diagonal.values()])
    torch.testing.assert_close(flat, H.diagonal())
    torch.testing.assert_close(product, H.sum(dim=1))
    assert math.isfinite(estimate)
    assert math.isclose(trace, float(H.trace()), rel_tol=1e-9)


def test_eval_mode_buffers_are_not_rewritten():
    model, data = _model_and_data()
    model.eval()
    versions = [b._version for b in model.buffers()]
    Curvature(model, torch.nn.functional.mse_loss, data, progress=False).loss()
    assert [b._version for b in model.buffers()] == versions
