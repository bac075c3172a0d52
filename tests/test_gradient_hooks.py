"""A hook that changes a gradient is refused by every second-order method alike.

Before, ``auto`` ignored ``h.register_hook(lambda g: 10 * g)`` while the exact
methods applied it twice (100x); now all of them raise GradientHookError, and
hooks that only look (return None) change nothing.
"""

from __future__ import annotations

import pytest
import torch

import gradgraph
from gradgraph.derivatives.gradient_hooks import GradientHookError

QUIET = {"progress": False}

CALLS = {
    "exact": lambda loss, w: gradgraph.hessian_diagonal(loss, w, **QUIET),
    "propagate": lambda loss, w: gradgraph.hessian_diagonal(
        loss, w, method="propagate", **QUIET
    ),
    "rows": lambda loss, w: gradgraph.hessian_diagonal(loss, w, method="rows", **QUIET),
    "xdiag": lambda loss, w: gradgraph.hessian_diagonal(
        loss, w, method="xdiag", **QUIET
    ),
    "hessian": lambda loss, w: gradgraph.hessian(loss, w, **QUIET).diagonal(),
    "hvp": lambda loss, w: gradgraph.hvp(loss, w, torch.ones_like(w)),
    "trace": lambda loss, w: gradgraph.hessian_trace(loss, w, **QUIET),
}


def _loss(hook_on: str, hook):
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    if hook_on == "param":
        w.register_hook(hook)
    h = torch.tanh(w) * 2
    if hook_on == "hidden":
        h.register_hook(hook)
    loss = (h**2).sum()
    if hook_on == "loss":
        loss.register_hook(hook)
    return loss, w


@pytest.mark.parametrize("hook_on", ["hidden", "param", "loss"])
@pytest.mark.parametrize("call", CALLS)
def test_rescaling_hook_is_refused(call, hook_on):
    loss, w = _loss(hook_on, lambda g: 10 * g)
    with pytest.raises(GradientHookError, match="gradient hook"):
        CALLS[call](loss, w)


@pytest.mark.parametrize("call", CALLS)
def test_observing_hooks_change_nothing(call):
    seen = []
    loss, w = _loss("hidden", lambda g: seen.append(g.shape))
    plain, w0 = _loss("none", None)
    torch.testing.assert_close(CALLS[call](loss, w), CALLS[call](plain, w0))
    assert seen  # the hook did run
