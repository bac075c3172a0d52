"""8. Rendering: the seed's graphs as pictures people would rather look at.

The Linear -> Linear graph with named parameters; SimpleNet's loss graph in
nested module clusters (``record_modules``) with its saved tensors; the
HVP graph from ``expand`` in one band per derivative order (forward graph ->
gradient graph -> HVP graph), also in the dark theme; and each as a
self-contained HTML page with pan/zoom, search and a details panel.
"""

import os
from pathlib import Path

import torch
import torch.nn as nn
from simplenet import SimpleNet, training_data

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)

torch.manual_seed(0)
w1, w2 = nn.Linear(3, 3), nn.Linear(3, 3)
o2 = w2(w1(torch.tensor([[1.0, 2.0, 3.0]])))
linear = gradgraph.trace(o2, params={"w1": w1, "w2": w2})
assert len(linear) == 8
linear.render(OUT / "linear_linear.svg", edge_labels=True)

model = SimpleNet()
x, y = training_data(64)
with gradgraph.record_modules(model) as rec:
    loss = nn.MSELoss()(model(x), y)
net = gradgraph.trace(loss, model=model, modules=rec)
modules = {m for _, m in net.dag.nodes(data="module") if m}
assert modules == {f"linear.{i}" for i in range(5)}, modules
net.render(OUT / "simplenet_modules.svg", show_saved=True)
net.to_html(OUT / "simplenet_modules.html", show_saved=True)

grown = gradgraph.expand(loss, model)
counts = grown.summary()["by_order"]
print("nodes by derivative order:", counts)
assert set(counts) == {0, 1, 2} and counts[0] == len(net)
grown.render(OUT / "hvp_orders.svg")
grown.to_html(OUT / "hvp_orders.html", title="SimpleNet: loss, gradient, HVP")
grown.render(OUT / "hvp_orders_dark.svg", theme="dark")
print(net.to_text())
