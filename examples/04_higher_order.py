"""4. Higher-order derivatives: x**4 at x = 1 gives 4, 12, 24.

With ``create_graph=True`` the derivative is itself a tensor with a graph, so
it can be differentiated again. For ``x**4`` the backward of ``pow`` computes
``4 * x**3`` with ordinary ops (a new ``pow`` and two multiplications), so each
derivative gets a small graph of its own that leads back to the same leaf
``x``; the pictures show each order and all four together.
"""

import os
from pathlib import Path

import torch

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)


def f(x):
    return x**4


x = torch.tensor(1.0, requires_grad=True)

# create_graph=True records the derivative's computation, so it can be
# differentiated again: that is what makes higher-order derivatives possible.
first_derivative = torch.autograd.grad(f(x), x, create_graph=True)[0]
print(f"First derivative at x={x}: {first_derivative}")
second_derivative = torch.autograd.grad(first_derivative, x, create_graph=True)[0]
print(f"Second derivative at x={x}: {second_derivative}")
# create_graph=True once more, only so the third derivative has a graph to draw
third_derivative = torch.autograd.grad(second_derivative, x, create_graph=True)[0]
print(f"Third derivative at x={x}: {third_derivative}")

# 4 x^3, 12 x^2, 24 x at x = 1
for got, want in zip(
    (first_derivative, second_derivative, third_derivative),
    (4.0, 12.0, 24.0),
    strict=True,
):
    torch.testing.assert_close(got.detach(), torch.tensor(want))

# gradgraph.derivatives runs the same loop and returns f', f'', f''' at x
ds = gradgraph.derivatives(f, 1.0, 3)
print("gradgraph.derivatives(f, 1.0, 3):", [d.item() for d in ds])
manual = (first_derivative, second_derivative, third_derivative)
for d, by_hand in zip(ds, manual, strict=True):
    torch.testing.assert_close(d, by_hand.detach())

for order, value in enumerate(
    (f(x), first_derivative, second_derivative, third_derivative)
):
    graph = gradgraph.trace(value, names={x: "x"})
    assert graph.summary()["by_op"]["AccumulateGrad"] == 1  # only x is a leaf
    print(f"\norder {order}: {len(graph)} nodes")
    print(graph.to_text())
    graph.render(OUT / f"order_{order}.svg")

values = {"f": f(x), "f'": first_derivative}
values.update({"f''": second_derivative, "f'''": third_derivative})
# one graph of all four, each node tagged with the derivative order that made it
stages = ({name: value} for name, value in values.items())  # names the roots
together = gradgraph.trace_orders(*stages, names={x: "x"})
per_order = gradgraph.order_summary(together)
print("\nall orders in one graph; nodes each order added:")
print({order: info["nodes"] for order, info in per_order.items()})
assert sorted(per_order) == [0, 1, 2, 3] and len(together.leaves) == 1  # one x
together.render(OUT / "all_orders.svg")
