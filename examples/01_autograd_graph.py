"""1. The autograd graph of Linear -> Linear.

Every tensor made by an operation remembers the backward function that made it
(``grad_fn``); ``next_functions`` points at the backward functions of its inputs.
Two ``Linear(3, 3)`` layers give ``AddmmBackward0`` nodes whose inputs are the
bias (an ``AccumulateGrad`` leaf), the previous layer and ``TBackward0`` (the
transposed weight): following those pointers is the graph ``gradgraph.trace``
draws.
"""

import os
from pathlib import Path

import torch
import torch.nn as nn

import gradgraph

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)

torch.manual_seed(0)
w1 = nn.Linear(3, 3)
w2 = nn.Linear(3, 3)
a = torch.tensor([[1.0, 2.0, 3.0]])
o1 = w1(a)
o2 = w2(o1)
print("o1.grad_fn.next_functions:", o1.grad_fn.next_functions)
print("o2.grad_fn.next_functions:", o2.grad_fn.next_functions)

# The three inputs of o2's AddmmBackward0, in order:
#   AccumulateGrad -> the bias of w2 (a leaf: its gradient is accumulated in .grad)
#   AddmmBackward0 -> the road back into w1, i.e. o1's own grad_fn
#   TBackward0     -> the transpose of w2's weight (Linear computes a @ W.T + b)
bias_fn, o1_fn, weight_fn = (fn for fn, _ in o2.grad_fn.next_functions)
print("o2.grad_fn.next_functions[1][0] is o1.grad_fn:", o1_fn is o1.grad_fn)
assert o1_fn is o1.grad_fn
assert type(bias_fn).__name__ == "AccumulateGrad" and bias_fn.variable is w2.bias
assert type(weight_fn).__name__ == "TBackward0"
assert weight_fn.next_functions[0][0].variable is w2.weight

# The same facts, read from the traced graph (plain data, no grad_fn objects).
graph = gradgraph.trace(o2, params={"w1": w1, "w2": w2}, names={o1: "o1", o2: "o2"})
dag = graph.dag
root = graph.roots[0]
inputs = sorted(dag.successors(root), key=lambda v: dag.edges[root, v]["input_nr"])
labels = [(dag.nodes[v]["op"], dag.nodes[v]["name"]) for v in inputs]
print("inputs of o2 in the traced graph:", labels)
assert labels == [
    ("AccumulateGrad", "w2.bias"),
    ("AddmmBackward0", "o1"),
    ("TBackward0", None),
]
assert graph.summary()["by_op"] == {
    "AccumulateGrad": 4,
    "AddmmBackward0": 2,
    "TBackward0": 2,
}
print(graph.to_text())

# The numbers: what the graph computes is a @ W1.T + b1, then @ W2.T + b2.
expected = (a @ w1.weight.T + w1.bias) @ w2.weight.T + w2.bias
torch.testing.assert_close(o2, expected)

path = graph.render(OUT / "linear_linear.svg")
graph.to_html(OUT / "linear_linear.html")  # the same graph, interactive
print("wrote", path)
