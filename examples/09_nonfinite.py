"""9. Where does the NaN come from? The first node that makes inf/NaN.

A regression net uses ``sqrt`` of a ReLU output as a "soft" activation. Some
ReLU outputs are exactly 0, where ``sqrt`` has an infinite slope: the backward
makes ``inf`` there. ``find_nonfinite`` runs the backward once with a hook per
node and names the first node that received finite gradients and sent inf/NaN:
its op, its module, the forward line, the path from the loss. Anomaly mode
(``detect_anomaly``) sees nothing here: it checks for NaN only, and the ReLU's
zero slope masks the inf before it reaches the weights' ``.grad``; the same
bug one step further (``torch.where`` around a ``sqrt``) makes NaN, and both
name the same node.
"""

import math
import os
from pathlib import Path

import torch
import torch.nn as nn

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)


class SoftSqrt(nn.Module):
    """The bug: sqrt(relu(x)) has an infinite slope wherever relu(x) = 0."""

    def forward(self, x):
        return torch.relu(x).sqrt()


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), SoftSqrt(), nn.Linear(16, 16), nn.Tanh())
model.append(nn.Linear(16, 1))
x, y = torch.randn(64, 4), torch.randn(64, 1)

# the forward in anomaly mode without NaN checks records each op's source line
with gradgraph.record_modules(model) as rec:
    with torch.autograd.detect_anomaly(check_nan=False):
        loss = nn.functional.mse_loss(model(x), y)
found = gradgraph.find_nonfinite(loss, model=model, modules=rec)
print(found)
assert (found.op, found.module) == ("SqrtBackward0", "1")
assert found.sent == (math.inf,) and all(math.isfinite(n) for n in found.received)
assert "torch.relu(x).sqrt()" in found.source
assert found.path_ops[0] == "MseLossBackward0" and found.path_ops[-1] == found.op
assert found.reaches == []  # masked by the ReLU: every .grad is finite
assert all(torch.isfinite(p.grad).all() for p in model.parameters())
found.render(OUT / "first_nonfinite.svg")


class SafeSqrt(nn.Module):
    """The usual "fix" that is not one: the sqrt branch still runs backward."""

    def forward(self, x):
        return torch.where(x > 0, x.sqrt(), torch.zeros_like(x))


model[1] = SafeSqrt()
model.zero_grad()
with gradgraph.record_modules(model) as rec:
    loss = nn.functional.mse_loss(model(x), y)
found = gradgraph.find_nonfinite(loss, model=model, modules=rec)
print(found)
assert (found.op, found.module) == ("SqrtBackward0", "1")
assert math.isnan(found.sent[0]) and sorted(found.reaches) == ["0.bias", "0.weight"]
# detect_anomaly, run on the same bug, stops at the same node
with torch.autograd.detect_anomaly():
    loss = nn.functional.mse_loss(model(x), y)
    try:
        loss.backward()
    except RuntimeError as exc:
        print("detect_anomaly:", str(exc).splitlines()[0])
        assert "'SqrtBackward0' returned nan" in str(exc)
    else:
        raise AssertionError("detect_anomaly did not stop")
found.render(OUT / "first_nan.svg")
