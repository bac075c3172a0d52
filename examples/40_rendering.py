"""Rendering the seed notebook's graphs: SVG, dark theme, HTML viewer, orders.

Writes into ``$GRADGRAPH_OUT`` (default ``out/``):

- ``40_rendering_linear.svg``: Linear -> Linear, parameters named.
- ``40_rendering_simplenet.svg`` / ``.html``: SimpleNet's loss graph with the
  modules that created each node (``record_modules``) and saved tensors.
- ``40_rendering_hvp.svg`` / ``.html``: the Hessian-vector-product graph in
  bands by derivative order: forward graph -> gradient graph -> HVP graph.
- ``40_rendering_dark.svg``: the same HVP graph in the dark theme.

Run: ``python examples/40_rendering.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out"))


class SimpleNet(nn.Module):
    """The seed notebook's model."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Sequential(
            nn.Linear(1, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 1)
        )

    def forward(self, x):
        return self.linear(x)


def mark_orders(layers: list[gradgraph.GradGraph], graph: gradgraph.GradGraph):
    """Order k = the first of ``layers`` (loss, gradient, HVP) holding the node.

    All graphs are traced with ``keep=True`` so nodes match by identity. This
    is a small stand-in for the library's create_graph expansion.
    """
    first: dict[int, int] = {}
    for order, layer in enumerate(layers):
        for node in layer.dag:
            first.setdefault(id(layer.grad_fn(node)), order)
    for node, data in graph.dag.nodes(data=True):
        data["order"] = first[id(graph.grad_fn(node))]
    return graph


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    w1, w2 = nn.Linear(3, 3), nn.Linear(3, 3)
    o2 = w2(w1(torch.tensor([[1.0, 2.0, 3.0]])))
    linear = gradgraph.trace(o2, params={"w1": w1, "w2": w2})
    linear.render(OUT / "40_rendering_linear.svg")
    assert len(linear) == 8

    model = SimpleNet()
    x = torch.linspace(-2, 2, 16).unsqueeze(1)
    with gradgraph.record_modules(model) as rec:
        loss = nn.functional.mse_loss(model(x), x.pow(3))
    net = gradgraph.trace(loss, model=model, modules=rec)
    modules = {m for _, m in net.dag.nodes(data="module") if m}
    assert modules == {"linear.0", "linear.1", "linear.2", "linear.3", "linear.4"}
    net.render(OUT / "40_rendering_simplenet.svg", show_saved=True)
    net.to_html(OUT / "40_rendering_simplenet.html", show_saved=True)

    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    dot = sum((g * u).sum() for g, u in zip(grads, v, strict=True))
    hv = torch.autograd.grad(dot, params, create_graph=True)
    hvp = gradgraph.trace(list(hv), list(grads), loss, model=model, keep=True)
    layers = [
        gradgraph.trace(loss, keep=True),
        gradgraph.trace(list(grads), keep=True),
        hvp,
    ]
    mark_orders(layers, hvp)
    counts = hvp.summary()["by_order"]
    print("nodes by derivative order:", counts)
    assert set(counts) == {0, 1, 2} and counts[0] == len(net)
    hvp.render(OUT / "40_rendering_hvp.svg", title="SimpleNet: loss, gradient, HVP")
    hvp.render(OUT / "40_rendering_dark.svg", theme="dark")
    hvp.render(OUT / "40_rendering_hvp.png", format="png")
    hvp.to_html(OUT / "40_rendering_hvp.html", title="SimpleNet HVP graph")
    print(hvp.to_text().splitlines()[-1])


if __name__ == "__main__":
    main()
