"""5. Hessian-vector products by double backward.

``H v = d/dθ (∇L · v)``: one backward with ``create_graph=True`` gives the
gradient as a graph, a second backward through the scalar ``∇L · v`` gives
``H v`` without ever forming the Hessian. The notebook's ``compute_hvp`` and
``gradgraph.hvp`` are checked against the dense Hessian of SimpleNet's loss
(141 parameters); the picture is the graph the second backward runs through.
"""

import os
from pathlib import Path

import torch
from simplenet import dense_hessian_float64, seeded_model_and_loss, training_data

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)


def compute_hvp(loss, parameters, vector):
    """The notebook's HVP: gradient with a graph, dot with v, gradient again."""
    grads = torch.autograd.grad(loss, parameters, create_graph=True)
    grad_vector_product = sum(
        torch.sum(g * v) for g, v in zip(grads, vector, strict=True)
    )
    hvp = torch.autograd.grad(grad_vector_product, parameters)
    return [v.detach() for v in hvp], grad_vector_product


model, loss = seeded_model_and_loss()
params = list(model.parameters())
vector = [torch.randn_like(p) for p in params]  # a random direction
hvp, grad_vector_product = compute_hvp(loss, params, vector)
for p, v, h in zip(params, vector, hvp, strict=True):
    print(p.shape, v.shape, h.shape)

# compute_hvp's second backward freed the graph's buffers: gradgraph.hvp gets a
# fresh loss (it raises a ValueError saying so when handed a freed one).
x, y = training_data()
fresh_loss = torch.nn.functional.mse_loss(model(x), y)
ours = gradgraph.hvp(fresh_loss, params, vector)  # same form as params: a list

# The dense reference: the full 141 x 141 Hessian, in float64.
hessian = dense_hessian_float64(model, x, y)
asymmetry = (hessian - hessian.T).abs().max().item()
print(f"dense float64 Hessian: {tuple(hessian.shape)}, max |H - H.T| = {asymmetry:.1e}")
dense = hessian @ torch.cat([v.double().reshape(-1) for v in vector])
scale = dense.abs().max().item()
for label, result in (("notebook compute_hvp", hvp), ("gradgraph.hvp", ours)):
    got = torch.cat([h.reshape(-1) for h in result]).double()
    err = (got - dense).abs().max().item()
    print(f"{label}: max |Hv - dense| = {err:.2e} (largest entry {scale:.2e})")
    torch.testing.assert_close(got, dense, rtol=1e-4, atol=1e-5 * scale)

# The graph the second backward runs through: forward, gradient and dot product.
forward_graph = gradgraph.trace(loss, model=model)
hvp_graph = gradgraph.trace(grad_vector_product, model=model)
print(
    f"loss graph: {len(forward_graph)} nodes; "
    f"graph of ∇L·v (what the HVP differentiates): {len(hvp_graph)} nodes"
)
assert len(hvp_graph) > 2 * len(forward_graph)
hvp_graph.render(OUT / "hvp_graph.svg")

# expand() runs both passes with create_graph=True and tags every node with the
# pass that made it: 0 the loss graph, 1 the gradient, 2 the HVP. (created_by=True,
# the default, also links each node to the node whose backward made it; the
# picture is easier to read without those extra edges.)
expanded = gradgraph.expand(fresh_loss, model, order=2, vector=vector, created_by=False)
per_order = gradgraph.order_summary(expanded)
print("nodes each pass added:", {k: v["nodes"] for k, v in per_order.items()})
assert per_order[0]["nodes"] == len(forward_graph) and sorted(per_order) == [0, 1, 2]
expanded.render(OUT / "expanded_orders.svg")
expanded.to_html(OUT / "expanded_orders.html")
print("last parameter, its direction and H v:")
print(params[-1], vector[-1], hvp[-1], sep="\n")
