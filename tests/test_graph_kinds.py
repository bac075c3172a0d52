"""Every kind of graph torch can make traces, matches torchviz, and is left as found.

Each test builds one kind of graph, traces it, checks what is special about it
and, where torchviz can draw it, that the node and edge sets equal torchviz's
(compared by grad_fn identity).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchviz
from torch.utils.checkpoint import checkpoint

from gradgraph import trace

from .cases import Square
from .torchviz_structure import our_structure, torchviz_structure


def traced_like_torchviz(outputs, **kw):
    """trace(outputs) after asserting its structure equals torchviz's."""
    g = trace(outputs, keep=True, **kw)
    assert our_structure(g) == torchviz_structure(torchviz.make_dot(outputs))
    return g


def ops(g) -> list[str]:
    return [op for _, op in sorted(g.dag.nodes(data="op"))]


def saved_of(g, op: str) -> tuple:
    (node,) = g.nodes_by_op(op)
    return g.dag.nodes[node]["saved"]


def leaf_names(g) -> set:
    return {d["name"] for _, d in g.dag.nodes(data=True) if d["kind"] == "accumulate"}


# -- in-place ops, version counters, views -----------------------------------------


def test_in_place_ops_on_a_saved_tensor_trace_without_a_version_error():
    x = torch.randn(4, requires_grad=True)
    a = x.exp()
    b = a.sin()  # SinBackward0 saves a
    a.mul_(2)  # bumps a's version: backward through b is now an error
    out = (b + a).sum()
    g = traced_like_torchviz(out, names={x: "x"})
    assert ops(g).count("ExpBackward0") == 1 and "MulBackward0" in ops(g)
    (saved,) = saved_of(g, "SinBackward0")
    assert saved["attr"] == "self" and saved["shape"] == (4,) and not saved["freed"]
    with pytest.raises(RuntimeError, match="inplace operation"):
        out.backward()


def test_in_place_on_a_view_gives_copy_slices():
    x = torch.randn(4, 3, requires_grad=True)
    base = x * 1.0
    base[1:].mul_(2)
    g = traced_like_torchviz(base.sum(), names={x: "x"})
    assert "CopySlices" in ops(g)
    assert leaf_names(g) == {"x"}


def test_views_and_as_strided():
    x = torch.randn(4, 6, requires_grad=True)
    y = x.view(2, 12).t()[3:].as_strided((3, 2), (1, 3)).unsqueeze(0).expand(2, -1, -1)
    g = traced_like_torchviz((y * 3).sum(), names={x: "x"})
    assert {
        "AsStridedBackward0",
        "ViewBackward0",
        "TBackward0",
        "ExpandBackward0",
    } <= set(ops(g))
    (expand,) = g.nodes_by_op("ExpandBackward0")
    assert g.dag.nodes[expand]["shape"] == (2, 3, 2)


# -- custom Functions ------------------------------------------------------------


class Double(torch.autograd.Function):
    """A custom Function that saves nothing."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_custom_function_with_saved_tensor_before_and_after_backward():
    x = torch.randn(3, requires_grad=True)
    out = Square.apply(x.sin()).sum()
    g = traced_like_torchviz(out, names={x: "x"})
    (saved,) = saved_of(g, "SquareBackward")
    assert saved == {
        "attr": "tensors[0]",
        "shape": (3,),
        "dtype": "float32",
        "nbytes": 12,
        "freed": False,
    }
    out.backward()
    with pytest.raises(RuntimeError):  # torch's own accessor fails after backward
        _ = out.grad_fn.next_functions[0][0].saved_tensors
    after = trace(out)
    freed = {"attr": "tensors", "shape": None, "dtype": None, "nbytes": 0}
    assert saved_of(after, "SquareBackward") == ({**freed, "freed": True},)
    assert ops(after) == ops(g)


def test_custom_function_without_saved_tensors():
    x = torch.randn(3, requires_grad=True)
    out = Double.apply(x).sum()
    g = traced_like_torchviz(out, names={x: "x"})
    assert saved_of(g, "DoubleBackward") == ()
    out.backward()
    # torch no longer tells how many a custom Function saved, or whether any
    assert saved_of(trace(out), "DoubleBackward") == (
        {"attr": "tensors", "shape": None, "dtype": None, "nbytes": 0, "freed": True},
    )


# -- checkpoint, hooks --------------------------------------------------------------


def test_checkpoint_is_traced_without_recomputing():
    calls = []

    def block(a):
        calls.append(1)
        return (a.sin() * a).tanh()

    x = torch.randn(3, requires_grad=True)
    out = checkpoint(block, x, use_reentrant=False).sum()
    g = traced_like_torchviz(out, names={x: "x"})
    assert len(calls) == 1  # tracing did not run the unpack hooks (recomputation)
    assert {"SinBackward0", "MulBackward0", "TanhBackward0"} <= set(ops(g))
    packed = [s for _, d in g.dag.nodes(data=True) for s in d["saved"]]
    assert packed and all(s.get("packed") and not s["freed"] for s in packed)
    out.backward()
    assert len(calls) == 2
    assert all(
        s["freed"] for _, d in trace(out).dag.nodes(data=True) for s in d["saved"]
    )

    reentrant = checkpoint(block, x, use_reentrant=True).sum()
    g2 = traced_like_torchviz(reentrant, names={x: "x"})
    assert "CheckpointFunctionBackward" in ops(g2) and "SinBackward0" not in ops(g2)


def test_saved_tensor_hooks_are_not_called_by_trace():
    calls = {"pack": 0, "unpack": 0}

    def pack(t):
        calls["pack"] += 1
        return ("boxed", t)

    def unpack(p):
        calls["unpack"] += 1
        return p[1]

    x = torch.randn(3, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = (x.sin() * x).sum()
    packed = calls["pack"]
    g = trace(out)
    assert calls == {"pack": packed, "unpack": 0}
    assert {s["packed"] for s in saved_of(g, "MulBackward0")} == {"tuple"}


def test_user_hooks_run_exactly_as_without_trace():
    def run(do_trace: bool):
        torch.manual_seed(0)
        lin = nn.Linear(3, 2)
        seen = []
        lin.register_forward_hook(lambda m, i, o: seen.append("fwd"))
        lin.register_full_backward_hook(lambda m, gi, go: seen.append("module_bwd"))
        x = torch.randn(4, 3, requires_grad=True)
        h = lin(x)
        h.register_hook(lambda grad: seen.append("tensor") or grad * 3)
        y = h.tanh()
        y.grad_fn.register_hook(lambda gi, go: seen.append("node_post"))
        y.grad_fn.register_prehook(lambda go: seen.append("node_pre"))
        out = y.sum()
        if do_trace:
            trace(out, model=lin)
            trace(out, model=lin)
        out.backward()
        return seen, x.grad, lin.weight.grad

    seen, xg, wg = run(True)
    ref_seen, ref_xg, ref_wg = run(False)
    assert seen == ref_seen and len(seen) == 5
    torch.testing.assert_close(xg, ref_xg)
    torch.testing.assert_close(wg, ref_wg)


# -- several outputs, partial graphs ----------------------------------------------


def test_several_outputs_share_one_subgraph():
    torch.manual_seed(0)
    x = torch.randn(3, requires_grad=True)
    h = x.exp().sin()
    outs = (h.sum(), (h * 2).mean(), h)
    g = traced_like_torchviz(outs, names={x: "x"})
    assert len(g.roots) == 3 and len(set(g.roots)) == 3
    assert ops(g).count("SinBackward0") == ops(g).count("ExpBackward0") == 1
    (sin,) = g.nodes_by_op("SinBackward0")
    assert g.dag.in_degree(sin) == 2  # h's node, shared by the two reductions


def test_detach_and_no_grad_cut_the_graph():
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        frozen = w.exp()
    cut = (x * 3).detach()
    out = (x * cut + w * frozen).sum()
    g = traced_like_torchviz(out, names={x: "x", w: "w"})
    assert leaf_names(g) == {"x", "w"}
    assert "ExpBackward0" not in ops(g) and ops(g).count("MulBackward0") == 2
    with torch.no_grad():
        inside = (x * 2).sum()
    with pytest.raises(ValueError, match="no grad_fn"):
        trace(inside)


def test_integer_and_bool_tensors_in_the_graph():
    x = torch.randn(5, requires_grad=True)
    idx = torch.tensor([0, 2, 2])
    mask = x > 0
    out = (
        x[idx].sum()
        + x.masked_select(mask).sum()
        + torch.where(mask, x, x * 2).sum()
        + x.gather(0, idx).sum()
    )
    g = traced_like_torchviz(out, names={x: "x"})
    saved = [s for _, d in g.dag.nodes(data=True) for s in d["saved"]]
    assert {"int64", "bool"} <= {s["dtype"] for s in saved}
    assert leaf_names(g) == {"x"}


def test_complex_dtypes():
    z = torch.randn(3, dtype=torch.cfloat, requires_grad=True)
    out = (z * z.conj()).real.sum()
    g = traced_like_torchviz(out, names={z: "z"})
    dtypes = dict(g.dag.nodes(data="dtype"))
    (mul,) = g.nodes_by_op("MulBackward0")
    assert dtypes[mul] == "complex64" and dtypes[g.roots[0]] == "float32"


def test_sparse_tensors():
    i = torch.tensor([[0, 1, 1], [2, 0, 2]])
    s = torch.sparse_coo_tensor(
        i, torch.tensor([3.0, 4.0, 5.0]), (2, 3), check_invariants=True
    ).requires_grad_()
    d = torch.randn(3, 2, requires_grad=True)
    out = torch.sparse.mm(s, d).sum() + s.to_dense().sum()
    g = traced_like_torchviz(out, names={s: "s", d: "d"})
    assert leaf_names(g) == {"s", "d"}
    assert {"SparseAddmmBackward0", "ToDenseBackward0"} <= set(ops(g))
    assert {a["attr"] for a in saved_of(g, "SparseAddmmBackward0")} == {"mat1", "mat2"}


def test_torch_compile_is_one_opaque_node():
    def block(a):
        return (a.sin() * a).sum()

    compiled = torch.compile(block, backend="aot_eager")
    x = torch.randn(3, requires_grad=True)
    out = compiled(x) * 2
    g = traced_like_torchviz(out, names={x: "x"})
    assert ops(g) == ["MulBackward0", "CompiledFunctionBackward", "AccumulateGrad"]
    (node,) = g.nodes_by_op("CompiledFunctionBackward")
    assert [g.dag.nodes[c]["name"] for c in g.dag.successors(node)] == ["x"]
    out.backward()
    torch.testing.assert_close(x.grad, 2 * (x.sin() + x * x.cos()).detach())


# -- models ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_recurrent_layers(cls):
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=2, batch_first=True)
    out, _ = m(torch.randn(2, 5, 3))
    g = traced_like_torchviz(out.sum(), model=m)
    assert leaf_names(g) == {n for n, _ in m.named_parameters()}


def test_multihead_attention():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(1, 4, 8, requires_grad=True)
    out, weights = m(x, x, x)
    g = traced_like_torchviz((out.pow(2).mean(), weights), model=m, names={x: "x"})
    assert leaf_names(g) == {n for n, _ in m.named_parameters()} | {"x"}
    assert g.dag.nodes[g.roots[1]]["shape"] == (1, 4, 4)


def test_data_parallel_style_sum_of_losses():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    shards = torch.randn(8, 4).chunk(4)
    loss = sum(m(s).pow(2).mean() for s in shards)
    g = traced_like_torchviz(loss, model=m)
    assert ops(g).count("AddmmBackward0") == 8  # two layers per shard
    params = {d["name"]: n for n, d in g.dag.nodes(data=True) if d["name"]}
    assert set(params) == {n for n, _ in m.named_parameters()}
    assert all(g.dag.in_degree(params[f"{i}.bias"]) == 4 for i in (0, 2))


# -- freed and retained graphs -------------------------------------------------------


def test_lstm_after_backward_and_after_retain_graph():
    torch.manual_seed(0)
    m = nn.LSTM(3, 4)
    out = m(torch.randn(5, 1, 3))[0].sum()
    before = trace(out, model=m)
    out.backward(retain_graph=True)
    retained = trace(out, model=m)
    assert retained.summary() == before.summary()
    assert before.summary()["freed_tensors"] == 0
    out.backward()
    freed = trace(out, model=m)
    s = freed.summary()
    assert s["freed_tensors"] == s["saved_tensors"] >= 1 and s["saved_bytes"] == 0
    assert list(freed.dag.nodes(data="op")) == list(before.dag.nodes(data="op"))
    assert list(freed.dag.edges) == list(before.dag.edges)
