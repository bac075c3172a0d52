"""0. Quickstart: trace a graph, read it, draw it, take a Hessian-vector product.

``gradgraph.trace(output)`` turns the autograd graph behind a tensor into a
networkx DAG of plain data; ``to_text()`` lists it like code, ``render()``
draws it with graphviz, and ``gradgraph.hvp`` gives ``H v`` by double backward.
"""

import os
from pathlib import Path

import torch
import torch.nn as nn

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
x = torch.randn(8, 2)
loss = model(x).pow(2).mean()

graph = gradgraph.trace(loss, model=model)
print(graph)  # GradGraph(n nodes, m edges, roots=[0])
print(graph.to_text())
print("ops:", graph.summary()["by_op"])
assert graph.summary()["by_op"]["AccumulateGrad"] == 4  # 2 weights, 2 biases
print("wrote", graph.render(OUT / "quickstart.svg"))

# H v for the direction v = all ones, in the same form as the params (a dict)
params = dict(model.named_parameters())
ones = {name: torch.ones_like(p) for name, p in params.items()}
hv = gradgraph.hvp(loss, params, ones)
print("H v for v = ones:", {name: h.flatten().tolist() for name, h in hv.items()})

# the same product from torch.func, as a check
flat_ones = tuple(ones.values())


def loss_of(*weights):
    named = dict(zip(params, weights, strict=True))
    return torch.func.functional_call(model, named, (x,)).pow(2).mean()


_, reference = torch.autograd.functional.hvp(loss_of, tuple(params.values()), flat_ones)
for name, ref in zip(params, reference, strict=True):
    torch.testing.assert_close(hv[name], ref)
print("matches torch.autograd.functional.hvp")
