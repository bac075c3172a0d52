"""11. Where does activation memory go? A small GPT-2, layer by layer.

Every tensor a node saves for backward stays in memory until the backward
frees it. ``GradGraph.saved_memory`` counts each storage once and leaves
parameters out: the activation memory that checkpointing or offloading would
save. It is checked here against what ``saved_tensors_hooks`` sees during the
same forward, split by module (the split adds up to the total) and drawn twice:
the graph folded by module and shaded by bytes, and a bar chart by module.
"""

import os
from pathlib import Path

import torch
from tiny_models import gpt2

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)

torch.manual_seed(0)
model = gpt2(layers=3, width=48, heads=4, vocab=128, positions=64)
ids = torch.randint(0, 128, (2, 32))

# the reference: unique storages the pack hook sees, parameters excluded
params = {p.untyped_storage().data_ptr() for p in model.parameters()}
seen = {}


def pack(t):
    storage = t.untyped_storage()
    if storage.data_ptr() not in params:
        seen[storage.data_ptr()] = storage.nbytes()
    return t


with gradgraph.record_modules(model) as rec:
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids).loss
reference = sum(seen.values())

graph = gradgraph.trace(loss, model=model, modules=rec)
total = graph.saved_memory()
print(
    f"saved for backward: {total / 2**20:.3f} MiB (saved_tensors_hooks: "
    f"{reference / 2**20:.3f} MiB, {100 * (total - reference) / reference:+.2f} %)"
)
assert abs(total - reference) <= 0.05 * reference
print("summary:", {k: graph.summary()[k] for k in ("saved_bytes", "saved_memory")})

by_module = graph.saved_memory(by="module")
assert sum(by_module.values()) == total
blocks = {
    f"transformer.h.{i}": sum(
        v for k, v in by_module.items() if k and k.startswith(f"transformer.h.{i}.")
    )
    for i in range(model.config.n_layer)
}
for name, nbytes in blocks.items():
    print(f"  {name:16s} {nbytes / 1024:8.1f} KiB")
assert len(set(blocks.values())) == 1  # identical blocks, identical memory
by_op = graph.saved_memory(by="op")
top = sorted(by_op.items(), key=lambda kv: -kv[1])[:4]
print("largest by op:", [(op, f"{b / 1024:.0f} KiB") for op, b in top])

gradgraph.render_memory(graph, OUT / "memory_by_module.svg", collapse="modules")
gradgraph.memory_chart(graph, OUT / "memory_by_module.png")
