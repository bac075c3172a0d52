"""Property test: every Hessian-diagonal method agrees with dense float64, or raises.

Random small models (linear layers and elementwise activations, some without a
curvature rule), random gradient hooks, float32/float64, and optionally a
tensor listed twice in ``params``. For each, ``diagonal_method`` must predict
what ``auto`` runs (``propagate`` works exactly when it says so), and every
method must give the dense float64 diagonal or a clear error
(:class:`GradientHookError` for a hook that changes a gradient).
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradgraph
from gradgraph.derivatives.gradient_hooks import GradientHookError

ENGINE_HANDLES_DUPLICATES = True
"""Set True once a tensor listed twice in params gets its diagonal under both
names from every method (issue 18 item 1, the ``engine`` branch)."""

ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus,
    "square": lambda a: a * a,
    "atan": torch.atan,  # no curvature rule: auto takes the exact rows
}
LOSSES = {
    "mse": lambda out, y: ((out - y) ** 2).mean(),
    "sum_cubed": lambda out, y: (out**3).sum() / out.numel(),
}
METHODS = ("exact", "propagate", "rows", "xdiag")


@st.composite
def setups(draw):
    widths = draw(st.lists(st.integers(1, 3), min_size=2, max_size=4))
    acts = [draw(st.sampled_from(sorted(ACTIVATIONS))) for _ in widths[1:-1]]
    return {
        "widths": widths,
        "acts": acts,
        "batch": draw(st.integers(1, 3)),
        "loss": draw(st.sampled_from(sorted(LOSSES))),
        "hook": draw(st.sampled_from(["none", "observe", "rescale"])),
        "hook_at": draw(st.integers(0, 5)),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "duplicate": draw(st.booleans()) if ENGINE_HANDLES_DUPLICATES else False,
        "seed": draw(st.integers(0, 2**16)),
    }


def _weights(setup):
    g = torch.Generator().manual_seed(setup["seed"])
    params = {}
    for i, (fan_in, fan_out) in enumerate(pairwise(setup["widths"])):
        params[f"w{i}"] = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64)
        params[f"b{i}"] = torch.randn(fan_out, generator=g, dtype=torch.float64) / 2
    x = torch.randn(
        setup["batch"], setup["widths"][0], generator=g, dtype=torch.float64
    )
    y = torch.randn(
        setup["batch"], setup["widths"][-1], generator=g, dtype=torch.float64
    )
    return params, x, y


def _forward(setup, params, x, y, hook=None):
    layers = len(setup["widths"]) - 1
    h = x
    for i in range(layers):
        h = torch.nn.functional.linear(h, params[f"w{i}"], params[f"b{i}"])
        if i < layers - 1:
            h = ACTIVATIONS[setup["acts"][i]](h)
        if hook is not None and i == setup["hook_at"] % layers and h.requires_grad:
            h.register_hook(hook)
    return LOSSES[setup["loss"]](h, y)


def _dense_diagonal(setup, params, x, y):
    names = list(params)
    sizes = [params[n].numel() for n in names]

    def f(flat):
        parts = dict(zip(names, flat.split(sizes), strict=True))
        shaped = {n: parts[n].view(params[n].shape) for n in names}
        return _forward(setup, shaped, x, y)

    flat = torch.cat([params[n].reshape(-1) for n in names])
    H = torch.autograd.functional.hessian(f, flat)
    return dict(zip(names, H.diagonal().split(sizes), strict=True))


HOOKS = {"none": None, "observe": lambda g: None, "rescale": lambda g: 10 * g}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(setups())
def test_every_diagonal_method_agrees_or_raises(setup):
    base, x, y = _weights(setup)
    truth = _dense_diagonal(setup, base, x, y)
    dtype = setup["dtype"]
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {}
    if dtype == torch.float32:
        scale = max(float(t.abs().max()) for t in truth.values())
        tol = {"rtol": 1e-3, "atol": 1e-4 * max(scale, 1.0)}

    def fresh():
        params = {n: t.to(dtype).requires_grad_(True) for n, t in base.items()}
        loss = _forward(setup, params, x.to(dtype), y.to(dtype), HOOKS[setup["hook"]])
        given_params = dict(params)
        if setup["duplicate"]:
            given_params["tied"] = params["w0"]
        return loss, given_params

    loss, given_params = fresh()
    predicted = gradgraph.diagonal_method(loss, given_params)
    uses_atan = "atan" in setup["acts"]
    assert predicted == ("rows" if uses_atan else "propagate")

    options = {"matvecs": max(4, sum(t.numel() for t in given_params.values()))}

    def call(method):
        loss, given_params = fresh()
        return gradgraph.hessian_diagonal(
            loss, given_params, method=method, progress=False, **options
        )

    for method in METHODS:
        if setup["hook"] == "rescale":
            with pytest.raises(GradientHookError, match="gradient hook"):
                call(method)
            continue
        if method == "propagate" and predicted == "rows":
            with pytest.raises(gradgraph.UnsupportedOpError):
                call(method)
            continue
        got = call(method)
        for name, value in got.items():
            want = truth["w0" if name == "tied" else name].view(value.shape)
            assert value.dtype == dtype
            torch.testing.assert_close(
                value.double(), want, **tol, msg=f"{method} {name}"
            )
