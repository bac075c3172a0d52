"""The row-by-row fallback of the exact Hessian when a vmapped backward fails.

Anomaly mode, a gradient hook that calls ``.item()`` and ``recording()`` (whose
hooks read each gradient's norm) all break ``is_grads_batched=True``; the
exact methods must then loop over rows and give the same numbers.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from gradgraph import hessian, hessian_blocks, hessian_diagonal, recording


def _net_and_loss():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    ).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    return net, lambda: (net(x) ** 2).mean()


def _dense_reference(net, loss_of):
    params = list(net.parameters())
    grads = torch.autograd.grad(loss_of(), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = [
        torch.cat(
            [r.reshape(-1) for r in torch.autograd.grad(f, params, retain_graph=True)]
        )
        for f in flat
    ]
    return torch.stack(rows)


def _anomaly(loss):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anomaly mode warns about itself
        with torch.autograd.set_detect_anomaly(True):
            yield


def _node(loss, name):
    stack = [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn.name() == name:
            return fn
        stack.extend(f for f, _ in fn.next_functions if f is not None)
    raise LookupError(name)


def _item_hook(loss):
    def read_value(grads):
        grads[0].sum().item()  # fails on a vmapped (batched) gradient

    handle = _node(loss, "TanhBackward0").register_prehook(read_value)
    try:
        yield
    finally:
        handle.remove()


def _recording(loss):
    with recording(loss):
        yield


SETUPS = {
    "anomaly": contextlib.contextmanager(_anomaly),
    "item_hook": contextlib.contextmanager(_item_hook),
    "recording": contextlib.contextmanager(_recording),
}


@pytest.mark.parametrize("setup", SETUPS)
def test_exact_methods_fall_back_to_a_row_loop(setup):
    net, loss_of = _net_and_loss()
    H = _dense_reference(net, loss_of)
    loss = loss_of()
    with SETUPS[setup](loss):
        dense = hessian(loss, net, progress=False)
        blocks = hessian_blocks(loss, net, progress=False)
        diagonal = hessian_diagonal(loss, net, method="exact", progress=False)
    torch.testing.assert_close(dense, H)
    torch.testing.assert_close(blocks["0.weight"], H[:12, :12])
    got = torch.cat([d.reshape(-1) for d in diagonal.values()])
    torch.testing.assert_close(got, H.diagonal())
