"""expand() / trace_orders(): derivative orders against set differences of traced
node identities, created-by links against torch's anomaly metadata, diff(),
rendering of the grown graph, bad input."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
import torch.nn as nn

from gradgraph import trace
from gradgraph.expansion import CREATED_BY, expand, order_summary, trace_orders

from .cases import seed_simplenet


def identity_layers(*stages):
    """Per stage, the grad_fn objects its trace has that no earlier stage's has."""
    seen: set = set()
    layers = []
    for stage in stages:
        g = trace(stage, keep=True)
        fns = {g.grad_fn(n) for n in g.dag}
        layers.append(fns - seen)
        seen |= fns
    return layers


def reached(roots):
    """Every autograd node reachable from ``roots`` through next_functions."""
    seen, stack = set(), list(roots)
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        stack.extend(c for c, _ in fn.next_functions if c is not None)
    return seen


def fns_of_order(g, k):
    return {g.grad_fn(n) for n, o in g.dag.nodes(data="order") if o == k}


def seed_hvp_stages():
    """loss, gradient and HVP of the seed SimpleNet, computed with torch directly."""
    loss, model = seed_simplenet()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)
    with torch.autograd.set_detect_anomaly(True, check_nan=False):
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn(p.shape, generator=gen) for p in params]
        dot = sum((g * u).sum() for g, u in zip(grads, v, strict=True))
        hv = torch.autograd.grad(dot, params, create_graph=True)
    return loss, model, list(grads), dot, list(hv), v


def test_orders_are_set_differences_of_traced_identities():
    loss, model, grads, dot, hv, _ = seed_hvp_stages()
    g = trace_orders(loss, grads, [dot, *hv], model=model, keep=True)
    expected = identity_layers(loss, grads, [dot, *hv])
    for k in range(3):
        assert fns_of_order(g, k) == expected[k] and expected[k]
    assert all(o is not None for _, o in g.dag.nodes(data="order"))
    assert len(g) == sum(map(len, expected))
    # order 0 is exactly the loss graph
    assert fns_of_order(g, 0) == reached([loss.grad_fn])
    ops1 = Counter(type(fn).__name__ for fn in expected[1])
    assert ops1["MseLossBackwardBackward0"] == 1 and ops1["TanhBackwardBackward0"] == 2


def test_expand_grows_the_seed_graph_like_torch():
    loss, model, grads, dot, hv, v = seed_hvp_stages()
    g = expand(loss, model, vector=v, keep=True)
    roots = {}
    for out in g.outputs:
        stage = 0 if out["name"] == "loss" else 1 if out["name"][:4] == "grad" else 2
        if out["name"] == "grad.v":
            stage = 2
        roots.setdefault(stage, []).append(g.grad_fn(out["node"]))
    names = [o["name"] for o in g.outputs]
    params = [n for n, _ in model.named_parameters()]
    assert names == ["loss"] + [f"grad[{n}]" for n in params] + ["grad.v"] + [
        f"hvp[{n}]" for n in params
    ]
    seen: set = set()
    for k in range(3):
        layer = reached(roots[k]) - seen
        assert fns_of_order(g, k) == layer and layer
        seen |= layer
    # the same layers, op by op, as the test's own torch computation
    manual = trace_orders(loss, grads, [dot, *hv])
    assert Counter(g.dag.nodes(data="order")) == Counter(manual.dag.nodes(data="order"))
    by_order_op = Counter((d["order"], d["op"]) for _, d in g.dag.nodes(data=True))
    manual_by_order_op = Counter(
        (d["order"], d["op"]) for _, d in manual.dag.nodes(data=True)
    )
    assert by_order_op == manual_by_order_op
    # the parameters' AccumulateGrad nodes are forward nodes, named
    for _, d in g.dag.nodes(data=True):
        if d["op"] == "AccumulateGrad":
            assert d["order"] == 0 and d["name"] in params


def test_created_by_links_match_anomaly_metadata():
    loss, model = seed_simplenet()
    g = expand(loss, model, keep=True)
    linked = 0
    for n, d in g.dag.nodes(data=True):
        parent = g.grad_fn(n).metadata.get("parent_") if d["order"] else None
        creator = d["created_by"]
        if creator is None:
            # only nodes no backward made (forward nodes, the grad.v product)
            assert parent is None
            continue
        linked += 1
        assert g.grad_fn(creator) is parent
        assert g.dag.nodes[creator]["order"] < d["order"]
        edge = g.dag.edges[n, creator]
        assert edge.get("kind") == CREATED_BY or edge.get("created_by") is True
        if d["op"] == "TanhBackwardBackward0" and d["order"] == 1:
            assert g.dag.nodes[creator]["op"] == "TanhBackward0"
        if d["op"] == "MseLossBackwardBackward0":
            assert g.dag.nodes[creator]["op"] == "MseLossBackward0"
    summary = order_summary(g)
    assert linked == sum(row["created_by"] for row in summary.values())
    assert summary[1]["created_by"] == summary[1]["nodes"]  # all of order 1
    assert 0 < summary[2]["created_by"] < summary[2]["nodes"]  # grad.v is not


def test_without_anomaly_mode_same_layers_no_links():
    loss, model = seed_simplenet()
    with_links = expand(loss, model)
    without = expand(loss, model, created_by=False)
    assert not torch.is_anomaly_enabled()
    assert Counter(without.dag.nodes(data="order")) == Counter(
        with_links.dag.nodes(data="order")
    )
    assert all(c is None for _, c in without.dag.nodes(data="created_by"))
    kinds = [k for *_, k in without.dag.edges(data="kind")]
    assert kinds.count(CREATED_BY) == 0
    assert [k for *_, k in with_links.dag.edges(data="kind")].count(CREATED_BY) > 0


def test_anomaly_mode_restored_after_success_and_error():
    loss, model = seed_simplenet()
    with torch.autograd.set_detect_anomaly(True, check_nan=True):
        expand(loss, model, order=1)
        assert torch.is_anomaly_enabled() and torch.is_anomaly_check_nan_enabled()
    assert not torch.is_anomaly_enabled()
    loss.backward()  # frees the graph: the gradient pass inside expand() fails
    with pytest.raises(ValueError, match="already freed"):
        expand(loss, model)
    assert not torch.is_anomaly_enabled()


def test_seed_x4_third_order():
    x = torch.tensor(1.0, requires_grad=True)
    g = expand(x**4, {"x": x}, order=3, keep=True)
    assert sorted(order_summary(g)) == [0, 1, 2, 3]
    roots = [[g.grad_fn(o["node"])] for o in g.outputs]
    names = [o["name"] for o in g.outputs]
    assert names == ["loss", "grad[x]", "grad.v", "hvp[x]", "hvp.v", "d3[x]"]
    stages = [roots[0], roots[1], roots[2] + roots[3], roots[4] + roots[5]]
    seen: set = set()
    for k, stage in enumerate(stages):
        layer = reached(stage) - seen
        assert fns_of_order(g, k) == layer
        seen |= layer


def test_order_summary_adds_up_to_the_graph_summary():
    loss, model = seed_simplenet()
    g = expand(loss, model)
    rows = order_summary(g)
    total = g.summary()
    assert sum(r["nodes"] for r in rows.values()) == total["nodes"]
    assert sum(r["saved_bytes"] for r in rows.values()) == total["saved_bytes"]
    assert total["by_order"] == {k: r["nodes"] for k, r in rows.items()}
    assert rows[0]["nodes"] == len(trace(loss))
    assert rows[1]["saved_bytes"] > 0 and rows[2]["saved_bytes"] > 0


def test_diff_against_the_loss_graph_by_identity_and_structure():
    loss, model = seed_simplenet()
    for keep in (True, False):
        before = trace({"loss": loss}, model=model, keep=keep)
        grown = expand(loss, model, keep=keep)
        d = before.diff(grown)
        assert d.removed == []
        assert sorted(d.added) == sorted(
            n for n, o in grown.dag.nodes(data="order") if o >= 1
        )
        assert sorted(d.matched.values()) == sorted(
            n for n, o in grown.dag.nodes(data="order") if o == 0
        )
        for u, v in d.matched.items():
            assert before.dag.nodes[u]["op"] == grown.dag.nodes[v]["op"]
            assert before.dag.nodes[u]["name"] == grown.dag.nodes[v]["name"]
        assert d.summary()["added_saved_bytes"] == sum(
            r["saved_bytes"] for k, r in order_summary(grown).items() if k
        )


def test_diff_structure_matches_identity():
    loss, model = seed_simplenet()
    a, b = trace(loss, keep=True), expand(loss, model, keep=True)
    by_identity = a.diff(b).matched
    a._fns = None
    assert a.diff(b).matched == by_identity


def test_diff_of_two_forward_passes_shares_only_the_parameters():
    loss1, model = seed_simplenet()
    loss2 = nn.MSELoss()(model(torch.ones(3, 1)), torch.zeros(3, 1))
    d = trace(loss1, model=model).diff(trace(loss2, model=model))
    a = trace(loss1, model=model)
    ops = {a.dag.nodes[u]["op"] for u in d.matched}
    assert ops == {"AccumulateGrad"} and len(d.matched) == 6
    with pytest.raises(TypeError, match="two GradGraphs"):
        a.diff(loss2)


def test_rendering_the_grown_graph():
    loss, model = seed_simplenet()
    g = expand(loss, model)
    dot = g.to_dot(edge_labels=True)
    created = [k for *_, k in g.dag.edges(data="kind")].count(CREATED_BY)
    assert created > 0
    assert len(re.findall(r"style=dashed", dot)) == created
    lines = g.to_text().splitlines()
    assert len(lines) == len(g)
    data = json.loads(g.to_json())
    assert [e.get("kind") for e in data["edges"]].count(CREATED_BY) == created
    assert {g.dag.nodes[n]["op"] for n in g.leaves} == {"AccumulateGrad"}
    assert "<svg" in g.to_svg()
    u, v = next(iter(g.dag.edges))
    g.dag.edges[u, v]["kind"] = "mystery"
    with pytest.raises(ValueError, match="no style for edge kind 'mystery'"):
        g.to_dot()


def test_bad_inputs():
    loss, model = seed_simplenet()
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"\['weight', 'bias'\] are not in the loss"):
        expand(loss, other)
    mixed = {"w": model[0].weight, "stranger": other.weight}
    with pytest.raises(ValueError, match=r"\['stranger'\] are not in the loss"):
        expand(loss, mixed)
    with pytest.raises(ValueError, match="order must be an int >= 1"):
        expand(loss, model, order=0)
    with pytest.raises(ValueError, match="shape"):
        expand(loss, model, vector=torch.zeros(3))
    with pytest.raises(ValueError, match="scalar"):
        expand(model[0].weight * 2, model)
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="order=1"):
        expand((2 * x).sum(), x, order=2)  # linear: the gradient is a constant
    with pytest.raises(ValueError, match="at least one stage"):
        trace_orders()
    with pytest.raises(ValueError, match="no stage has a tensor"):
        trace_orders(torch.ones(2))
    assert not torch.is_anomaly_enabled()
