"""Bad input across the public API: each raises a clear error that says what to do."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from gradgraph import DotNotFoundError, hvp, trace


def world() -> SimpleNamespace:
    """Fresh tensors, a model and a loss for one bad call."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    x = torch.ones(3, requires_grad=True)
    loss = model(torch.randn(4, 2)).pow(2).mean()
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    return SimpleNamespace(
        x=x,
        y=x * 2,
        model=model,
        loss=loss,
        zeros=zeros,
        graph=trace(x * 2),
        kept=trace(x * 2, keep=True),
    )


def no_grad_output(w):
    with torch.no_grad():
        out = w.x * 2
    return trace(out)


def with_nan(w):
    w.zeros["bias"][0] = float("nan")
    return hvp(w.loss, w.model, w.zeros)


def after_backward(w):
    w.loss.backward()
    return hvp(w.loss, w.model, w.zeros)


def frozen_param(w):
    w.model.bias.requires_grad_(False)
    return hvp(w.loss, [w.model.weight, w.model.bias], [w.zeros["weight"]] * 2)


def unused_param(w):
    extra = torch.zeros(2, requires_grad=True)
    return hvp(w.loss, [w.model.weight, extra], [w.zeros["weight"], extra.detach()])


BAD_CALLS = {
    # trace
    "not a tensor": (lambda w: trace(3.0), TypeError, "pass the output tensor"),
    "a module instead of its output": (
        lambda w: trace(w.model),
        TypeError,
        "pass the output tensor",
    ),
    "no outputs": (lambda w: trace(), ValueError, "at least one output"),
    "empty dict": (lambda w: trace({}), ValueError, "at least one output"),
    "tensor without graph": (
        lambda w: trace(torch.ones(3)),
        ValueError,
        "requires_grad=True",
    ),
    "made under no_grad": (no_grad_output, ValueError, "outside torch.no_grad"),
    "model is a dict": (
        lambda w: trace(w.y, model={"x": w.x}),
        TypeError,
        "pass plain tensors through params=",
    ),
    "params entry not a tensor": (
        lambda w: trace(w.y, params={"x": 3}),
        TypeError,
        "must be a tensor or an nn.Module",
    ),
    "params not a collection": (
        lambda w: trace(w.y, params=3),
        TypeError,
        r"params= must be a dict, a list or an nn.Module",
    ),
    "names is a list": (
        lambda w: trace(w.y, names=[w.x]),
        TypeError,
        r"names= must be a dict such as \{tensor: 'x'\}",
    ),
    "names pair of strings": (
        lambda w: trace(w.y, names={"x": "y"}),
        TypeError,
        r"use \{tensor: 'x'\}",
    ),
    "name for a tensor not in the graph": (
        lambda w: trace(w.y, names={torch.ones(1, requires_grad=True): "other"}),
        ValueError,
        "name only tensors the outputs depend on",
    ),
    "keep not a bool": (
        lambda w: trace(w.y, keep="yes"),
        TypeError,
        "keep= must be True or False",
    ),
    # GradGraph
    "grad_fn without keep": (
        lambda w: w.graph.grad_fn(0),
        ValueError,
        "trace with keep=True",
    ),
    "unknown node": (
        lambda w: w.kept.grad_fn(99),
        ValueError,
        r"not in this graph \(0\.\.1\)",
    ),
    "unknown render format": (
        lambda w: w.graph.render("/tmp/gradgraph-bad.x", format="nope"),
        ValueError,
        "try format='svg'",
    ),
    # hvp
    "non-scalar loss": (
        lambda w: hvp(w.model(torch.ones(3, 2)), w.model, w.zeros),
        ValueError,
        r"reduce it first, e\.g\. loss\.sum\(\)",
    ),
    "no loss and no grads": (
        lambda w: hvp(None, w.model, w.zeros),
        ValueError,
        "pass the loss, or grads",
    ),
    "empty params": (
        lambda w: hvp(w.loss, [], []),
        ValueError,
        "pass the tensors",
    ),
    "params of the wrong type": (
        lambda w: hvp(w.loss, "weight", w.zeros),
        TypeError,
        "params must be an nn.Module, a dict",
    ),
    "param without grad": (frozen_param, ValueError, r"call \.requires_grad_\(\)"),
    "vector of the wrong dtype": (
        lambda w: hvp(w.loss, w.model, {n: v.double() for n, v in w.zeros.items()}),
        ValueError,
        r"convert it with \.to\(param\.dtype\)",
    ),
    "vector on another device": (
        lambda w: hvp(w.loss, w.model, {n: v.to("meta") for n, v in w.zeros.items()}),
        ValueError,
        r"move it with \.to\(param\.device\)",
    ),
    "NaN in the vector": (with_nan, ValueError, "nan_to_num"),
    "freed graph": (after_backward, ValueError, "retain_graph=True"),
    "grads without a graph": (
        lambda w: hvp(None, w.model, w.zeros, grads=w.zeros),
        ValueError,
        "create_graph=True",
    ),
    "unused parameter": (unused_param, ValueError, "pass allow_unused=True"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_call_says_what_to_do(case):
    call, error, match = BAD_CALLS[case]
    w = world()
    with pytest.raises(error, match=match):
        call(w)


def test_there_are_at_least_twenty_bad_calls():
    assert len(BAD_CALLS) >= 20


def test_unwritable_output_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="pick a writable path"):
        world().graph.render(blocker / "x.svg")


@pytest.mark.parametrize("method", ["render", "to_svg"])
def test_missing_dot_binary(tmp_path, monkeypatch, method):
    monkeypatch.setenv("PATH", str(tmp_path))
    g = world().graph
    args = (tmp_path / "x.svg",) if method == "render" else ()
    with pytest.raises(DotNotFoundError, match="apt-get install graphviz") as info:
        getattr(g, method)(*args)
    assert isinstance(info.value, RuntimeError)
