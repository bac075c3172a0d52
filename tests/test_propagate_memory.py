"""Curvature columns travel in slices: same exact diagonal, bounded memory."""

from __future__ import annotations

import pytest

from gradgraph.derivatives.propagation import engine

from . import test_propagate, test_propagate_norm, test_propagate_spatial
from .model_reference import assert_propagates_exactly
from .peak_memory import peak_growth_mib

CASES = [
    *(("mlp", name) for name in sorted(test_propagate.MODELS)),
    *(("spatial", name) for name in sorted(test_propagate_spatial.MODELS)),
    *(("norm", name) for name in sorted(test_propagate_norm.MODELS)),
]


def build(kind, name):
    if kind == "spatial":
        return test_propagate_spatial.build(name)
    if kind == "norm":
        return test_propagate_norm.build(name)
    make, loss_of_output = test_propagate.MODELS[name]
    test_propagate.torch.manual_seed(1)
    return make().double(), loss_of_output, test_propagate.X


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_one_column_at_a_time_gives_the_exact_diagonal(kind, name, monkeypatch):
    drained = []
    call = engine._Drain.__call__

    def counted(self, start):
        drained.append(start)
        return call(self, start)

    monkeypatch.setattr(engine, "CHUNK_BYTES", 1)  # every column a slice
    monkeypatch.setattr(engine, "DRAIN_BYTES", 1)
    monkeypatch.setattr(engine._Drain, "__call__", counted)
    model, loss_of_output, x = build(kind, name)
    assert_propagates_exactly(model, loss_of_output, x)
    assert drained  # the sliced path ran


# A Tanh MLP 1-160-160-160-1 on 1000 samples (52k parameters, float32). Each
# Tanh's own curvature is one column per activation: 160 x 1000 x 160 floats
# (98 MiB), 293 MiB for the three; carried whole, as before slicing, the peak
# was 1.2 GiB. The child reports the growth of its peak resident set (VmHWM,
# reset after a warm-up run has loaded torch's kernels) during propagation.
PEAK_CHILD = """
    import torch, torch.nn as nn
    from gradgraph.derivatives.propagation import propagated_hessian_diagonal

    torch.manual_seed(0)
    width, batch = 160, 1000
    model = nn.Sequential(
        nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1),
    )
    x, y = torch.randn(batch, 1), torch.randn(batch, 1)

    def run():
        return propagated_hessian_diagonal(nn.functional.mse_loss(model(x), y), model)
"""


def test_peak_memory_is_bounded_by_a_slice_not_by_the_columns():
    peak_mib = peak_growth_mib(PEAK_CHILD)
    one_layer_mib = 160 * 1000 * 160 * 4 / 2**20
    assert peak_mib < one_layer_mib, peak_mib
