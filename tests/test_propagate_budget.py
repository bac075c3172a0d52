"""Memory is a plan: BatchNorm-in-training columns travel in slices, and a sweep
that would not fit in the memory budget is refused before it starts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import gradgraph
from gradgraph.derivatives.propagation import UnsupportedOpError, engine

from .model_reference import assert_propagates_exactly, flat
from .peak_memory import peak_growth_mib
from .reference import dense_hessian

F = nn.functional

torch.manual_seed(0)
IMAGES = torch.randn(3, 2, 6, 6, dtype=torch.float64)
LABELS = torch.tensor([0, 2, 1])


def bn_train_cnn():
    torch.manual_seed(1)
    return (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.Tanh(),
            nn.Conv2d(3, 3, 3),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(3, 3),
        )
        .double()
        .train()
    )


def cross_entropy(out):
    return F.cross_entropy(out, LABELS)


def test_batch_norm_training_columns_in_small_slices_are_exact(monkeypatch):
    slices = []
    call = engine._Drain.__call__

    def counted(self, start):
        slices.append(start)
        return call(self, start)

    monkeypatch.setattr(engine, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(engine, "DRAIN_BYTES", 4096)
    monkeypatch.setattr(engine._Drain, "__call__", counted)
    assert_propagates_exactly(bn_train_cnn(), cross_entropy, IMAGES)
    assert slices  # the sliced path ran


def test_over_the_memory_budget_the_sweep_is_refused_and_auto_falls_back(
    monkeypatch,
):
    model = bn_train_cnn()
    expected = dense_hessian(model, cross_entropy, IMAGES).diagonal()
    monkeypatch.setattr(engine, "MEMORY_BUDGET", 1 << 10)
    loss = cross_entropy(model(IMAGES))
    assert gradgraph.diagonal_method(loss, model) == "rows"
    (reason,) = gradgraph.unsupported_ops(loss, model)
    assert reason.startswith("memory: propagation needs about")
    with pytest.raises(UnsupportedOpError, match="MEMORY_BUDGET"):
        gradgraph.hessian_diagonal(loss, model, method="propagate")
    with pytest.warns(RuntimeWarning, match="computing exact HVP rows instead"):
        auto = gradgraph.hessian_diagonal(loss, model, progress=False)
    torch.testing.assert_close(flat(auto), expected)


def test_the_plan_counts_batch_norm_training_as_one_column_per_sample():
    model = bn_train_cnn()
    loss = cross_entropy(model(IMAGES))
    train = engine._Plan(loss, model).peak_bytes(0)
    model.eval()
    loss = cross_entropy(model(IMAGES))
    evaluation = engine._Plan(loss, model).peak_bytes(0)
    assert train > evaluation  # columns below a training BatchNorm are N-fold


# A Conv-BatchNorm(train)-ReLU net on 4 images of 16 x 16 (float32). The
# BatchNorm's own curvature is 8 x (4 * 16 * 16 + 2) columns of 8 x 1024 floats:
# 256 MiB written out at once, as before slicing (the peak was 320 MiB). The
# child reports the growth of its peak resident set (VmHWM, reset after a
# warm-up run) during propagation.
PEAK_CHILD = """
    import torch, torch.nn as nn
    from gradgraph.derivatives.propagation import propagated_hessian_diagonal

    torch.manual_seed(0)
    width, side, batch = 8, 16, 4
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, 10),
    ).train()
    x, y = torch.randn(batch, 3, side, side), torch.randint(0, 10, (batch,))

    def run():
        loss = nn.functional.cross_entropy(model(x), y)
        return propagated_hessian_diagonal(loss, model)
"""


def test_batch_norm_training_peak_memory_is_bounded_by_a_slice():
    peak_mib = peak_growth_mib(PEAK_CHILD)
    written_out_mib = 8 * (4 * 16 * 16 + 2) * 8 * 1024 * 4 / 2**20
    assert peak_mib < written_out_mib / 2, peak_mib


def test_columns_that_outgrow_the_budget_as_the_sweep_runs_stop_it(monkeypatch):
    """A plan that misses columns (as it does for those that wait inside
    attention, see test_propagate_plan): the sweep counts what it holds and
    stops with the budget error, and auto takes HVP rows."""
    from .test_propagate_layouts import IDS, next_token_loss, tiny_lm

    model = tiny_lm()
    expected = dense_hessian(model, next_token_loss, IDS).diagonal()
    monkeypatch.setattr(engine._Plan, "over_budget", lambda self: None)
    monkeypatch.setattr(engine, "MEMORY_BUDGET", 16 << 10)
    loss = next_token_loss(model(IDS))
    assert gradgraph.unsupported_ops(loss, model) == []  # the plan fits
    with pytest.raises(UnsupportedOpError, match="more than its plan foresaw"):
        gradgraph.hessian_diagonal(loss, model, method="propagate")
    with pytest.warns(RuntimeWarning, match="computing exact HVP rows instead"):
        auto = gradgraph.hessian_diagonal(loss, model, progress=False)
    torch.testing.assert_close(flat(auto), expected)
    monkeypatch.setattr(engine, "MEMORY_BUDGET", None)  # the machine's: it runs
    torch.testing.assert_close(flat(gradgraph.hessian_diagonal(loss, model)), expected)
