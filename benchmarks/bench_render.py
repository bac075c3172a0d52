"""Rendering speed: gradgraph vs torchviz on the same graph, same run.

1. A 5,000-node chain to SVG: ``trace(y).to_svg()`` (trace + DOT + dot) against
   ``torchviz.make_dot(y).pipe(format="svg")`` (walk + DOT + dot).
2. A ~100,000-node model graph (Linear/LayerNorm/Tanh layers, modules
   recorded) rendered collapsed to SVG with ``max_nodes=200`` (about 200
   boxes), and a 100,000-node chain with ``collapse="chains"`` (3 boxes) and
   with ``max_nodes=200``; torchviz has no collapsed
   form (and its recursion would need a limit above 100,000), so these
   rows give our time alone against the 30 s target.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_render.py``.
"""

from __future__ import annotations

import sys
import threading
import time

import torch
import torch.nn as nn
import torchviz
from common import best_of, machine, table

from gradgraph import record_modules, trace


def chain(n: int) -> torch.Tensor:
    x = torch.ones(4, requires_grad=True)
    y = x
    for i in range(n):
        y = y.sin() if i % 2 else y * 1.5
    return y


def big_model_graph(layers: int):
    """A deep Sequential of Linear/LayerNorm/Tanh triples, modules recorded."""
    torch.manual_seed(0)
    model = nn.Sequential(
        *[
            m
            for _ in range(layers)
            for m in (nn.Linear(4, 4), nn.LayerNorm(4), nn.Tanh())
        ]
    )
    with record_modules(model) as rec:
        loss = model(torch.randn(2, 4)).pow(2).mean()
    return loss, model, rec


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def big_rows() -> list[list[str]]:
    rows = []
    loss, model, rec = big_model_graph(12_600)

    def render_model():
        graph = trace(loss, model=model, modules=rec)
        return graph, graph.to_svg(max_nodes=200)

    (graph, svg), seconds = timed(render_model)
    boxes = svg.count('class="node')
    rows.append(
        ["model graph, modules, max_nodes=200", f"{len(graph):,}", boxes, seconds]
    )
    y = chain(100_000)
    for title, options in (
        ("chain, collapse='chains'", {"collapse": "chains"}),
        ("chain, max_nodes=200", {"max_nodes": 200}),
    ):

        def render_chain(options=options):
            graph = trace(y)
            return graph, graph.to_svg(**options)

        (graph, svg), seconds = timed(render_chain)
        rows.append([title, f"{len(graph):,}", svg.count('class="node'), seconds])
    return rows


def in_big_stack(fn):
    """Run fn in a thread with a 1 GiB stack: torch frees deep graphs recursively."""
    result = {}
    old = threading.stack_size(1 << 30)
    try:
        thread = threading.Thread(target=lambda: result.setdefault("v", fn()))
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old)
    return result["v"]


def main() -> None:
    print(f"machine: {machine()}\n")
    y = chain(5_000)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # torchviz recurses once per node
    try:
        theirs = best_of(lambda: torchviz.make_dot(y).pipe(format="svg"), 3)
    finally:
        sys.setrecursionlimit(old)
    ours = best_of(lambda: trace(y).to_svg(), 3)
    print("5,000-node chain to SVG (best of 3)")
    print(
        table(
            [
                ["gradgraph trace(y).to_svg()", f"{ours:.2f}"],
                ["torchviz make_dot(y).pipe('svg')", f"{theirs:.2f}"],
                ["ratio (torchviz / gradgraph)", f"{theirs / ours:.2f}x"],
            ],
            ["", "seconds"],
        )
    )
    rows = in_big_stack(big_rows)
    print("\n~100,000-node graphs rendered collapsed to SVG (trace + fold + dot)")
    print(
        table(
            [[r[0], r[1], r[2], f"{r[3]:.1f}"] for r in rows],
            ["graph", "nodes", "boxes drawn", "seconds (target < 30)"],
        )
    )


if __name__ == "__main__":
    main()
