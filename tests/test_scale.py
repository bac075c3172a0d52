"""Huge graphs: a million-node chain, a 200,000-node branchy graph, safe freeing.

Deleting a deep graph that Python has walked can overflow the C stack in torch
(see gradgraph/release.py); a crash there would kill pytest, so those scenarios
run in a subprocess and a crash shows up as a failed test with its exit code.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
import weakref

import networkx as nx
import pytest
import torch
import torch.nn as nn

from gradgraph import trace
from gradgraph.release import MIN_NODES, RELEASE_KEY


def run_isolated(code: str, timeout: int = 600) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout, fail on a crash."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"exit code {proc.returncode} (-11 is a segfault)\n"
        f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


FREE_SCENARIOS = """
import threading, torch
from gradgraph import trace

N = 30_000  # without the release orders, 20,000 already overflow a 1 MB stack

def chain(x, n=N):
    for _ in range(n):
        x = x * 1.0
    return x

def output_deleted():
    y = chain(torch.ones(1, requires_grad=True))
    trace(y)
    del y

def temporary_output():
    trace(chain(torch.ones(1, requires_grad=True)))

def shared_chain():  # a parents-first order matters here, walk order is not one
    h = chain(torch.ones(1, requires_grad=True))
    loss = h.sin().sum() + h.cos().sum()
    trace(loss)
    del h, loss

def two_outputs_and_a_kept_intermediate():
    h = chain(torch.ones(1, requires_grad=True))
    a, b = h.sin(), h.cos()
    trace(a, b)
    del a, b
    del h  # h outlived both outputs: the band guards free it

def intermediate_outlives_output():
    h = chain(torch.ones(1, requires_grad=True))
    y = chain(h)
    trace(y)
    del y
    del h

def every_hidden_state_kept():
    hs = [torch.ones(1, requires_grad=True)]
    for _ in range(N):
        hs.append(hs[-1] * 1.0)
    loss = hs[-1].sum()
    trace(loss)
    del loss
    hs.reverse()  # the first state (the deepest graph) is freed last
    del hs

def graph_kept_by_trace():
    y = chain(torch.ones(1, requires_grad=True))
    g = trace(y, keep=True)
    del y
    del g

threading.stack_size(1 << 20)
for scenario in [output_deleted, temporary_output, shared_chain,
                 two_outputs_and_a_kept_intermediate, intermediate_outlives_output,
                 every_hidden_state_kept, graph_kept_by_trace]:
    t = threading.Thread(target=scenario)
    t.start()
    t.join()
    print("ok", scenario.__name__, flush=True)
"""


@pytest.mark.slow
def test_deep_graphs_free_without_overflowing_the_c_stack():
    out = run_isolated(FREE_SCENARIOS)
    assert out.count("ok ") == 7, out


@pytest.mark.slow
def test_million_node_chain_traces_and_frees_on_the_default_stack():
    out = run_isolated(
        """
        import torch
        from gradgraph import trace
        x = torch.ones(1, requires_grad=True)
        y = x
        for _ in range(999_999):
            y = y * 1.0
        g = trace(y)
        print(g.dag.number_of_nodes(), g.dag.number_of_edges(), g.leaves)
        del y  # on the main thread's default stack
        print("freed")
        """
    )
    assert out.split("\n")[:2] == ["1000000 999999 [999999]", "freed"]


def branchy(width: int, depth: int):
    """``depth`` layers of ``width`` products, each of two values of the layer below.

    Returns the sum of the top layer, the leaves and the layers' tensors.
    """
    leaves = [
        torch.full((1,), 1.0 + i / width, requires_grad=True) for i in range(width)
    ]
    layers = [leaves]
    for _ in range(depth):
        below = layers[-1]
        layers.append([below[i] * below[(i + 1) % width] for i in range(width)])
    return torch.cat(layers[-1]).sum(), leaves, layers


@pytest.mark.slow
def test_200k_node_branchy_graph():
    width, depth = 1000, 200
    out, leaves, _ = branchy(width, depth)
    g = trace(out)
    products = width * depth
    assert g.dag.number_of_nodes() == products + width + 2  # + leaves, cat, sum
    assert g.dag.number_of_edges() == 2 * products + width + 1
    assert g.summary()["by_op"]["MulBackward0"] == products
    assert nx.is_directed_acyclic_graph(g.dag)
    assert len(g.leaves) == width


def test_release_order_is_parents_first_and_holds_only_descendants():
    out, _, layers = branchy(50, 60)
    side = layers[58][7]  # inside out's graph, with > MIN_NODES nodes below it
    other = (torch.ones(1, requires_grad=True) * 3).exp()
    g = trace(out, side, other, keep=True)
    assert len(g) >= MIN_NODES
    ids = {id(g.grad_fn(n)): n for n in g.dag}
    for root in g.roots[:2]:
        keep = g.grad_fn(root).metadata[RELEASE_KEY]
        nodes = [ids[id(fn)] for fn in keep]
        below = nx.descendants(g.dag, root)
        assert set(nodes) == {n for n in below if g.dag.out_degree(n)}
        position = {n: i for i, n in enumerate(nodes)}  # stored children first
        assert all(
            position[v] < position[u]
            for u, v in g.dag.edges
            if u in position and v in position
        )
    assert RELEASE_KEY not in other.grad_fn.metadata  # a 3-node output needs none


def test_small_graphs_are_left_untouched():
    out = (torch.ones(3, requires_grad=True) * 2).sum()
    trace(out)
    assert out.grad_fn.metadata == {}


def test_trace_keeps_no_tensors_alive_in_a_deep_graph():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    h = x
    for _ in range(MIN_NODES):  # deep enough for the release orders
        h = lin(h).tanh()
    out = h.sum()
    g = trace(out, model=lin, names={x: "x"})
    assert g.summary()["saved_tensors"] > 2 * MIN_NODES
    refs = [weakref.ref(t) for t in (out, h, x, lin.weight, lin.bias)]
    del out, h, x, lin
    # no gc.collect(): the release orders add no reference cycles
    assert [r() for r in refs] == [None] * 5
    assert len(g) > 3 * MIN_NODES


def peak_bytes_of_trace(out) -> tuple[int, int]:
    trace(out)  # the second trace is measured: torch's wrappers already exist
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    g = trace(out)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak, len(g)


@pytest.mark.parametrize("shape", ["chain", "branchy"])
def test_peak_memory_under_2kb_per_node(shape):
    if shape == "chain":
        out = torch.ones(1, requires_grad=True)
        for i in range(20_000):
            out = out.sin() if i % 2 else out * 1.5
    else:
        out = branchy(200, 100)[0]
    peak, nodes = peak_bytes_of_trace(out)
    assert nodes >= 20_000
    assert peak / nodes < 2048, f"{peak / nodes:.0f} bytes per node"
