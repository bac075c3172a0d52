"""10. What blocks a Hessian? Nodes torch cannot differentiate twice.

On CPU ``nn.TransformerEncoder`` computes attention with a fused flash kernel
whose backward has no derivative, so every Hessian-vector product fails deep
inside torch. ``second_order_blockers`` finds those nodes by their class
without running any backward; every second-order function of gradgraph raises
a ``SecondOrderError`` that names them and the fix: run the forward under
``sdpa_kernel(SDPBackend.MATH)`` (``Curvature``, which runs the forward
itself, does so on its own). An eager-attention GPT-2 has no blockers.
"""

import os
from pathlib import Path

import torch
import torch.nn as nn
from tiny_models import gpt2
from torch.nn.attention import SDPBackend, sdpa_kernel

import gradgraph
from gradgraph.render.emphasis import render_emphasized

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)

torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
x = torch.randn(2, 6, 16)

with gradgraph.record_modules(encoder) as rec:
    loss = encoder(x).pow(2).mean()
blockers = gradgraph.second_order_blockers(loss, modules=rec)
for b in blockers:
    print(b)
assert {b.op for b in blockers} == {"ScaledDotProductFlashAttentionForCpuBackward0"}
assert sorted(b.module for b in blockers) == [
    "layers.0.self_attn",
    "layers.1.self_attn",
]
graph = gradgraph.trace(loss, model=encoder, modules=rec)
render_emphasized(
    graph,
    OUT / "blockers.svg",
    mark={b.node for b in blockers},
    collapse="chains",
    title="nodes torch cannot differentiate twice",
)

vector = [torch.ones_like(p) for p in encoder.parameters()]
try:
    gradgraph.hvp(loss, encoder, vector)
except gradgraph.SecondOrderError as exc:
    print(exc)
    assert len(exc.blockers) == 2 and "SDPBackend.MATH" in str(exc)
else:
    raise AssertionError("hvp did not raise")

# the fix: the math kernel is twice differentiable, and gives the same forward
with sdpa_kernel(SDPBackend.MATH):
    math_loss = encoder(x).pow(2).mean()
torch.testing.assert_close(math_loss, loss)
assert gradgraph.second_order_blockers(math_loss) == []
hv = gradgraph.hvp(math_loss, encoder, vector)
print("H·1 on the math kernel, first entries:", hv["layers.0.linear1.bias"][:3])

# Curvature runs its forwards itself, on the math kernel
data = [(x, torch.zeros_like(x))]
curvature = gradgraph.Curvature(
    encoder, lambda out, t: (out - t).pow(2).mean(), data, progress=False
)
flat = curvature.matvec(torch.cat([v.reshape(-1) for v in vector]))
torch.testing.assert_close(flat, torch.cat([h.reshape(-1) for h in hv.values()]))

model = gpt2()  # 2 layers, eager attention
ids = torch.randint(0, 64, (2, 8))
assert gradgraph.second_order_blockers(model(ids, labels=ids).loss) == []
print("eager GPT-2: no blockers")
