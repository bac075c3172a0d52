"""A model zoo: tiny configurations of the architectures people train today.

Random init from a config, no downloads. Each builder returns a
:class:`ZooModel`: the module, a function that runs the forward pass and
returns a scalar loss, and the parameters (a name -> tensor dict).
``reference_entries`` picks a few diagonal entries of every parameter
tensor and computes them from Hessian-vector products (one double backward
each), so a check of the propagated diagonal needs no dense Hessian.

Example:
    >>> case = build("lstm", torch.float64)
    >>> case.loss().dtype, sum(p.numel() for p in case.params.values()) > 0
    (torch.float64, True)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradgraph.examples import tiny_models as tiny

F = nn.functional
VOCAB, SEQ, WIDTH, BATCH = 64, 8, 32, 2


@dataclass
class ZooModel:
    """One zoo entry: ``loss()`` runs the forward pass on fixed inputs."""

    name: str
    model: nn.Module
    loss: Callable[[], torch.Tensor]

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())


def _tokens(generator: torch.Generator) -> torch.Tensor:
    """Token ids with the first and last vocabulary rows in use."""
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)
    ids[0, 0], ids[-1, -1] = 0, VOCAB - 1
    return ids


def _language_model(model, dtype, generator):
    """A causal language model in eval mode, with its next-token loss."""
    model = model.to(dtype).eval()
    return model, _next_token_loss(model, _tokens(generator))


def _next_token_loss(model, ids):
    """Cross-entropy of each next token (a language model's training loss)."""

    def loss():
        logits = model(ids).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))

    return loss


def gpt2(dtype, generator):
    model = tiny.gpt2(
        width=WIDTH, vocab=VOCAB, positions=SEQ, bos_token_id=0, eos_token_id=0
    )
    return _language_model(model, dtype, generator)


def llama(dtype, generator):
    model = tiny.llama(width=WIDTH, vocab=VOCAB, positions=SEQ)
    return _language_model(model, dtype, generator)


def t5(dtype, generator):
    """T5 encoder-decoder: relative position buckets, RMS norm, cross-attention."""
    # one encoder and one decoder layer: the relative bias is the first's
    model = tiny.t5(layers=1, width=WIDTH // 2, vocab=VOCAB, positions=SEQ)
    model = model.to(dtype).eval()
    source, target = _tokens(generator), _tokens(generator)

    def loss():
        logits = model(input_ids=source, decoder_input_ids=target[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, VOCAB), target[:, 1:].reshape(-1))

    return model, loss


def bloom(dtype, generator):
    """BLOOM: ALiBi position bias through baddbmm, its own GeLU autograd.Function."""
    model = tiny.bloom(width=WIDTH, vocab=VOCAB)
    return _language_model(model, dtype, generator)


def gpt_neox(dtype, generator):
    """GPT-NeoX: rotary embeddings on a quarter of each head, parallel residual."""
    model = tiny.gpt_neox(width=WIDTH, vocab=VOCAB, positions=SEQ)
    return _language_model(model, dtype, generator)


def _mse_to_fixed(model, inputs, generator, read):
    """Loss: mean squared distance of ``read(model(**inputs))`` to a fixed target."""
    with torch.no_grad():
        shape = read(model(**inputs)).shape
    dtype = next(model.parameters()).dtype
    target = torch.randn(shape, generator=generator).to(dtype)
    return lambda: F.mse_loss(read(model(**inputs)), target)


def _encoder(model, dtype, generator):
    """An encoder in eval mode on token ids, MSE of its last hidden state."""
    model = model.to(dtype).eval()
    inputs = {"input_ids": _tokens(generator)}
    return model, _mse_to_fixed(
        model, inputs, generator, lambda out: out.last_hidden_state
    )


def bert(dtype, generator):
    model = tiny.bert(width=WIDTH, vocab=VOCAB, positions=SEQ, pooling=False)
    return _encoder(model, dtype, generator)


def albert(dtype, generator):
    """ALBERT: one layer's weights shared by both layers (each used twice)."""
    model = tiny.albert(
        width=WIDTH // 2, embedding_size=WIDTH // 4, vocab=VOCAB, positions=SEQ
    )
    return _encoder(model, dtype, generator)


def vit(dtype, generator):
    model = tiny.vit(width=WIDTH, image=8, patch=4, pooling=False).to(dtype).eval()
    images = torch.randn(BATCH, 3, 8, 8, generator=generator).to(dtype)
    return model, _mse_to_fixed(
        model, {"pixel_values": images}, generator, lambda out: out.last_hidden_state
    )


def _resnet(dtype, generator, widths, depths, batch, size):
    """transformers' basic-block ResNet in training mode, MSE on its pooled output."""
    model = tiny.resnet(widths, depths).to(dtype).train()
    images = torch.randn(batch, 3, size, size, generator=generator).to(dtype)
    return model, _mse_to_fixed(
        model, {"pixel_values": images}, generator, lambda out: out.pooler_output
    )


def resnet(dtype, generator):
    """transformers' ResNet in training mode: BatchNorm on batch statistics."""
    return _resnet(dtype, generator, [8, 16], [1, 1], batch=4, size=16)


def resnet18(dtype, generator):
    """ResNet-18 (11.2M parameters) in training mode, batch 2 at 32x32: minutes."""
    return _resnet(dtype, generator, [64, 128, 256, 512], [2, 2, 2, 2], 2, 32)


class _Classifier(nn.Module):
    """A sequence body, then a linear head on every position; cross-entropy."""

    def __init__(self, body: nn.Module, width: int, recurrent: bool):
        super().__init__()
        self.body, self.head, self.recurrent = body, nn.Linear(width, 3), recurrent

    def forward(self, x):
        out = self.body(x)
        return self.head(out[0] if self.recurrent else out)


def _sequence_classifier(body, width, recurrent, dtype, generator, batch_first=True):
    model = _Classifier(body, width, recurrent).to(dtype).train()
    shape = (BATCH, SEQ, 6) if batch_first else (SEQ, BATCH, 6)
    x = torch.randn(shape, generator=generator).to(dtype)
    labels = torch.randint(0, 3, (BATCH * SEQ,), generator=generator)
    return model, lambda: F.cross_entropy(model(x).reshape(-1, 3), labels)


def transformer_encoder(dtype, generator):
    """torch's encoder (training mode, no dropout): SDPA picks the CPU flash kernel."""
    layer = nn.TransformerEncoderLayer(
        d_model=6, nhead=2, dim_feedforward=12, dropout=0.0, batch_first=True
    )
    body = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    return _sequence_classifier(body, 6, False, dtype, generator)


def lstm(dtype, generator):
    """nn.LSTM, 2 layers (time first): fused oneDNN layers in float32 on CPU."""
    body = nn.LSTM(6, 5, num_layers=2)
    return _sequence_classifier(body, 5, True, dtype, generator, batch_first=False)


def gru(dtype, generator):
    """nn.GRU, 2 layers (batch_first): cell ops on CPU, no fused node."""
    body = nn.GRU(6, 5, num_layers=2, batch_first=True)
    return _sequence_classifier(body, 5, True, dtype, generator)


BUILDERS = {
    "gpt2": gpt2,
    "bert": bert,
    "vit": vit,
    "resnet": resnet,
    "llama": llama,
    "transformer_encoder": transformer_encoder,
    "lstm": lstm,
    "gru": gru,
    "t5": t5,
    "bloom": bloom,
    "gpt_neox": gpt_neox,
    "albert": albert,
}
# too slow for the test suite; benchmarks/bench_zoo.py runs them when named
LARGE = {"resnet18": resnet18}


def build(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> ZooModel:
    """The zoo model ``name`` (a key of ``BUILDERS`` or ``LARGE``), random init
    from ``seed``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model, loss = {**BUILDERS, **LARGE}[name](dtype, generator)
    return ZooModel(name, model, loss)


@contextmanager
def twice_differentiable():
    """Attention on the math backend, the one with a double backward."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


def picks(params: dict[str, torch.Tensor], per_tensor: int = 3) -> dict[str, list]:
    """A few flat indices of every tensor: its first, its last, and random ones."""
    generator = torch.Generator().manual_seed(0)
    out = {}
    for name, p in params.items():
        n = p.numel()
        extra = torch.randint(0, n, (max(0, per_tensor - 2),), generator=generator)
        out[name] = sorted({0, n - 1, *extra.tolist()})
    return out


def reference_entries(
    case: ZooModel, chosen: dict[str, list]
) -> dict[str, torch.Tensor]:
    """Hessian diagonal entries ``chosen`` (name -> flat indices), from HVP rows.

    Entry ``i`` of tensor ``p`` is ``d/dp_i (dL/dp_i)``: one backward of the
    gradient's graph each (forward on the twice-differentiable attention).
    """
    params = case.params
    with twice_differentiable():
        loss = case.loss()
    names = list(chosen)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
    out = {}
    for name, grad in zip(names, grads, strict=True):
        flat = grad.reshape(-1)
        entries = []
        for i in chosen[name]:
            if not flat[i].requires_grad:  # the gradient there is a constant
                entries.append(flat.new_zeros(()))
                continue
            (row,) = torch.autograd.grad(
                flat[i], params[name], retain_graph=True, allow_unused=True
            )
            entries.append(flat.new_zeros(()) if row is None else row.reshape(-1)[i])
        out[name] = torch.stack(entries)
    return out
