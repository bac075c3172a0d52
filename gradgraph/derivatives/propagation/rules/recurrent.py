"""Curvature rules for fused recurrent layers: one node for a whole LSTM layer.

On CPU, ``nn.LSTM`` in float32 runs each layer (and each direction) as one
oneDNN kernel, ``MkldnnRnnLayerBackward0``, whose inputs are the layer's
input sequence ``x``, its weights and biases and the initial states ``h0``,
``c0``. The node saves all of them, so the rule re-runs the layer's
recurrence with a differentiable re-implementation (:func:`lstm_layer`,
float64) and reads both parts of the rule off it:

* ``pullback``: a batch of vector-Jacobian products of the re-implementation;
* ``residual``: the layer's own second-order term, the Hessian of
  ``<g, layer(x, W, b, h0, c0)>`` over every input a parameter's gradient
  flows through (the cross terms between ``x`` and the weights included),
  computed densely (one Hessian-vector product per entry) and
  written as signed eigenvector columns.

The local Hessian is dense in ``D`` = the entries of the inputs that carry
parameters (the sequence ``T B I`` plus the layer's weights): memory ``D^2``
and time ``D^3``. Beyond ``MAX_LOCAL_ENTRIES`` the rule refuses, so
``hessian_diagonal(method="auto")`` falls back to exact HVP rows instead
of running out of memory. ``nn.GRU`` (and ``nn.LSTM`` in float64 or with
projections) has no fused node on CPU: it runs as cell ops (``addmm``,
``unsafe_chunk``, ``sigmoid``, ``tanh``, ``mul``, ``unbind``, ``stack``),
which the elementary and indexing rules cover.

Example:
    >>> import torch
    >>> from gradgraph.derivatives.propagation.registry import rule_for
    >>> lstm = torch.nn.LSTM(2, 3)
    >>> out, _ = lstm(torch.randn(4, 1, 2))
    >>> type(rule_for(type(out.grad_fn).__name__)).__name__
    'RecurrentLayer'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..base import OpContext, Rule
from ..columns import Columns, DenseColumns
from ..registry import register

__all__ = ["MAX_LOCAL_ENTRIES", "RecurrentLayer", "lstm_layer"]

# The residual's dense local Hessian is D x D (D: entries of the inputs that
# carry parameters); 2048 entries are 32 MB and an eigendecomposition of a
# second or two. Larger layers are refused (the exact fallback takes over).
MAX_LOCAL_ENTRIES = 2048

# Vectors pushed through the re-run layer at once (VJPs, Hessian-vector
# products) take about this much memory: each carries some 32 float64 values
# per gate entry (4 T B H) through the recurrence.
CHUNK_BYTES = 64 << 20


def _chunk(out_shape: tuple[int, ...]) -> int:
    """How many vectors to batch through a layer with output ``out_shape``."""
    per_vector = 8 * 32 * 4 * math.prod(out_shape)
    return max(1, CHUNK_BYTES // per_vector)


_COMPUTE = torch.float64


def lstm_layer(
    x: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    reverse: bool = False,
) -> torch.Tensor:
    """One LSTM layer's output sequence ``[T, B, H]`` (gates in torch's order ifgo).

    ``reverse`` runs the recurrence from the last step to the first (the
    backward direction of a bidirectional layer); outputs stay in time order.

    Example:
        >>> import torch
        >>> lstm = torch.nn.LSTM(2, 3).double()
        >>> x = torch.randn(4, 1, 2, dtype=torch.float64)
        >>> h0 = torch.zeros(1, 3, dtype=torch.float64)
        >>> ours = lstm_layer(x, *lstm.parameters(), h0, h0)
        >>> torch.allclose(ours, lstm(x)[0])
        True
    """
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outs: list[torch.Tensor] = [x] * x.shape[0]
    for t in steps:
        gates = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs[t] = h
    return torch.stack(outs)


def _mkldnn_lstm_inputs(fn: Any) -> list[torch.Tensor]:
    """The node's inputs in its order: x, W_ih, W_hh, b_ih, b_hh, h0, c0."""
    w_ih, w_hh = fn._saved_weight0, fn._saved_weight1
    if fn._saved_has_biases:
        b_ih, b_hh = fn._saved_weight2, fn._saved_weight3
    else:  # the node saves placeholders; no gradient flows there
        b_ih = b_hh = w_ih.new_zeros(w_ih.shape[0])
    return [fn._saved_input, w_ih, w_hh, b_ih, b_hh, fn._saved_hx_, fn._saved_cx_]


def _mkldnn_lstm(fn: Any) -> Callable[..., torch.Tensor]:
    """The node's layer; time-major whatever its saved ``batch_first`` says.

    nn.LSTM transposes a batch-first input before the kernel and passes the
    flag along, and the kernel ignores it.
    """
    reverse = bool(fn._saved_reverse)
    return lambda *inputs: lstm_layer(*inputs, reverse=reverse)


def _mkldnn_lstm_refuses(fn: Any) -> str | None:
    if len(fn._saved_batch_sizes):
        return "MkldnnRnnLayerBackward0 (packed sequences)"
    return None


class RecurrentLayer(Rule):
    """A fused layer node re-run by a differentiable re-implementation.

    ``inputs(fn)`` returns the node's inputs (one per ``next_functions``
    entry) from what it saved, with the inputs of the re-implementation
    ``layer(fn)`` in the same order; ``refusal(fn)`` says when the node is
    beyond the re-implementation (None: it is not).
    """

    def __init__(
        self,
        inputs: Callable[[Any], list[torch.Tensor]],
        layer: Callable[[Any], Callable[..., torch.Tensor]],
        refusal: Callable[[Any], str | None],
    ):
        self.inputs, self.layer, self.refusal = inputs, layer, refusal

    def _flowing(self, ctx: OpContext) -> list[int]:
        return [p for p in range(len(self.inputs(ctx.fn))) if ctx.flows(p)]

    def _function(self, ctx: OpContext) -> tuple[Callable, list[torch.Tensor]]:
        """The layer as a function of its flowing inputs, and their values (float64)."""
        values = [t.detach().to(_COMPUTE) for t in self.inputs(ctx.fn)]
        flowing = self._flowing(ctx)
        layer = self.layer(ctx.fn)

        def f(*args):
            full = list(values)
            for p, a in zip(flowing, args, strict=True):
                full[p] = a
            return layer(*full)

        return f, [values[p] for p in flowing]

    def pullback(self, ctx: OpContext, block: Columns, pos: int) -> Columns:
        """One VJP pass serves every input; each input's part is handed out once
        (then dropped, so the node holds no columns after its last input)."""
        memo = ctx.memo.get("pullback")
        if memo is None or memo[0] is not block or pos not in memo[1]:
            memo = (block, self._vjps(ctx, block))
            ctx.memo["pullback"] = memo
        out = memo[1].pop(pos)
        if not memo[1]:
            del ctx.memo["pullback"]
        return out

    def _vjps(self, ctx: OpContext, block: Columns) -> dict[int, DenseColumns]:
        dense = block.to_dense(ctx.out_shape)
        f, primals = self._function(ctx)
        with torch.enable_grad():
            _, vjp = torch.func.vjp(f, *primals)
            pulled = torch.func.vmap(vjp, chunk_size=_chunk(ctx.out_shape))(
                dense.data.to(_COMPUTE)
            )
        dtype = dense.data.dtype
        return {
            p: DenseColumns(cols.to(dtype), dense.sign)
            for p, cols in zip(self._flowing(ctx), pulled, strict=True)
        }

    def residual(self, ctx: OpContext) -> dict[int, Columns]:
        hessian, shapes = self.local_hessian(ctx)
        values, vectors = torch.linalg.eigh(hessian)
        keep = values.abs() > values.abs().max() * 1e-13
        if not bool(keep.any()):
            return {}
        values, vectors = values[keep], vectors[:, keep]
        cols = (vectors * values.abs().sqrt()).T  # [K, D]
        sign = values.sign().to(ctx.grad.dtype)
        out: dict[int, Columns] = {}
        start = 0
        for p, shape in zip(self._flowing(ctx), shapes, strict=True):
            n = math.prod(shape)
            data = cols[:, start : start + n].reshape(-1, *shape)
            out[p] = DenseColumns(data.to(ctx.grad.dtype), sign)
            start += n
        return out

    def local_hessian(self, ctx: OpContext) -> tuple[torch.Tensor, list[tuple]]:
        """The dense Hessian of ``<g, layer(inputs)>`` over the flowing inputs.

        Returns it (float64, ``[D, D]``, inputs flattened in position order)
        and the inputs' shapes.
        """
        f, primals = self._function(ctx)
        shapes = [tuple(t.shape) for t in primals]
        sizes = [t.numel() for t in primals]
        g = ctx.grad.detach().to(_COMPUTE)

        def phi(flat):
            parts = [
                p.reshape(s) for p, s in zip(flat.split(sizes), shapes, strict=True)
            ]
            return (f(*parts) * g).sum()

        flat = torch.cat([t.reshape(-1) for t in primals])
        eye = torch.eye(flat.numel(), dtype=_COMPUTE)

        with torch.enable_grad():  # reverse over reverse: H v = vjp of the gradient
            _, hvp = torch.func.vjp(torch.func.grad(phi), flat)
            chunk = _chunk(ctx.out_shape)
            (hessian,) = torch.func.vmap(hvp, chunk_size=chunk)(eye)
        return (hessian + hessian.T) / 2, shapes

    def refuses(self, fn, flows, coupled):
        reason = self.refusal(fn)
        if reason is not None:
            return reason
        inputs = self.inputs(fn)
        entries = sum(t.numel() for t, f in zip(inputs, flows, strict=False) if f)
        if entries > MAX_LOCAL_ENTRIES:
            return (
                f"{type(fn).__name__} with {entries} input entries that carry "
                f"parameters (its dense local Hessian stops at {MAX_LOCAL_ENTRIES})"
            )
        return None


register(
    RecurrentLayer(_mkldnn_lstm_inputs, _mkldnn_lstm, _mkldnn_lstm_refuses),
    "MkldnnRnnLayerBackward0",
)
