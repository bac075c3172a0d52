"""Rendering speed and picture size: gradgraph vs torchviz and torchview.

1. A 5,000-node chain to SVG, everything drawn: ``trace(y).to_svg(max_nodes=None)``
   against ``torchviz.make_dot(y).pipe(format="svg")``.
2. The issue-15 targets, each beside torchviz and torchview on the same model
   (peers run in a child process with a time limit, so a peer that hangs is
   reported as "> N s"): a 1,500-layer ``Sequential(Linear, Tanh)`` at
   ``max_nodes=300`` (target <= 10 s, <= 300 boxes); a 120,000-node graph at the
   default budget (<= 60 s, <= 1,000 boxes); a bad output path (fails in
   <= 5 s); GPT-2 and BERT with 2 and 12 layers at the default budget, with and
   without recorded modules (<= 10 s, <= 250 boxes). Times are trace + fold +
   dot; boxes are the nodes of the SVG.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_render.py``
(``--quick``: small sizes, under a minute).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import torch
import torch.nn as nn
import torchviz
from common import best_of, machine, table

from gradgraph import record_modules, trace
from gradgraph.examples import tiny_models

PEER_TIMEOUT_S = 60  # a peer's drawing
STARTUP_S = 300  # its process start and imports, on a busy machine


def chain(n: int) -> torch.Tensor:
    x = torch.ones(4, requires_grad=True)
    y = x
    for i in range(n):
        y = y.sin() if i % 2 else y * 1.5
    return y


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


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


def mlp(layers: int):
    model = nn.Sequential(
        *[m for _ in range(layers) for m in (nn.Linear(4, 4), nn.Tanh())]
    )
    return model, torch.randn(2, 4), lambda out: out


def deep(layers: int):
    """Linear/LayerNorm/Tanh triples: 8 autograd nodes a layer."""
    model = nn.Sequential(
        *[
            m
            for _ in range(layers)
            for m in (nn.Linear(4, 4), nn.LayerNorm(4), nn.Tanh())
        ]
    )
    return model, torch.randn(2, 4), lambda out: out


def gpt2(layers: int):
    model = tiny_models.gpt2(layers=layers).eval()
    return model, torch.randint(0, 64, (1, 8)), lambda out: out.logits


def bert(layers: int):
    model = tiny_models.bert(layers=layers).eval()
    return model, torch.randint(0, 64, (1, 8)), lambda out: out.last_hidden_state


def cases(quick: bool) -> dict:
    """name -> (builder, max_nodes for gradgraph or None for the default)."""
    big = 1_500 if quick else 15_000  # 12,000 or 120,000 nodes
    out = {
        f"{150 if quick else 1_500}-layer MLP, max_nodes=300": (
            lambda: mlp(150 if quick else 1_500),
            300,
        ),
        f"{big * 8:,}-node deep net, default": (lambda: deep(big), None),
    }
    for name, build in (("GPT-2", gpt2), ("BERT", bert)):
        for layers in (2,) if quick else (2, 12):
            out[f"{name} {layers} layers, default"] = (
                lambda b=build, n=layers: b(n),
                None,
            )
    return out


def boxes(svg: str) -> int:
    return len(re.findall(r'class="node', svg))


def ours(build, max_nodes, record: bool) -> tuple[int, int, float]:
    torch.manual_seed(0)
    model, x, pick = build()
    options = {} if max_nodes is None else {"max_nodes": max_nodes}

    def run():
        if record:
            with record_modules(model) as rec:
                loss = pick(model(x)).pow(2).mean()
            graph = trace(loss, model=model, modules=rec)
        else:
            graph = trace(pick(model(x)).pow(2).mean(), model=model)
        return len(graph), graph.to_svg(**options)

    (nodes, svg), seconds = timed(run)
    return nodes, boxes(svg), seconds


def peer(tool: str, name: str, quick: bool) -> dict:
    """Run in a child process: one peer on one case; prints boxes and seconds."""
    torch.manual_seed(0)
    model, x, pick = cases(quick)[name][0]()
    sys.setrecursionlimit(1_000_000)  # torchviz recurses once per node

    def run():
        if tool == "torchviz":
            loss = pick(model(x)).pow(2).mean()
            dot = torchviz.make_dot(loss, params=dict(model.named_parameters()))
            return dot.pipe(format="svg").decode()
        import torchview

        drawn = torchview.draw_graph(model, input_data=x, depth=3, roll=True)
        return drawn.visual_graph.pipe(format="svg").decode()

    def stop(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(PEER_TIMEOUT_S)  # the drawing only, not the imports
    try:
        svg, seconds = timed(run)
    except TimeoutError:  # subprocess.run kills a dot it was waiting for
        return {"timeout": True}
    finally:
        signal.alarm(0)
    return {"boxes": boxes(svg), "seconds": seconds}


def peer_cell(tool: str, name: str, quick: bool) -> str:
    args = [sys.executable, __file__, "--peer", tool, name] + (
        ["--quick"] if quick else []
    )
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=PEER_TIMEOUT_S + STARTUP_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"> {PEER_TIMEOUT_S} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed: {last[:40]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result.get("timeout"):
        return f"> {PEER_TIMEOUT_S} s"
    return f"{result['boxes']} / {result['seconds']:.1f} s"


def bad_path_seconds() -> float:
    torch.manual_seed(0)
    model, x, _ = mlp(1_500)
    graph = trace(model(x).sum(), model=model)
    start = time.perf_counter()
    try:
        graph.render("/nonexistent/folder/g.svg")
    except ValueError:
        return time.perf_counter() - start
    raise AssertionError("a bad path was accepted")


def target_rows(quick: bool) -> list[list[str]]:
    rows = []
    for name, (build, max_nodes) in cases(quick).items():
        cells = []
        for record in (False, True):
            nodes, count, seconds = ours(build, max_nodes, record)
            cells.append(f"{count} / {seconds:.1f} s")
        rows.append(
            [name, f"{nodes:,}", *cells]
            + [peer_cell(tool, name, quick) for tool in ("torchviz", "torchview")]
        )
    return rows


def main() -> None:
    quick = "--quick" in sys.argv
    if "--peer" in sys.argv:
        at = sys.argv.index("--peer")
        print(json.dumps(peer(sys.argv[at + 1], sys.argv[at + 2], quick)))
        return
    print(f"machine: {machine()}\n")
    y = chain(1_000 if quick else 5_000)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # torchviz recurses once per node
    try:
        theirs = best_of(lambda: torchviz.make_dot(y).pipe(format="svg"), 3)
    finally:
        sys.setrecursionlimit(old)
    mine = best_of(lambda: trace(y).to_svg(max_nodes=None), 3)
    print(f"{len(trace(y)):,}-node chain to SVG, every node drawn (best of 3)")
    print(
        table(
            [
                ["gradgraph trace(y).to_svg(max_nodes=None)", f"{mine:.2f}"],
                ["torchviz make_dot(y).pipe('svg')", f"{theirs:.2f}"],
                ["ratio (torchviz / gradgraph)", f"{theirs / mine:.2f}x"],
            ],
            ["", "seconds"],
        )
    )
    rows = in_big_stack(lambda: target_rows(quick))
    print("\nIssue-15 targets: boxes / seconds (trace + fold + dot)")
    print(
        table(
            rows,
            [
                "graph",
                "nodes",
                "gradgraph",
                "gradgraph, modules recorded",
                "torchviz",
                "torchview (depth=3, roll)",
            ],
        )
    )
    print(f"\nbad output path refused after {bad_path_seconds() * 1000:.1f} ms")


if __name__ == "__main__":
    main()
