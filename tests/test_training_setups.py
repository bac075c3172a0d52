"""Setups people train with: clear messages, no partial state, or the right numbers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import gradgraph
from gradgraph import SecondOrderError as OnceDifferentiableError


def test_reentrant_checkpoint_says_why_parameters_look_unused():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    loss = checkpoint(layer, x, use_reentrant=True).pow(2).sum()
    ones = {n: torch.ones_like(p) for n, p in layer.named_parameters()}
    for call in (
        lambda: gradgraph.hessian_diagonal(loss, layer, progress=False),
        lambda: gradgraph.hvp(loss, layer, ones),
    ):
        with pytest.raises(ValueError, match="use_reentrant=False"):
            call()


def test_non_leaf_params_with_auto_fall_back_to_exact():
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    v = w * 2  # an intermediate tensor as the parameter
    loss = (v**3).sum() + v.prod()  # d2/dv2 diagonal: 6 v (prod has none)
    got = gradgraph.hessian_diagonal(loss, v, progress=False)
    torch.testing.assert_close(got, 6 * v.detach())


def test_explain_retain_graph_sees_in_place_changes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(5, 3)).pow(2).sum()
    assert "backward can run" in gradgraph.explain_retain_graph(loss)
    loss.backward(retain_graph=True)
    opt.step()
    text = gradgraph.explain_retain_graph(loss)
    assert text.startswith("Backward cannot run")
    assert "changed in place" in text
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_recording_a_sparse_embedding_backward():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    index = torch.tensor([1, 2, 2, 7])
    plain = emb(index).pow(2).sum()
    plain.backward()
    want = emb.weight.grad.to_dense().clone()
    emb.weight.grad = None
    loss = emb(index).pow(2).sum()
    with gradgraph.recording(loss) as record:
        loss.backward()
    torch.testing.assert_close(emb.weight.grad.to_dense(), want)
    (accumulated,) = record.calls[0].accumulated.values()
    assert accumulated.norm == pytest.approx(float(want.norm()))


def test_compiled_models_get_honest_errors():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    compiled = torch.compile(model, backend="aot_eager")
    loss = compiled(torch.randn(2, 3)).pow(2).sum()
    for method in ("exact", "propagate", "rows"):
        with pytest.raises(OnceDifferentiableError, match="_orig_mod"):
            gradgraph.hessian_diagonal(loss, model, method=method, progress=False)
    with pytest.raises(ValueError, match="_orig_mod"):
        with gradgraph.record_modules(compiled):
            pass
