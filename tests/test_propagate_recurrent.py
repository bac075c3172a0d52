"""The fused LSTM layer's curvature rule (MkldnnRnnLayerBackward0).

oneDNN runs only float32, so the rule computes in float64 from the values the
node saved (exact in float32 -> float64). Its pullback and its local Hessian
are checked in float64 against torch's own (unfused) float64 nn.LSTM; whole
models are checked against float64 HVP rows of their float64 twin, to
float32 accuracy.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from gradgraph import trace
from gradgraph.derivatives import curvature_recurrent, hessian_diagonal
from gradgraph.derivatives.curvature_recurrent import RULES
from gradgraph.derivatives.curvature_rules import OpContext
from gradgraph.derivatives.propagate import (
    diagonal_method,
    propagated_hessian_diagonal,
    unsupported_ops,
)

F = nn.functional
RULE = RULES["MkldnnRnnLayerBackward0"]
STEPS, BATCH, INPUT, HIDDEN = 4, 2, 3, 4


def _node_and_reference(reverse: bool):
    """A float32 fused layer node (every input a leaf) and a float64 reference.

    The reference maps the node's seven inputs to its output with torch's
    unfused float64 nn.LSTM (the backward direction: the forward one on the
    time-reversed sequence).
    """
    torch.manual_seed(1)
    lstm = nn.LSTM(INPUT, HIDDEN, bidirectional=reverse)
    suffix = "_l0_reverse" if reverse else "_l0"
    names = [f"{k}{suffix}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    x = torch.randn(STEPS, BATCH, INPUT, requires_grad=True)
    h0 = torch.randn(1 + reverse, BATCH, HIDDEN, requires_grad=True)
    c0 = torch.randn(1 + reverse, BATCH, HIDDEN, requires_grad=True)
    out, _ = lstm(x, (h0, c0))
    fn = out.grad_fn
    if reverse:  # a cat of the two directions: take the backward one
        fn = next(f for f, _ in fn.next_functions if f._saved_reverse)
    inputs = [x, *(getattr(lstm, n) for n in names), h0[-1], c0[-1]]
    one_way = nn.LSTM(INPUT, HIDDEN).double()
    plain = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")

    def reference(x, w_ih, w_hh, b_ih, b_hh, h, c):
        weights = dict(zip(plain, (w_ih, w_hh, b_ih, b_hh), strict=True))
        if reverse:
            x = x.flip(0)
        out, _ = functional_call(one_way, weights, (x, (h[None], c[None])))
        return out.flip(0) if reverse else out

    values = [t.detach().double() for t in inputs]
    return fn, values, reference


def _context(fn, values, grad):
    return OpContext(
        fn=fn,
        grad=grad,
        out_shape=tuple(grad.shape),
        in_shapes=[tuple(v.shape) for v in values],
        coupled=lambda i, j: True,
        memo={},
    )


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_layer_is_torchs_lstm(reverse):
    fn, values, reference = _node_and_reference(reverse)
    ours = curvature_recurrent.lstm_layer(*values, reverse=reverse)
    torch.testing.assert_close(ours, reference(*values), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.float(), fn._saved_result0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_pullback_is_the_float64_vjp(reverse):
    fn, values, reference = _node_and_reference(reverse)
    cols = torch.randn(3, STEPS, BATCH, HIDDEN, dtype=torch.float64)
    ctx = _context(fn, values, cols[0])
    block = curvature_recurrent.DenseColumns(cols, torch.ones(3, dtype=torch.float64))
    primals = [v.clone().requires_grad_(True) for v in values]
    out = reference(*primals)
    for pos, primal in enumerate(primals):
        expected = torch.stack(
            [torch.autograd.grad(out, primal, c, retain_graph=True)[0] for c in cols]
        )
        got = RULE.pullback(ctx, block, pos)
        torch.testing.assert_close(got.data, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_residual_is_the_float64_local_hessian(reverse):
    fn, values, reference = _node_and_reference(reverse)
    g = torch.randn(STEPS, BATCH, HIDDEN, dtype=torch.float64)
    sizes = [v.numel() for v in values]

    def phi(flat):
        parts = [p.view_as(v) for p, v in zip(flat.split(sizes), values, strict=True)]
        return (reference(*parts) * g).sum()

    expected = torch.autograd.functional.hessian(
        phi, torch.cat([v.reshape(-1) for v in values])
    )
    residual = RULE.residual(_context(fn, values, g))
    cols = torch.cat(
        [residual[p].data.reshape(residual[p].data.shape[0], -1) for p in range(7)], 1
    )
    got = cols.T @ (residual[0].sign[:, None] * cols)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-11)


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
NEEDS = {
    "2 layers, learned h0 c0": "needs the SelectBackward0 rule (helper rules)",
    "batch_first": "needs the TransposeBackward0 rule (helper rules)",
    "bidirectional": "needs the CatBackward0 rule (helper rules)",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=NEEDS[n]))
        if n in NEEDS
        else n
        for n in TAGGERS
    ],
)
def test_lstm_models_match_float64_hvp_rows(name):
    torch.manual_seed(0)
    model = Tagger(**TAGGERS[name])
    x = torch.randn(STEPS, BATCH, INPUT)
    if TAGGERS[name].get("batch_first"):
        x = x.transpose(0, 1).contiguous()
    labels = torch.randint(0, 3, (STEPS * BATCH,))
    loss = _loss(model, x, labels)
    assert "MkldnnRnnLayerBackward0" in {
        d["op"] for _, d in trace(loss).dag.nodes(data=True)
    }
    assert diagonal_method(loss, model) == "propagate"
    got = propagated_hessian_diagonal(loss, model)
    twin = Tagger(**TAGGERS[name]).double()
    twin.load_state_dict(model.state_dict())
    expected = hessian_diagonal(_loss(twin, x.double(), labels), twin, method="exact")
    for key, value in expected.items():
        error = (got[key].double() - value).norm() / value.norm()
        assert error < 1e-5, (key, error.item())


def test_a_large_layer_is_refused_and_falls_back():
    lstm = nn.LSTM(16, 16)
    out, _ = lstm(torch.randn(3, 2, 16))
    loss = out.square().sum()
    assert diagonal_method(loss, lstm) == "exact"
    (reason,) = unsupported_ops(loss, lstm)
    assert "MkldnnRnnLayerBackward0 with 2176 input entries" in reason
