"""12. Gradient flow: vanishing gradients, layer by layer.

A 10-layer sigmoid MLP next to the same net with ReLU and residual
connections. ``gradient_flow`` reads one recorded backward and gives, per
module, the norm, mean and max of the gradient that reached its parameters:
a table, the familiar plot (layers on the x-axis, log scale) and the numbers
on the graph. The sigmoid net's first layer gets orders of magnitude less
gradient than its last; the residual net's layers stay within a small factor.
"""

import os
from pathlib import Path

import torch
import torch.nn as nn

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.linear(x))


def deep(block, depth=10, width=32):
    layers = [block(width) for _ in range(depth)]
    return nn.Sequential(*layers, nn.Linear(width, 1))


torch.manual_seed(0)
x, y = torch.randn(128, 32), torch.randn(128, 1)
sigmoid_net = deep(lambda w: nn.Sequential(nn.Linear(w, w), nn.Sigmoid()))
residual_net = deep(Residual)

flows = {}
for name, model in (("sigmoid", sigmoid_net), ("residual", residual_net)):
    loss = nn.functional.mse_loss(model(x), y)
    record = gradgraph.record_backward(loss, model=model)
    flow = flows[name] = gradgraph.gradient_flow(record)
    print(f"{name}: largest / smallest gradient norm = {flow.ratio():.3g}")
    print(flow.table())
    # the numbers are torch's: the first layer's row is its parameters' .grad
    first = torch.cat([p.grad.reshape(-1) for p in model[0].parameters()])
    assert abs(flow.rows[0].norm - first.norm().item()) <= 1e-5 * flow.rows[0].norm
    flow.plot(OUT / f"{name}_flow.png", title=f"gradient flow: {name} MLP")

assert flows["sigmoid"].ratio() > 1e3  # vanishing
assert flows["residual"].ratio() < 100
flows["sigmoid"].render(OUT / "sigmoid_flow_graph.svg", collapse="chains")
