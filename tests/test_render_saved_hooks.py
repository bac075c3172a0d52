"""Graphs whose saved tensors went through saved-tensor hooks (issue 18 item 9).

Every consumer of the saved-tensor facts (DOT with ``show_saved``, the
notebook display, ``summary``, ``diff().summary()``, ``order_summary``) works
on them, and the byte counts are the bytes the graph really holds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradgraph import expand, trace
from gradgraph.expansion import order_summary


def _block(lin):
    return lambda a: lin(a).tanh().sin()


def _checkpointed():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    return checkpoint(_block(lin), x, use_reentrant=False).sum(), lin


def _on_cpu():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    with torch.autograd.graph.save_on_cpu():
        out = _block(lin)(x).sum()
    return out, lin


def _user_hooks():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    store = []

    def pack(t):
        store.append(t)
        return len(store) - 1  # a key into the user's own storage

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda k: store[k]):
        out = _block(lin)(x).sum()
    return out, lin


HOOKED = {"checkpoint": _checkpointed, "save_on_cpu": _on_cpu, "user": _user_hooks}


def _plain_saved_bytes():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    return trace(_block(lin)(x).sum(), model=lin).summary()["saved_bytes"]


@pytest.mark.parametrize("setup", sorted(HOOKED))
def test_every_saved_fact_has_the_full_schema(setup):
    out, lin = HOOKED[setup]()
    facts = [
        s for _, d in trace(out, model=lin).dag.nodes(data=True) for s in d["saved"]
    ]
    assert facts and all(s.get("packed") for s in facts)
    for fact in facts:
        assert {"attr", "shape", "dtype", "nbytes", "freed"} <= fact.keys()


def test_saved_bytes_count_what_the_graph_holds():
    plain = _plain_saved_bytes()
    assert plain > 0
    # save_on_cpu holds each tensor (on the CPU): the same bytes as no hook
    out, lin = _on_cpu()
    assert trace(out, model=lin).summary()["saved_bytes"] == plain
    # checkpoint and a key into user storage hold no tensor in the graph
    for setup in (_checkpointed, _user_hooks):
        out, lin = setup()
        assert trace(out, model=lin).summary()["saved_bytes"] == 0


@pytest.mark.parametrize("setup", sorted(HOOKED))
def test_dot_and_notebook_show_packed_tensors(setup):
    out, lin = HOOKED[setup]()
    g = trace(out, model=lin)
    dot = g.to_dot(show_saved=True)
    assert "packed by a hook" in dot
    assert dot.count('class="saved"') == sum(
        len(d["saved"]) for _, d in g.dag.nodes(data=True)
    )
    assert "<svg" in g._repr_svg_()


@pytest.mark.parametrize("setup", sorted(HOOKED))
def test_diff_summary_counts_hooked_graphs(setup):
    out, lin = HOOKED[setup]()
    small = trace(out, model=lin)
    bigger = trace(out * 3, model=lin)
    summary = small.diff(bigger).summary()
    assert summary["added"] == 1 and summary["added_saved_bytes"] >= 0


@pytest.mark.parametrize("setup", sorted(HOOKED))
def test_order_summary_of_an_expanded_hooked_graph(setup):
    out, lin = HOOKED[setup]()
    params = dict(lin.named_parameters())
    g = expand(out, params)
    rows = order_summary(g)
    assert rows[0]["saved_tensors"] > 0
    total = sum(
        s["nbytes"]
        for _, d in g.dag.nodes(data=True)
        for s in d["saved"]
        if not s["freed"]
    )
    assert sum(r["saved_bytes"] for r in rows.values()) == total
