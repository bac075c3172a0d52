"""record_backward()/recording(): order and counts against torch's own node hooks,
gradients against torch, hook removal, retain_graph and gradient accumulation
(seed section 3)."""

from __future__ import annotations

import gc
import re
import weakref

import networkx as nx
import pytest
import torch

from gradgraph import trace
from gradgraph.recorder import record_backward, recording
from gradgraph.retain import SECOND_BACKWARD, explain_retain_graph

from .cases import GRAPHS, seed_simplenet


def next_edges(graph):
    return [(u, v) for u, v, d in graph.dag.edges(data=True) if "input_nr" in d]


def torch_prehook_order(outputs, grad_tensors=None):
    """Node ids in the order torch calls prehooks, hooks registered by the test."""
    g = trace(outputs, keep=True)
    seen, handles = [], []
    for n in g.dag:
        handles.append(g.grad_fn(n).register_prehook(lambda _, n=n: seen.append(n)))
    try:
        torch.autograd.backward(outputs, grad_tensors, retain_graph=True)
    finally:
        for h in handles:
            h.remove()
    return seen


def seed_section_3():
    inp = torch.eye(4, 5, requires_grad=True)
    out = (inp + 1).pow(2).t()
    return inp, out


def ones_for(outputs):
    outs = outputs if isinstance(outputs, tuple) else (outputs,)
    return outs, [torch.ones_like(o) for o in outs]


@pytest.mark.parametrize("name", ["seed_simplenet", *sorted(GRAPHS)])
def test_order_is_topological_and_matches_torch_prehooks(name):
    if name == "seed_simplenet":
        outputs, kw = seed_simplenet()[0], {}
    else:
        outputs, kw = GRAPHS[name]()
    outs, ones = ones_for(outputs)
    rec = record_backward(*outs, grad_tensors=ones, retain_graph=True, **kw)
    (call,) = rec.calls
    graph = rec.graph
    assert sorted(call.order) == sorted(graph.dag)  # every node ran exactly once
    position = {n: i for i, n in enumerate(call.order)}
    check = nx.DiGraph(next_edges(graph))
    check.add_nodes_from(graph.dag)
    assert all(position[u] < position[v] for u, v in check.edges)
    assert rec.is_topological()
    assert sorted(call.finished) == sorted(call.order)
    # the ids are the trace's ids, and torch's own prehooks fire in the same order
    assert [d["op"] for _, d in sorted(trace(*outs).dag.nodes(data=True))] == [
        d["op"] for _, d in sorted(graph.dag.nodes(data=True))
    ]
    assert call.order == torch_prehook_order(outs, ones)


def test_gradients_that_flowed_match_torch():
    loss, model = seed_simplenet()
    rec = record_backward(loss, model=model)
    (call,) = rec.calls
    graph = rec.graph
    params = dict(model.named_parameters())
    leaves = [n for n, d in graph.dag.nodes(data=True) if d["op"] == "AccumulateGrad"]
    assert sorted(graph.dag.nodes[n]["name"] for n in leaves) == sorted(params)
    for n in leaves:
        p = params[graph.dag.nodes[n]["name"]]
        (arrived,) = call.incoming[n]
        assert arrived.shape == tuple(p.shape)
        assert arrived.norm == pytest.approx(p.grad.double().norm().item(), rel=1e-6)
        assert call.accumulated[n].norm == pytest.approx(arrived.norm)
        assert call.outgoing[n] == ()
    (seed,) = call.incoming[graph.roots[0]]
    assert seed.shape == () and seed.norm == 1.0
    # what the root sent on is what arrived at its next functions
    root_out = call.outgoing[graph.roots[0]]
    for v in graph.dag.successors(graph.roots[0]):
        nr = graph.dag.edges[graph.roots[0], v]["input_nr"]
        assert call.incoming[v][0].norm == pytest.approx(root_out[nr].norm)


def test_retain_graph_twice_runs_twice_and_accumulates_twice():
    loss, model = seed_simplenet()
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
    once = dict(zip(params, grads, strict=True))
    rec = record_backward(loss, model=model, retain_graph=True, times=2)
    assert len(rec.calls) == 2
    assert set(rec.counts().values()) == {2}
    assert rec.calls[0].order == rec.calls[1].order
    for node, norms in rec.accumulated().items():
        name = rec.graph.dag.nodes[node]["name"]
        torch.testing.assert_close(params[name].grad, 2 * once[name])
        assert norms[1] == pytest.approx(2 * norms[0], rel=1e-6)
    annotated = rec.annotated()
    assert all(d["runs"] == 2 for _, d in annotated.dag.nodes(data=True))
    assert annotated.dag.nodes[annotated.roots[0]]["step"] == 0
    assert "runs" not in rec.graph.dag.nodes[0]  # the record's graph is untouched


def test_hooks_are_removed_afterwards():
    loss, model = seed_simplenet()
    rec = record_backward(loss, model=model, retain_graph=True)
    loss.backward(retain_graph=True)
    assert len(rec.calls) == 1  # a later backward calls nothing of ours
    ref = weakref.ref(rec)
    del rec
    gc.collect()
    assert ref() is None  # no hook on the still-alive graph holds the record


def test_hooks_are_removed_when_the_block_raises():
    loss, _ = seed_simplenet()
    with pytest.raises(KeyError, match="boom"):
        with recording(loss) as rec:
            loss.backward(retain_graph=True)
            raise KeyError("boom")
    loss.backward(retain_graph=True)
    assert len(rec.calls) == 1
    # a backward that fails inside record_backward also leaves no hook
    inp, out = seed_section_3()
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        record_backward(out)
    ref = weakref.ref(rec)
    del rec
    gc.collect()
    assert ref() is None
    with recording(out) as rec:
        pass
    out.backward(torch.ones_like(out))
    assert rec.calls == []


def test_seed_section_3_gradient_accumulation():
    inp, out = seed_section_3()
    ones = torch.ones_like(out)
    (first,) = torch.autograd.grad(out, inp, ones, retain_graph=True)
    grads = []
    with recording(out, names={inp: "inp"}) as rec:
        out.backward(ones, retain_graph=True)
        grads.append(inp.grad.clone())
        out.backward(ones, retain_graph=True)
        grads.append(inp.grad.clone())
        inp.grad.zero_()
        out.backward(ones, retain_graph=True)
        grads.append(inp.grad.clone())
    torch.testing.assert_close(grads[0], first)
    torch.testing.assert_close(grads[1], 2 * first)
    torch.testing.assert_close(grads[2], first)
    (leaf,) = [n for n, d in rec.graph.dag.nodes(data=True) if d["name"] == "inp"]
    norms = rec.accumulated()[leaf]
    assert norms == pytest.approx([g.double().norm().item() for g in grads])
    assert norms[1] == pytest.approx(2 * norms[0]) and norms[2] == pytest.approx(
        norms[0]
    )
    assert len(rec.calls) == 3 and set(rec.counts().values()) == {3}


def freed_by_torch(graph):
    """Nodes whose saved tensors torch refuses to give back (read via keep=True)."""
    freed = set()
    for n in graph.dag:
        fn = graph.grad_fn(n)
        for attr in dir(fn):
            if attr.startswith("_saved_"):
                try:
                    getattr(fn, attr)
                except RuntimeError:
                    freed.add(n)
    return freed


def mentioned(message):
    return {int(m) for m in re.findall(r"^  n(\d+) ", message, flags=re.M)}


def test_retain_graph_explained_and_shown_by_diff():
    inp, out = seed_section_3()
    ones = torch.ones_like(out)
    before = trace(out, keep=True)
    message = explain_retain_graph(out)
    assert message.startswith("No saved tensor of this graph is freed yet")
    assert "PowBackward0: self" in message
    out.backward(ones, retain_graph=True)
    assert before.diff(trace(out)).freed == [] and freed_by_torch(before) == set()
    out.backward(ones)  # a plain backward frees the buffers
    after = trace(out, keep=True)
    freed = freed_by_torch(after)
    assert freed and mentioned(explain_retain_graph(after)) == freed
    assert sorted(before.diff(after).freed) == sorted(freed)
    with pytest.raises(ValueError, match="already freed") as info:
        record_backward(out, grad_tensors=ones)
    assert mentioned(str(info.value)) == freed
    with pytest.raises(ValueError, match="Recompute the forward pass"):
        with recording(out):
            pass
    with pytest.raises(RuntimeError, match=SECOND_BACKWARD):
        out.backward(ones)  # what the explanation predicted


def test_explain_a_graph_that_saves_nothing():
    x = torch.ones(3, requires_grad=True)
    y = (x + 1).sum()
    assert "any number of times" in explain_retain_graph(y)
    y.backward()
    y.backward()  # torch agrees: nothing was freed, nothing is needed


def test_bad_arguments():
    loss, _ = seed_simplenet()
    with pytest.raises(ValueError, match="needs retain_graph=True"):
        record_backward(loss, times=2)
    with pytest.raises(ValueError, match="times must be an int"):
        record_backward(loss, times=0)
    with pytest.raises(ValueError, match="no grad_fn"):
        record_backward(torch.ones(2))


def test_recorded_numbers_are_drawn_on_the_nodes():
    import torch

    from gradgraph import record_backward

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = (x * 3).sum()
    record = record_backward(out, times=2, retain_graph=True)
    graph = record.annotated()
    dot = graph.to_dot()
    for _, data in graph.dag.nodes(data=True):
        assert data["runs"] == 2
        assert f"ran 2x · step {data['step']}" in dot
    leaf = next(n for n, d in graph.dag.nodes(data=True) if d["kind"] == "accumulate")
    norm = graph.dag.nodes[leaf]["grad_norm"]
    torch.testing.assert_close(norm, float(torch.full((2,), 3.0).norm()))
    assert f"|grad| {norm:.4g}" in dot
