"""A head that shares the embedding's weight: its columns fold (``MatMul.fold``).

The loss's columns and the head's own cross term both meet themselves again
at the shared weight, so they cannot be compressed as they are. The fold
carries one column per entry of the head's input row (the eigenvectors of
their signed Gram) and pairs them with partners at the weight
(``columns.Paired``). Each case is checked against the dense float64 Hessian
(or the Gauss-Newton matrix) and asserts that the fold ran: Linear heads with
and without bias, ``addmm`` with ``alpha`` and ``beta``, a vocabulary smaller
than the width (a rank-deficient Gram, with zero eigenvalues whose columns
still carry partners), columns of both signs (a tanh after the head), and
a head whose incoming columns also run elsewhere (only the residual folds),
and a tied autoencoder (per-sample rows, the weight not transposed); and
transformers' DistilBERT masked-LM head against HVP rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jacrev

import gradgraph
from gradgraph.derivatives.propagation import ggn_diagonal, registry

from .model_reference import assert_propagates_exactly, flat
from .reference import flat_params, unflatten

LENGTH = 3


class TiedLM(nn.Module):
    """Embedding, a tanh layer, and a head that reuses the embedding's weight."""

    def __init__(self, vocab: int, width: int, head: str):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        if head in ("linear", "addmm"):
            self.bias = nn.Parameter(torch.randn(vocab) / 4)
        if head == "branch":
            self.side = nn.Linear(width, vocab)
        self.head = head

    def forward(self, ids):
        h = torch.tanh(self.mix(self.wte(ids))).reshape(-1, self.wte.embedding_dim)
        w = self.wte.weight
        if self.head == "mm":
            logits = h @ w.T
        elif self.head == "linear":
            logits = F.linear(h, w, self.bias)
        elif self.head == "addmm":
            logits = torch.addmm(self.bias, h, w.T, beta=2.0, alpha=0.5)
        elif self.head == "squash":  # tanh's curvature: columns of both signs
            logits = 3 * torch.tanh(h @ w.T)
        else:  # "branch": the head's columns also run through a side path
            logits = torch.tanh(h @ w.T + self.side(h))
        return logits.view(*ids.shape, -1)


def _ids(vocab: int) -> torch.Tensor:
    return torch.tensor([[0, vocab - 1, 1], [2, 2, vocab - 1]]) % vocab


def _loss_for(vocab: int):
    ids = _ids(vocab)

    def loss(logits):
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1)
        )

    return loss


def _model(vocab: int, width: int, head: str) -> TiedLM:
    torch.manual_seed(0)
    return TiedLM(vocab, width, head).double()


@pytest.fixture
def folds(monkeypatch):
    """The number of columns blocks each fold took (one entry per fold)."""
    taken: list[int] = []
    rule = registry.rule_for("MmBackward0")
    fold = type(rule).fold

    def spy(self, ctx, blocks, with_residual):
        out = fold(self, ctx, blocks, with_residual)
        if out is not None:
            taken.append(len(blocks))
        return out

    monkeypatch.setattr(type(rule), "fold", spy)
    return taken


@pytest.mark.parametrize("head", ["mm", "linear", "addmm", "squash"])
@pytest.mark.parametrize("vocab, width", [(7, 4), (3, 5)])
def test_a_tied_head_folds_and_the_diagonal_is_exact(folds, head, vocab, width):
    model = _model(vocab, width, head)
    assert_propagates_exactly(model, _loss_for(vocab), _ids(vocab))
    assert folds and all(n >= 1 for n in folds)  # the columns ending there folded


def test_columns_that_also_run_elsewhere_leave_only_the_residual_to_fold(folds):
    model = _model(6, 4, "branch")
    assert_propagates_exactly(model, _loss_for(6), _ids(6))
    assert 0 in folds  # the tanh's columns are not local at the head


@pytest.mark.parametrize("head", ["mm", "linear"])
def test_the_gauss_newton_diagonal_of_a_tied_head(folds, head):
    vocab, width = 7, 4
    model = _model(vocab, width, head)
    ids, loss_of = _ids(vocab), _loss_for(vocab)
    names, shapes, theta = flat_params(model)

    def outputs(t):
        return functional_call(model, unflatten(t, names, shapes), (ids,))

    jac = jacrev(outputs)(theta).reshape(-1, theta.numel())
    out = outputs(theta).detach()
    loss_hessian = torch.autograd.functional.hessian(
        lambda o: loss_of(o.view_as(out)), out.reshape(-1)
    )
    expected = (jac.T @ loss_hessian @ jac).diagonal()
    got = ggn_diagonal(loss_of(model(ids)), model)
    torch.testing.assert_close(flat(got), expected, rtol=1e-10, atol=1e-12)
    assert folds  # the loss's columns fold without the residual too


class TiedAutoencoder(nn.Module):
    """Decoder = encoder's weight (not transposed): ``tanh(x W^T) W``."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(5, 3)

    def forward(self, x):
        return torch.tanh(self.encoder(x)) @ self.encoder.weight


def test_a_tied_autoencoder_folds_per_sample(folds):
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64)
    model = TiedAutoencoder().double()
    assert_propagates_exactly(model, lambda out: F.mse_loss(out, x), x)
    assert folds and set(folds) == {1}  # the loss columns folded (two runs)


def test_a_transformers_masked_lm_head_tied_to_its_embedding(folds):
    """DistilBERT's MLM head (dense, GELU, LayerNorm, then a Linear with bias
    whose weight is the word embedding) against HVP rows, float64."""
    transformers = pytest.importorskip("transformers")
    from .zoo import ZooModel, picks, reference_entries

    vocab = 64
    config = transformers.DistilBertConfig(
        vocab_size=vocab,
        dim=16,
        n_layers=1,
        n_heads=2,
        hidden_dim=32,
        max_position_embeddings=8,
        attn_implementation="eager",
        tie_word_embeddings=True,
        dropout=0.0,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = transformers.DistilBertForMaskedLM(config).double().eval()
    ids = torch.randint(3, vocab, (2, 6), generator=torch.Generator().manual_seed(0))

    def loss():
        return F.cross_entropy(model(ids).logits.reshape(-1, vocab), ids.reshape(-1))

    case = ZooModel("distilbert_mlm", model, loss)
    got = gradgraph.hessian_diagonal(loss(), case.params)
    chosen = picks(case.params)
    expected = reference_entries(case, chosen)
    scale = max(float(e.abs().max()) for e in expected.values())
    for name, where in chosen.items():
        torch.testing.assert_close(
            got[name].reshape(-1)[where], expected[name], rtol=1e-8, atol=1e-12 * scale
        )
    assert folds
