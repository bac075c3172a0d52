"""find_nonfinite: the node where finite gradients first turn into inf/NaN."""

from __future__ import annotations

import gc
import math
import re

import pytest
import torch
import torch.nn as nn

from gradgraph import find_nonfinite, record_modules
from gradgraph.recorder import BackwardRecord
from tests.test_hygiene import global_state, model_hooks


class SqrtAct(nn.Module):
    def forward(self, x):
        return torch.relu(x).sqrt()


def sqrt_of_relu_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), SqrtAct(), nn.Linear(8, 1))
    return model, torch.randn(16, 4), "SqrtBackward0", "1"


class LogSoftmaxByHand(nn.Module):
    def forward(self, x):
        # softmax underflows to 0; the clamp keeps the loss finite, not its gradient
        return torch.log(torch.softmax(x * 200, dim=-1)).clamp_min(-100.0)


def log_of_softmax_classifier():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 5))
    model.append(LogSoftmaxByHand())
    return model, torch.randn(8, 6), "LogBackward0", "3"


class WhereSqrt(nn.Module):
    def forward(self, x):
        # the forward is finite (where picks 0), but the backward of the unused
        # sqrt branch multiplies a zero gradient by 1 / sqrt(negative) = NaN
        return torch.where(x > 0, x.sqrt(), torch.zeros_like(x))


def where_sqrt_net():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), WhereSqrt())
    model.append(nn.Linear(4, 2))
    return model, torch.randn(5, 3), "SqrtBackward0", "3"


NETS = [sqrt_of_relu_mlp, log_of_softmax_classifier, where_sqrt_net]


@pytest.mark.parametrize("build", NETS, ids=[f.__name__ for f in NETS])
def test_right_op_and_module_on_nets_with_a_real_bug(build):
    model, x, op, module = build()
    with record_modules(model) as rec:
        loss = model(x).pow(2).mean()
    found = find_nonfinite(loss, model=model, modules=rec)
    assert found is not None
    assert (found.op, found.module) == (op, module)
    assert all(math.isfinite(n) for n in found.received if n is not None)
    assert any(n is not None and not math.isfinite(n) for n in found.sent)
    # the path runs from the loss down the graph's edges to the node
    assert found.path[0] in found.graph.roots and found.path[-1] == found.node
    steps = zip(found.path, found.path[1:], strict=False)
    assert all(found.graph.dag.has_edge(u, v) for u, v in steps)
    # no node that ran before it sent a non-finite gradient
    call = found.record.calls[0]
    before = call.finished[: call.finished.index(found.node)]
    for node in before:
        assert all(f.norm is None or math.isfinite(f.norm) for f in call.outgoing[node])
    # reaches: exactly the parameters whose .grad (filled by the backward) is bad
    bad = {n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()}
    assert set(found.reaches) == bad
    text = str(found)
    assert op in text and repr(module) in text and "\n" not in text
    svg = found.to_dot()
    assert f"n{found.node} [id=n{found.node}" in svg and "#ff6b00" in svg


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_a_nan_bug_is_blamed_on_the_node_detect_anomaly_names():
    """Peer check: where the first bad gradient is NaN, detect_anomaly stops at
    the same node."""
    torch.manual_seed(0)
    model, x, _, _ = where_sqrt_net()
    found = find_nonfinite(model(x).pow(2).mean(), model=model)
    with torch.autograd.detect_anomaly():
        loss = model(x).pow(2).mean()
        with pytest.raises(RuntimeError, match=r"Function '(\w+)' returned nan") as err:
            loss.backward()
    peer = re.search(r"Function '(\w+)'", str(err.value))[1]
    assert found.op == peer == "SqrtBackward0"


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_an_inf_gradient_is_found_where_detect_anomaly_sees_nothing():
    x = torch.tensor([-1.0, 0.0, 4.0], requires_grad=True)
    found = find_nonfinite(torch.relu(x).sqrt().sum(), names={x: "x"})
    assert found.op == "SqrtBackward0" and found.sent[0] == math.inf
    with torch.autograd.detect_anomaly():
        loss = torch.relu(x).sqrt().sum()
        loss.backward()  # anomaly mode checks for NaN only: no error
    # and the ReLU's zero slope masks the inf: x.grad is finite, as reported
    assert torch.isfinite(x.grad).all() and found.reaches == []
    assert "mask" in str(found)


def test_finite_gradients_give_none_and_fill_grad_like_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    x = torch.randn(4, 3)
    assert find_nonfinite(model(x).sum(), model=model) is None
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for a, p in zip(ours, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_source_line_when_the_forward_ran_in_anomaly_mode():
    model, x, _, _ = sqrt_of_relu_mlp()
    with torch.autograd.detect_anomaly(check_nan=False):
        loss = model(x).sum()
    found = find_nonfinite(loss)
    assert "torch.relu(x).sqrt()" in found.source and __file__ in found.source
    assert find_nonfinite(model(x).sum()).source is None


class Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom")


def _live_records() -> int:
    gc.collect()
    return sum(type(o) is BackwardRecord for o in gc.get_objects())


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("anomaly", [False, True])
def test_no_state_left_behind_even_when_the_backward_raises(anomaly):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    model.register_forward_hook(lambda mod, i, o: None)
    hooks = model_hooks(model)
    with record_modules(model) as rec:
        loss = Boom.apply(model(torch.randn(4, 3))).sum()
    baseline = _live_records()
    with torch.autograd.set_detect_anomaly(anomaly):
        before = global_state()
        with pytest.raises(RuntimeError, match="boom"):
            find_nonfinite(loss, model=model, modules=rec, retain_graph=True)
        assert global_state() == before
    assert model_hooks(model) == hooks
    # the node hooks held the record: none is left on the (still alive) graph
    assert _live_records() == baseline
    loss = torch.relu(torch.zeros(2, requires_grad=True)).sqrt().sum()
    with torch.no_grad():
        before = global_state()
        found = find_nonfinite(loss)
        assert found.op == "SqrtBackward0" and global_state() == before
