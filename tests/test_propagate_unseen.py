"""Patterns met on architectures outside the zoo, each against torch's Hessian.

Every case here broke propagation (a crash or a refusal) on some tiny
``transformers`` or torch model before; each is now checked on its own small
graph against ``torch.autograd.functional.hessian``.
"""

from __future__ import annotations

import torch

from gradgraph.derivatives.propagation import (
    diagonal_method,
    propagated_hessian_diagonal,
    unsupported_ops,
)

F = torch.nn.functional


def _dense_diagonal(loss_of, w: torch.Tensor) -> torch.Tensor:
    dense = torch.autograd.functional.hessian(loss_of, w.detach())
    return dense.reshape(w.numel(), w.numel()).diagonal().reshape(w.shape)


def _check(loss_of, w: torch.Tensor, **tolerance) -> None:
    assert diagonal_method(loss_of(w), w) == "propagate"
    got = propagated_hessian_diagonal(loss_of(w), w)
    expected = _dense_diagonal(loss_of, w)
    assert expected.abs().max() > 0
    tolerance = tolerance or {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(got, expected, **tolerance)


def test_an_op_that_promotes_a_float32_input():
    """GPT-J: a float32 attention score plus a float64 mask is float64, and
    autograd casts the gradient back to float32 for the matmul below; the
    columns are cast the same way (before: ``expected scalar type Double``)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)  # float32
    mask = torch.randn(2, 3, 3, dtype=torch.float64)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)

    def loss_of(weight):
        h = x @ weight.float()
        scores = h @ h.transpose(1, 2)  # float32, both sides depend on weight
        return torch.tanh(scores + mask).pow(2).sum()

    _check(loss_of, w, rtol=1e-4, atol=1e-5)  # float32 inside, on both sides


def test_weight_norm_matches_the_written_out_map():
    """``weight_norm`` (wav2vec2's positional convolution) against the same map
    written out; torch's own double backward of the fused node is wrong (its
    Hessian is not even symmetric), so it cannot be the reference."""
    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64)
    v = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[-0.9], [1.1], [-1.7]], dtype=torch.float64)

    def written_out(v):
        w = g * v / v.norm(dim=1, keepdim=True)
        return torch.tanh(x @ w.T).pow(2).sum()

    loss = torch.tanh(x @ torch._weight_norm(v, g, 0).T).pow(2).sum()
    assert diagonal_method(loss, v) == "propagate"
    got = propagated_hessian_diagonal(loss, v)
    expected = _dense_diagonal(written_out, v)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_normalize_propagates_and_other_norms_are_refused():
    """F.normalize (CLIP-style heads): the 2-norm along a dim has a rule; the
    norm of a whole tensor or another order falls back to rows."""
    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def loss_of(weight):
        return (F.normalize(x @ weight.T, dim=-1) * x[:, :3]).sum() ** 2

    _check(loss_of, w)
    for norm in (lambda h: h.norm(), lambda h: h.norm(p=1, dim=1)):
        assert unsupported_ops(norm(x @ w.T).sum(), w) == [
            "LinalgVectorNormBackward0 (not the 2-norm along one dim)"
        ]


def test_embedding_bag_against_the_bag_written_out():
    """EmbeddingBag: torch has no double backward for it, so HVP rows cannot
    run; propagation does, and equals the bag written out as a mean of rows."""
    torch.manual_seed(0)
    ids = torch.tensor([[1, 0, 1], [3, 3, 0], [2, 1, 0]])
    head = torch.randn(3, 2, dtype=torch.float64)
    weight = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def fused(w):
        return (torch.tanh(F.embedding_bag(ids, w)) @ head).pow(2).sum()

    def written_out(w):
        return (torch.tanh(F.embedding(ids, w).mean(1)) @ head).pow(2).sum()

    assert diagonal_method(fused(weight), weight) == "propagate"
    got = propagated_hessian_diagonal(fused(weight), weight)
    expected = _dense_diagonal(written_out, weight)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
