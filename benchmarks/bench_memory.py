"""Peak extra memory of trace() per node (tracemalloc), and nodes per second.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_memory.py``.

"Peak" is the most Python memory the trace held at once above what existed
before it; "kept" is what is still allocated after it returns (the GradGraph,
plus the Python wrappers torch keeps for every grad_fn Python has touched).
The floor is a bare networkx DiGraph with one attribute per node and per edge,
built from ints in the same run; torchviz is the peer on a chain it can walk.
"""

from __future__ import annotations

import sys
import time
import tracemalloc

import networkx as nx
import torch
import torchviz
from common import machine, table

from gradgraph import trace


def chain(n: int):
    y = torch.ones(1, requires_grad=True)
    for i in range(n):
        y = y.sin() if i % 2 else y * 1.5
    return y


def branchy(width: int, depth: int):
    layer = [torch.full((1,), 1.0 + i, requires_grad=True) for i in range(width)]
    for _ in range(depth):
        layer = [layer[i] * layer[(i + 1) % width] for i in range(width)]
    return torch.cat(layer).sum()


def measure(fn) -> tuple[int, int, float, object]:
    """(peak bytes, kept bytes, seconds, result) of ``fn()`` under tracemalloc."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - base, current - base, seconds, result


def bare_digraph(n: int, edges: list[tuple[int, int]]) -> nx.DiGraph:
    dag = nx.DiGraph()
    dag.add_nodes_from((i, {"op": "x"}) for i in range(n))
    dag.add_edges_from((u, v, {"input_nr": 0}) for u, v in edges)
    return dag


def main() -> None:
    print(f"machine: {machine()}\n")
    trace(chain(10))  # warm the per-class caches
    rows = []
    for name, out in [
        ("chain 100k", chain(100_000)),
        ("branchy 500x100", branchy(500, 100)),
    ]:
        start = time.perf_counter()
        n = len(trace(out))
        speed = n / (time.perf_counter() - start)
        peak, kept, _, g = measure(lambda out=out: trace(out))
        edges = list(g.dag.edges)
        floor, _, _, _ = measure(lambda n=n, edges=edges: bare_digraph(n, edges))
        rows.append(
            [
                name,
                n,
                f"{speed:,.0f}",
                f"{peak / n:,.0f}",
                f"{kept / n:,.0f}",
                f"{floor / n:,.0f}",
                f"{peak / floor:.2f}",
            ]
        )
        del g
    print("trace(): memory per node (tracemalloc) and speed")
    print(
        table(
            rows,
            [
                "graph",
                "nodes",
                "nodes/s",
                "peak B/node",
                "kept B/node",
                "bare DiGraph B/node",
                "peak / bare",
            ],
        )
    )

    y = chain(5_000)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # torchviz recurses once per node
    try:
        theirs, _, _, _ = measure(lambda: torchviz.make_dot(y))
    finally:
        sys.setrecursionlimit(old)
    ours, _, _, g = measure(lambda: trace(y))
    n = len(g)
    print("\nPeak memory on a 5,000-node chain")
    print(
        table(
            [
                ["gradgraph trace()", f"{ours / n:,.0f}"],
                ["torchviz make_dot()", f"{theirs / n:,.0f}"],
                ["ratio (torchviz / gradgraph)", f"{theirs / ours:.2f}x"],
            ],
            ["", "peak B/node"],
        )
    )


if __name__ == "__main__":
    main()
