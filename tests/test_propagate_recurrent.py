"""Recurrent layers: the fused LSTM layer's rule (MkldnnRnnLayerBackward0) in models.

oneDNN runs only float32, so the rule computes in float64 from the values the
node saved; tests/test_rules.py checks its pullback and local Hessian in
float64 against torch's unfused LSTM. Here: its re-implementation of the
recurrence, whole models against float64 HVP rows of their float64 twin (to
float32 accuracy), and the size bound.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gradgraph import trace
from gradgraph.derivatives import hessian_diagonal
from gradgraph.derivatives.propagation import (
    diagonal_method,
    propagated_hessian_diagonal,
    unsupported_ops,
)
from gradgraph.derivatives.propagation.rules.recurrent import lstm_layer

F = nn.functional
STEPS, BATCH, INPUT, HIDDEN = 4, 2, 3, 4


def test_lstm_layer_is_torchs_lstm_both_ways():
    torch.manual_seed(1)
    lstm = nn.LSTM(INPUT, HIDDEN, bidirectional=True).double()
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64)
    h0 = torch.randn(2, BATCH, HIDDEN, dtype=torch.float64)
    c0 = torch.randn(2, BATCH, HIDDEN, dtype=torch.float64)
    expected, _ = lstm(x, (h0, c0))
    for k, suffix in enumerate(("_l0", "_l0_reverse")):
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        weights = [getattr(lstm, n + suffix) for n in names]
        ours = lstm_layer(x, *weights, h0[k], c0[k], reverse=bool(k))
        part = expected[..., k * HIDDEN : (k + 1) * HIDDEN]
        torch.testing.assert_close(ours, part, rtol=1e-12, atol=1e-12)


class Tagger(nn.Module):
    """LSTM (optionally batch-first / bidirectional) -> Linear head per step."""

    def __init__(self, layers=2, batch_first=False, bidirectional=False, h0=False):
        super().__init__()
        self.lstm = nn.LSTM(
            INPUT,
            HIDDEN,
            num_layers=layers,
            batch_first=batch_first,
            bidirectional=bidirectional,
        )
        width = HIDDEN * (1 + bidirectional)
        self.head = nn.Linear(width, 3)
        states = layers * (1 + bidirectional)
        self.h0 = nn.Parameter(torch.randn(states, BATCH, HIDDEN)) if h0 else None
        self.c0 = nn.Parameter(torch.randn(states, BATCH, HIDDEN)) if h0 else None

    def forward(self, x):
        state = None if self.h0 is None else (self.h0, self.c0)
        out, _ = self.lstm(x, state)
        return self.head(torch.tanh(out))


def _loss(model, x, labels):
    return F.cross_entropy(model(x).reshape(-1, 3), labels)


TAGGERS = {
    "2 layers": {},
    "2 layers, learned h0 c0": {"h0": True},
    "batch_first": {"batch_first": True},
    "bidirectional": {"bidirectional": True},
}


@pytest.mark.parametrize(
    "name",
    list(TAGGERS),
)
def test_lstm_models_match_float64_hvp_rows(name):
    torch.manual_seed(0)
    model = Tagger(**TAGGERS[name])
    x = torch.randn(STEPS, BATCH, INPUT)
    if TAGGERS[name].get("batch_first"):
        x = x.transpose(0, 1).contiguous()
    labels = torch.randint(0, 3, (STEPS * BATCH,))
    loss = _loss(model, x, labels)
    ops = {data["op"] for _, data in trace(loss).dag.nodes(data=True)}
    assert "MkldnnRnnLayerBackward0" in ops
    assert diagonal_method(loss, model) == "propagate"
    got = propagated_hessian_diagonal(loss, model)
    twin = Tagger(**TAGGERS[name]).double()
    twin.load_state_dict(model.state_dict())
    expected = hessian_diagonal(_loss(twin, x.double(), labels), twin, method="rows")
    for key, value in expected.items():
        error = (got[key].double() - value).norm() / value.norm()
        assert error < 1e-5, (key, error.item())


def test_a_large_layer_is_refused_and_falls_back():
    lstm = nn.LSTM(16, 16)
    out, _ = lstm(torch.randn(3, 2, 16))
    loss = out.square().sum()
    assert diagonal_method(loss, lstm) == "rows"
    (reason,) = unsupported_ops(loss, lstm)
    assert "MkldnnRnnLayerBackward0 with 2176 input entries" in reason
