"""second_order_blockers and SecondOrderError: double backward torch cannot do."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

import gradgraph
from gradgraph import SecondOrderError, record_modules, second_order_blockers
from gradgraph.derivatives.propagation import diagonal_method
from tests.cases import Cube as CubeTwice
from tests.test_hygiene import global_state
from tests.tiny_transformers import tiny_gpt2, tiny_llama


def encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def encoder_loss(model, math=False):
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    if math:
        with sdpa_kernel(SDPBackend.MATH):
            return model(x).pow(2).mean()
    return model(x).pow(2).mean()


def double_backward_fails(loss, params) -> bool:
    """The peer: does torch's own double backward go through?"""
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    live = [g for g in grads if g is not None and g.requires_grad]
    if not live:
        return False
    try:
        torch.autograd.grad(sum((g * g).sum() for g in live), params, allow_unused=True)
    except RuntimeError:
        return True
    return False


def test_cpu_transformer_encoder_lists_its_flash_attention_nodes():
    model = encoder()
    with record_modules(model) as rec:
        loss = encoder_loss(model)
    found = second_order_blockers(loss, modules=rec)
    assert [b.op for b in found] == [
        "ScaledDotProductFlashAttentionForCpuBackward0"
    ] * 2
    assert sorted(b.module for b in found) == [f"layers.{i}.self_attn" for i in (0, 1)]
    graph = gradgraph.trace(loss)
    assert all(graph.dag.nodes[b.node]["op"] == b.op for b in found)
    assert all("SDPBackend.MATH" in b.fix for b in found)
    assert double_backward_fails(encoder_loss(model), list(model.parameters()))


def test_the_math_kernel_and_eager_models_have_no_blockers():
    model = encoder()
    loss = encoder_loss(model, math=True)
    assert second_order_blockers(loss) == []
    assert not double_backward_fails(loss, list(model.parameters()))
    for model, ids in (tiny_gpt2(), tiny_llama()):
        loss = model(ids, labels=ids).loss
        assert second_order_blockers(loss) == []


def test_transformers_sdpa_attention_is_found_where_torch_picks_flash():
    model, ids = tiny_llama(attn="sdpa", layers=1)
    loss = model(ids, labels=ids).loss
    found = second_order_blockers(loss)
    assert bool(found) == double_backward_fails(
        model(ids, labels=ids).loss, list(model.parameters())
    )


class Cube(CubeTwice):
    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


def test_once_differentiable_functions_are_blockers_even_when_torch_says_nothing():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    # a constant gradient reaches Cube: torch builds no graph and no error, so
    # an HVP would silently miss Cube's curvature (6 w)
    loss = Cube.apply(w).sum()
    (found,) = second_order_blockers(loss)
    assert found.op == "CubeBackward" and "once_differentiable" in found.reason
    with pytest.raises(SecondOrderError, match="CubeBackward") as err:
        gradgraph.hvp(loss, w, torch.ones(2))
    assert err.value.blockers == [found]
    assert second_order_blockers(CubeTwice.apply(w).sum()) == []
    torch.testing.assert_close(
        gradgraph.hvp(CubeTwice.apply(w).sum(), w, torch.ones(2)), 6 * w.detach()
    )


def test_ops_without_double_backward_are_listed_and_torch_agrees():
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    for loss, op in (
        (torch.cdist(x, x + 1).sum(), "CdistBackward0"),
        (torch.nn.functional.pdist(x).sum(), "PdistBackward0"),
    ):
        assert [b.op for b in second_order_blockers(loss)] == [op]
        assert double_backward_fails(loss, [x])
    assert second_order_blockers(torch.tanh(x).sum()) == []


def test_the_fused_weight_norm_is_a_blocker_and_its_double_backward_is_wrong():
    """torch 2.13's Hessian through ``_weight_norm`` is not symmetric (so not a
    Hessian): HVP methods refuse it; the propagated diagonal equals the weight
    norm written out."""
    torch.manual_seed(0)
    v = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[-0.9], [1.1], [-1.7]], dtype=torch.float64)
    weights = torch.randn(3, 4, dtype=torch.float64)

    def fused(v):
        return (weights * torch._weight_norm(v, g, 0)).sum()

    def written_out(v):
        return (weights * g * v / v.norm(dim=1, keepdim=True)).sum()

    wrong = torch.autograd.functional.hessian(fused, v).reshape(12, 12)
    right = torch.autograd.functional.hessian(written_out, v).reshape(12, 12)
    # torch's bug; once a torch fixes it, the blocker should go
    assert not torch.allclose(wrong, wrong.T)
    loss = torch.tanh(fused(v))
    assert [b.op for b in second_order_blockers(loss)] == [
        "WeightNormInterfaceBackward0"
    ]
    with pytest.raises(SecondOrderError, match="weight norm"):
        gradgraph.hvp(loss, v, torch.ones_like(v))
    exact = torch.autograd.functional.hessian(
        lambda v: torch.tanh(written_out(v)), v
    ).reshape(12, 12)
    got = gradgraph.hessian_diagonal(torch.tanh(fused(v)), v)
    torch.testing.assert_close(got.reshape(-1), exact.diagonal())
    assert not torch.allclose(wrong, right)


@pytest.mark.parametrize(
    "call",
    [
        lambda loss, m: gradgraph.hvp(
            loss, m, [torch.ones_like(p) for p in m.parameters()]
        ),
        lambda loss, m: gradgraph.hessian(loss, m, max_size=10**4),
        lambda loss, m: gradgraph.hessian_blocks(loss, m),
        lambda loss, m: gradgraph.hessian_diagonal(loss, m, method="rows"),
        lambda loss, m: gradgraph.hessian_diagonal(loss, m, method="hutchinson"),
        lambda loss, m: gradgraph.hessian_trace(loss, m),
        lambda loss, m: gradgraph.hessian_eigenvalues(loss, m, k=1),
        lambda loss, m: gradgraph.hessian_operator(loss, m).matvec(
            torch.ones(sum(p.numel() for p in m.parameters()))
        ),
        lambda loss, m: gradgraph.expand(loss, m, order=2),
    ],
    ids=[
        "hvp",
        "hessian",
        "hessian_blocks",
        "diagonal_rows",
        "hutchinson",
        "trace",
        "eigenvalues",
        "operator",
        "expand",
    ],
)
@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_every_second_order_function_names_the_node_and_the_fix(call):
    model = encoder()
    loss = encoder_loss(model)
    before = global_state()
    with pytest.raises(SecondOrderError) as err:
        call(loss, model)
    assert global_state() == before
    text = str(err.value)
    assert "ScaledDotProductFlashAttentionForCpuBackward0 (node " in text
    assert "sdpa_kernel(torch.nn.attention.SDPBackend.MATH)" in text
    assert isinstance(err.value, RuntimeError) and len(err.value.blockers) == 2


def test_derivatives_of_a_once_differentiable_function():
    with pytest.raises(SecondOrderError, match="CubeBackward"):
        gradgraph.derivatives(Cube.apply, torch.tensor([1.0, 2.0]), order=2)
    d1, d2 = gradgraph.derivatives(CubeTwice.apply, torch.tensor([1.0, 2.0]), order=2)
    torch.testing.assert_close(d2, torch.tensor([6.0, 12.0]))


def test_gradients_handed_in_are_caught_when_the_second_backward_fails():
    model = encoder()
    loss = encoder_loss(model)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    with pytest.raises(SecondOrderError, match="flash_attention") as err:
        gradgraph.hvp(None, params, [torch.ones_like(p) for p in params], grads=grads)
    assert "SDPBackend.MATH" in str(err.value)


def test_curvature_runs_attention_on_the_math_kernel_by_itself():
    model = encoder()
    x = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(1))
    target = torch.zeros(4, 5, 16)
    data = [(x[:2], target[:2]), (x[2:], target[2:])]

    def loss_fn(out, t):
        return (out - t).pow(2).mean()

    curvature = gradgraph.Curvature(model, loss_fn, data, progress=False)
    vector = torch.randn(curvature.dim, generator=torch.Generator().manual_seed(2))
    ours = curvature.matvec(vector)
    # the peer: the same loss on the math kernel, differentiated by hand
    params = list(model.parameters())
    with sdpa_kernel(SDPBackend.MATH):
        loss = sum(loss_fn(model(b), t) * len(b) for b, t in data) / len(x)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    reference = torch.cat(
        [h.reshape(-1) for h in torch.autograd.grad(flat @ vector, params)]
    )
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    # and outside Curvature the user's forward is untouched: flash again
    assert second_order_blockers(encoder_loss(model))


@pytest.mark.parametrize("bag", [False, True], ids=["embedding", "embedding_bag"])
def test_an_embedding_scaled_by_frequency_is_a_blocker_everywhere(bag):
    """Its backward divides rows by their counts: no Hessian of the loss."""
    torch.manual_seed(0)
    kind = torch.nn.EmbeddingBag if bag else torch.nn.Embedding
    table = kind(5, 3, scale_grad_by_freq=True).double()
    ids = torch.tensor([[1, 1, 2], [0, 1, 4]])

    def loss_of(t):
        return torch.tanh(t(ids)).pow(2).sum()

    op = "EmbeddingBagBackward0" if bag else "EmbeddingBackward0"
    assert [b.op for b in second_order_blockers(loss_of(table))] == [op]
    with pytest.raises(SecondOrderError, match="scale_grad_by_freq=False"):
        gradgraph.hessian_diagonal(loss_of(table), table)
    with pytest.raises(SecondOrderError, match="scale_grad_by_freq"):
        gradgraph.hvp(loss_of(table), table, [torch.ones(5, 3, dtype=torch.float64)])
    assert diagonal_method(loss_of(table), table) == "rows"
    plain = kind(5, 3).double()
    plain.load_state_dict(table.state_dict())
    assert second_order_blockers(loss_of(plain)) == []
