"""Propagation through what transformers are made of, against dense float64 truths.

Small graphs (split / unbind outputs meeting again, Q K^T and attention @ V
with both factors parameter-dependent, fused SDPA with no double backward)
against the dense Hessian; tiny GPT-2, BERT, LLaMA, ViT and
nn.TransformerEncoder (CPU flash SDPA) against HVP rows. Fused SDPA's
references run under ``sdpa_kernel(SDPBackend.MATH)``, where torch can
differentiate twice.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradgraph.derivatives import hessian_diagonal
from gradgraph.derivatives.propagation import (
    diagonal_method,
    propagated_hessian_diagonal,
    registry,
    unsupported_ops,
)
from gradgraph.examples import tiny_models

torch.manual_seed(0)
X = torch.randn(2, 3, 4, dtype=torch.float64)
MASK = torch.randn(3, 3, dtype=torch.float64)


def _dense_diagonal(f, shapes):
    """The dense Hessian's diagonal of ``f(*tensors)`` (SDPA by its math kernel)."""
    sizes = [torch.Size(s).numel() for s in shapes]

    def flat(theta):
        parts = theta.split(sizes)
        return f(*(p.reshape(s) for p, s in zip(parts, shapes, strict=True)))

    theta = torch.randn(sum(sizes), dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):
        hessian = torch.autograd.functional.hessian(flat, theta)
    parts = theta.split(sizes)
    return [p.reshape(s) for p, s in zip(parts, shapes, strict=True)], hessian


def _check(f, *shapes):
    values, hessian = _dense_diagonal(f, shapes)
    tensors = [v.clone().requires_grad_(True) for v in values]
    loss = f(*tensors)
    assert unsupported_ops(loss, tensors) == []
    got = propagated_hessian_diagonal(loss, tensors)
    got = torch.cat([g.reshape(-1) for g in got])
    torch.testing.assert_close(got, hessian.diagonal(), rtol=1e-10, atol=1e-12)


def _heads(w):
    return (X @ w).view(2, 3, 3, 4).transpose(1, 2)  # [batch, heads, tokens, 4]


GRAPHS = {
    "split outputs meet again": lambda w: (
        (w.split([1, 3], 1)[1] ** 3).sum()
        + (w.split(2, 1)[0] * w.split(2, 1)[1]).tanh().sum()
    ),
    "unbind outputs multiplied": lambda w: (
        (w.tanh().unbind(0)[0] * w.unbind(0)[2]).tanh().sum()
    ),
    "chunk, cat, stack, select": lambda w: (
        (torch.stack([torch.cat(w.chunk(2, 1)[::-1], 1), w.tanh()], 1).select(1, 0) * w)
        .tanh()
        .sum()
    ),
    "index, gather, slice": lambda w: (
        (w[:, [0, 0, 2]] ** 3).sum()
        + (w.gather(1, torch.tensor([[0, 0], [1, 3], [2, 2]])) * w[:, 1:3]).tanh().sum()
    ),
    "where and masked_fill": lambda w: (
        (torch.where(w > 0, w, w.tanh() * 2) ** 3).sum()
        + w.masked_fill(w > 0.5, 0.0).tanh().sum()
    ),
    "embedding with padding": lambda w, e: (
        (
            F.embedding(torch.tensor([[1, 0, 1, 1], [2, 2, 0, 1]]), e, padding_idx=0)
            @ w.T
        )
        .tanh()
        .sum()
    ),
    "Q K^T by bmm": lambda w: torch.bmm(X @ w, (X @ w).transpose(1, 2)).tanh().sum(),
    "baddbmm": lambda w: (
        torch.baddbmm(
            (X @ w)[:, :, :3],
            X @ w,
            (X @ w).transpose(1, 2)[:, :, :3],
            beta=0.5,
            alpha=1.5,
        )
        .tanh()
        .sum()
    ),
    "eager attention by matmul": lambda w: (
        (
            torch.matmul(_heads(w), _heads(w).transpose(-1, -2)).softmax(-1)
            @ _heads(w).sin()
        )
        .pow(3)
        .sum()
    ),
    "RMSNorm": lambda w: (
        (torch.rsqrt((X @ w).pow(2).mean(-1, keepdim=True) + 1e-6) * (X @ w))
        .tanh()
        .sum()
    ),
    "negative dims on a 3-d tensor": lambda w: (
        (X @ w).softmax(-1).log_softmax(-1).sum(-1).max(-1).values ** 3
    ).sum(),
    "hard activations": lambda w: (
        (F.hardswish(3 * X @ w) + F.relu6(3 * X @ w) * F.hardtanh(X @ w, -0.5, 0.5))
        .pow(2)
        .sum()
    ),
}


SHAPES = {  # the parameters' shapes where they are not one (4, 4) matrix
    "embedding with padding": [(3, 4), (5, 4)],
    "eager attention by matmul": [(4, 12)],
    "index, gather, slice": [(3, 4)],
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_graph_matches_the_dense_hessian(name):
    _check(GRAPHS[name], *SHAPES.get(name, [(4, 4)]))


@pytest.mark.parametrize(
    "options",
    [{}, {"is_causal": True, "scale": 0.7}, {"attn_mask": MASK}],
    ids=["plain", "causal-scaled", "float-mask"],
)
def test_fused_attention_matches_the_math_kernel(options):
    def f(w):
        x = _heads(w)
        q, k, v = x.tanh(), x * 0.5, x.sin()
        return (F.scaled_dot_product_attention(q, k, v, **options) ** 3).sum()

    w = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    fns = {type(fn).__name__ for fn in _grad_fns(f(w))}
    assert "ScaledDotProductFlashAttentionForCpuBackward0" in fns
    _check(f, (4, 12))


def test_attention_dropout_is_refused():
    """A fused node with dropout (CUDA builds them) is refused, by name."""
    w = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    fn = F.scaled_dot_product_attention(w, w, w).grad_fn
    rule = registry.rule_for(type(fn).__name__)
    assert rule.refuses(fn, [True] * 3, lambda i, j: True) is None

    class WithDropout:  # the same saved tensors, dropout_p as CUDA kernels save it
        _saved_query, _saved_key, _saved_value = w, w, w
        _saved_dropout_p = 0.5

    reason = rule.refuses(WithDropout(), [True] * 3, lambda i, j: True)
    assert "dropout_p > 0" in reason


def test_sparse_embedding_is_refused():
    e = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    loss = F.embedding(torch.tensor([1, 2, 1]), e, sparse=True).pow(3).sum()
    assert unsupported_ops(loss, e) == [
        "EmbeddingBackward0 (sparse gradients; use sparse=False)"
    ]
    assert diagonal_method(loss, e) == "rows"


def test_math_kernel_with_dropout_propagates():
    """On CPU, SDPA with dropout runs the math kernel: a fixed mask per forward."""
    w = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    loss = (F.scaled_dot_product_attention(w, w.tanh(), w, dropout_p=0.5) ** 3).sum()
    assert diagonal_method(loss, w) == "propagate"
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)
    rows = [
        torch.autograd.grad(grad.reshape(-1)[i], w, retain_graph=True)[0].reshape(-1)[i]
        for i in range(w.numel())
    ]
    got = propagated_hessian_diagonal(loss, w).reshape(-1)
    torch.testing.assert_close(got, torch.stack(rows), rtol=1e-10, atol=1e-12)


# -- tiny real models -----------------------------------------------------------


def _tiny_models():
    pytest.importorskip("transformers")
    ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))
    sizes = {"layers": 1, "width": 8, "vocab": 16, "positions": 8}  # 2 heads

    def lm_loss(logits):
        return F.cross_entropy(logits[:, :-1].reshape(-1, 16), ids[:, 1:].reshape(-1))

    gpt2 = tiny_models.gpt2(**sizes)
    llama = tiny_models.llama(kv_heads=1, **sizes)
    bert_model = tiny_models.bert(pooling=False, **sizes)
    vit = tiny_models.vit(
        layers=1, width=8, image=4, patch=2, channels=1, pooling=False
    )
    pixels = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    tokens = torch.randn(2, 4, 8, dtype=torch.float64)
    return {
        "gpt2": (gpt2, lambda m: lm_loss(m(input_ids=ids).logits)),
        "llama": (llama, lambda m: lm_loss(m(input_ids=ids).logits)),
        "bert": (bert_model, lambda m: m(input_ids=ids).last_hidden_state.sin().sum()),
        "vit": (vit, lambda m: m(pixel_values=pixels).last_hidden_state.sin().sum()),
        "transformer-encoder": (encoder, lambda m: m(tokens).sin().sum()),
    }


def _hvp_entries(model, loss_of, count: int = 2):
    """Sampled diagonal entries by HVP rows (SDPA by its math kernel)."""
    gen = torch.Generator().manual_seed(2)
    params = dict(model.named_parameters())
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(
            loss_of(model), list(params.values()), create_graph=True
        )
    entries = {}
    for (name, p), g in zip(params.items(), grads, strict=True):
        for i in torch.randint(0, p.numel(), (count,), generator=gen).tolist():
            row = torch.autograd.grad(g.reshape(-1)[i], p, retain_graph=True)[0]
            entries[name, i] = row.reshape(-1)[i]
    return entries


# transformers' LLaMA and ViT run the attention softmax (LLaMA: RMSNorm too) in
# float32 whatever the model's dtype (ToCopy nodes): both sides then carry
# float32 rounding. The others are float64 throughout.
FLOAT32_INSIDE = {"llama": 1e-5, "vit": 1e-5}


@pytest.mark.parametrize(
    "name", ["gpt2", "llama", "bert", "vit", "transformer-encoder"]
)
def test_tiny_transformer_is_exact_by_propagation(name):
    torch.manual_seed(0)
    model, loss_of = _tiny_models()[name]
    model = model.double().eval()
    loss = loss_of(model)
    assert diagonal_method(loss, model) == "propagate"
    fns = {type(fn).__name__ for fn in _grad_fns(loss)}
    assert ("ToCopyBackward0" in fns) == (name in FLOAT32_INSIDE)
    if name == "transformer-encoder":  # fused SDPA, no double backward from torch
        assert "ScaledDotProductFlashAttentionForCpuBackward0" in fns
    diagonal = hessian_diagonal(loss, model)
    entries = _hvp_entries(model, loss_of)
    got = torch.stack([diagonal[n].reshape(-1)[i] for n, i in entries])
    expected = torch.stack(list(entries.values()))
    error = (got - expected).norm() / expected.norm()
    assert error < FLOAT32_INSIDE.get(name, 1e-8)


def _grad_fns(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(child for child, _ in fn.next_functions)
    return seen
