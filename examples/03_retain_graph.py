"""3. retain_graph=True and gradient accumulation.

``backward()`` normally frees the tensors the graph saved for it (here the
input of ``pow``), so a second ``backward()`` through the same graph needs
``retain_graph=True``. Gradients of leaves are added into ``.grad``: calling
backward twice doubles ``inp.grad`` until you ``zero_()`` it. The pictures show
the graph with its saved buffer kept, and the same graph after a final
backward without ``retain_graph`` freed it.
"""

import os
from pathlib import Path

import torch

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)

inp = torch.eye(4, 5, requires_grad=True)
out = (inp + 1).pow(2).t()
once = 2 * (inp.detach() + 1)  # d/dinp sum((inp + 1)^2) by hand

names = {inp: "inp"}
# record every backward through the graph: which nodes ran, what reached .grad
with gradgraph.recording(out, names=names) as record:
    out.backward(torch.ones_like(out), retain_graph=True)
    print(f"First call\n{inp.grad}")
    torch.testing.assert_close(inp.grad, once)

    out.backward(torch.ones_like(out), retain_graph=True)
    print(f"\nSecond call\n{inp.grad}")
    torch.testing.assert_close(inp.grad, 2 * once)  # accumulated, not replaced

    inp.grad.zero_()
    out.backward(torch.ones_like(out), retain_graph=True)
    print(f"\nCall after zeroing gradients\n{inp.grad}")
    torch.testing.assert_close(inp.grad, once)

print("\nnodes run per backward call:", record.counts())
norms = record.accumulated()
print("norm of inp.grad after each call:", norms)
assert set(record.counts().values()) == {3}  # every node ran in all 3 calls
(inp_norms,) = norms.values()
norm = once.norm().item()
torch.testing.assert_close(inp_norms, [norm, 2 * norm, norm])
# the recorded runs drawn on the graph: each node ran 3 times
record.annotated().render(OUT / "recorded.svg")

kept = gradgraph.trace(out, names=names)
print("\nThe graph, its saved buffers kept (retain_graph=True):")
print(kept.to_text())
pow_node = kept.nodes_by_op("PowBackward0")[0]
saved = kept.dag.nodes[pow_node]["saved"]
print("PowBackward0 saved:", saved)
assert any(s["attr"] == "self" and not s["freed"] for s in saved)
kept.render(OUT / "retained.svg", show_saved=True)  # saved buffers as notes

out.backward(torch.ones_like(out))  # no retain_graph: the buffers are freed now
freed = gradgraph.trace(out, names=names)
saved = freed.dag.nodes[freed.nodes_by_op("PowBackward0")[0]]["saved"]
print("after backward without retain_graph, PowBackward0 saved:", saved)
assert all(s["freed"] for s in saved)
print("freed saved tensors:", freed.summary()["freed_tensors"])
freed.render(OUT / "freed.svg", show_saved=True)
freed.to_html(OUT / "freed.html", show_saved=True)
try:
    out.backward(torch.ones_like(out))
except RuntimeError as err:
    print("a further backward fails:", str(err).split(".")[0])
else:
    raise AssertionError("backward through a freed graph should fail")
explanation = gradgraph.explain_retain_graph(out)
print(explanation)
assert "PowBackward0: self" in explanation
