"""Signed factor columns: the pieces of a Hessian that propagation carries back.

A Hessian term ``sum_c s_c v_c v_c^T`` (signs ``s_c`` of +-1 or +-1/2) is held
as its columns ``v_c``, each a tensor with the shape of the node it sits at.
Pulling the columns back through an op is a batch of vector-Jacobian products,
and the term's contribution to a parameter's Hessian diagonal is
``sum_c s_c v_c**2`` once the columns reach the parameter. Every layout
is a :class:`ColumnBlock` (``count``, ``column_bytes``, ``take``,
``to_dense``, ``written_out``, ``square_sum``), so the engine slices, sizes
and squares columns without knowing their layout. The layouts keep the
columns small:

* :class:`DenseColumns`: ``data[c]`` is column ``c``, shape ``[C, *shape]``.
* :class:`SampleColumns`: columns that each touch one sample of a batch (dim 0
  of the node). ``data[c, n]`` is the part of column ``(c, n)`` at sample
  ``n``; the rest of that column is zero. ``C * N`` columns in the memory of
  ``C``.
* :class:`OuterColumns`: columns that are outer products, as weight
  gradients of a matrix product are: column ``(c, n)`` is
  ``left[c, n] (x) right[c, n]`` (transposed when ``transposed``), never
  materialised.
* :class:`ProductColumns`: per-sample columns that are matrix products, as
  a convolution's per-sample weight gradients are: column ``(c, n)`` is
  ``left[c, n] @ right[n]^T`` (per group). Only squared and summed at the
  parameter (a sample at a time, in chunks), never written out whole.
* :class:`TokenColumns`: columns that each touch one token of a ``[B, L, ...]``
  value (dims 0 and 1): ``data[c, b, l]`` is the part of column ``(b, l, c)``
  at token ``(b, l)``. ``B * L * C`` columns in the memory of ``C``; they
  stay so through the ops that act on each token apart (Linear layers,
  LayerNorm, activations, residual sums) and go per sample at the first op
  that mixes tokens (attention), ``L`` times larger.
* :class:`DiagonalColumns`: the columns of ``diag(weights)`` (an
  activation's own curvature), written out a slice at a time
  (``take``), so a large set of them need not exist at once.
* :class:`RowColumns`: columns that each sit on one row of a value (the
  curvature of a softmax or a normalization layer, per row), written out a
  slice at a time too.
* :class:`ChainedColumns`: the columns of several such blocks one after the
  other (a diagonal plus a few dense columns), each kept in its own layout.

Columns are independent of each other, so a block can travel in slices of
its leading (column) axis and the slices' contributions add. Written out
(``to_dense``), every layout numbers its columns sample-major, ``(n, c)``
(``(b, l, c)`` for tokens): the same columns reach a node in one order
whatever layouts they took on the way, so parts that arrive along different
paths add column by column.

Example:
    >>> import torch
    >>> cols = DenseColumns(torch.tensor([[1.0, 2.0]]), torch.tensor([1.0]))
    >>> leaf_diagonal([cols], (2,))
    tensor([1., 4.])
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


class ColumnBlock(ABC):
    """The interface every layout has: a leading (column) axis of ``count`` slices.

    ``sign`` holds the slices' signs (leading dim ``count``). Subclasses give
    ``count``, ``column_bytes``, ``take`` and ``to_dense``; the rest follows.
    """

    sign: torch.Tensor

    @property
    def count(self) -> int:
        """How many slices of the leading axis the block has (``C``)."""
        return self.sign.shape[0]

    @property
    @abstractmethod
    def column_bytes(self) -> int:
        """Bytes one slice of the leading axis takes once written out."""

    @property
    def nbytes(self) -> int:
        """Bytes of the whole block once written out."""
        return self.count * self.column_bytes

    @abstractmethod
    def take(self, start: int, stop: int) -> ColumnBlock:
        """Slices ``start:stop`` of the leading axis."""

    @abstractmethod
    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        """The same columns as :class:`DenseColumns` at a node of ``shape``."""

    def written_out(self) -> ColumnBlock:
        """A layout the rules act on (lazy layouts write themselves out)."""
        return self

    def square_sum(self, shape: tuple[int, ...]) -> torch.Tensor:
        """``sum_c s_c v_c**2`` at a parameter of ``shape``."""
        dense = self.to_dense(shape)
        return _signed_sum(dense.sign, dense.data.square())


@dataclass
class _DataColumns(ColumnBlock):
    """Columns held as one tensor ``data`` whose leading dim is the slices'."""

    data: torch.Tensor
    sign: torch.Tensor

    @property
    def column_bytes(self) -> int:
        return self.data[0].numel() * self.data.element_size()

    def take(self, start: int, stop: int) -> _DataColumns:
        return type(self)(self.data[start:stop], self.sign[start:stop])

    def add(self, other: _DataColumns) -> _DataColumns:
        return type(self)(self.data + other.data, self.sign)

    def square_sum(self, shape: tuple[int, ...]) -> torch.Tensor:
        # per-sample column (c, n) is zero off sample n: the sample's square
        return _signed_sum(self.sign, self.data.square())


@dataclass
class DenseColumns(_DataColumns):
    """Columns ``data[c]`` (shape ``[C, *shape]``) with signs ``sign[c]``."""

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        return self


@dataclass
class SampleColumns(_DataColumns):
    """Per-sample columns ``data[c, n]`` (``[C, N, *rest]``), signs ``[C, N]``."""

    @property
    def samples(self) -> int:
        return self.data.shape[1]

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        """The same ``C * N`` columns written out at full size (memory ``C N^2``)."""
        c, n = self.data.shape[:2]
        out = self.data.new_zeros((n, c, *shape))
        idx = torch.arange(n, device=self.data.device)
        out[idx, :, idx] = self.data.transpose(0, 1)
        return DenseColumns(out.reshape(n * c, *shape), self.sign.T.reshape(n * c))


@dataclass
class TokenColumns(_DataColumns):
    """Per-token columns of a ``[B, L, ...]`` value: ``data`` ``[C, B, L, ...]``.

    Column ``(b, l, c)`` is ``data[c, b, l]`` at token ``(b, l)`` and zero at
    every other token; its sign is ``sign[c, b, l]``.
    """

    @property
    def column_bytes(self) -> int:  # as written out per sample: L columns each
        return self.data[0].numel() * self.data.element_size() * self.data.shape[2]

    def per_sample(self) -> SampleColumns:
        """The same columns per sample: ``L * C`` of them, column ``l * C + c``."""
        c, b, ell = self.sign.shape
        out = self.data.new_zeros((ell, c, b, *self.data.shape[2:]))
        idx = torch.arange(ell, device=self.data.device)
        out[idx, :, :, idx] = self.data.movedim(2, 0)
        sign = self.sign.permute(2, 0, 1).reshape(ell * c, b)
        return SampleColumns(out.reshape(ell * c, *out.shape[2:]), sign)

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        return self.per_sample().to_dense(shape)


@dataclass
class GroupColumns(_DataColumns):
    """Per-sample columns of a ``[B * L, ...]`` value whose sample owns ``L`` rows.

    ``data[c, b]`` (``[C, B, L, ...]``) is column ``(b, c)`` at rows
    ``b * L .. b * L + L - 1``, zero elsewhere; signs ``[C, B]``. What the
    ``view(B * L, F)`` in front of a transformer's Linear layers makes of
    per-sample columns.
    """

    def samples_view(self) -> SampleColumns:
        """The same columns at the ``[B, L, ...]`` value the rows come from."""
        return SampleColumns(self.data, self.sign)

    def as_rows(self) -> SampleColumns:
        """Each row's part as a column of its own (``B * L * C`` per-row
        columns): an op that keeps rows apart acts on them as it would on
        per-sample columns; :meth:`regroup` adds its results back up."""
        rows = self.data.shape[2]
        return SampleColumns(
            self.data.flatten(1, 2), self.sign.repeat_interleave(rows, dim=1)
        )

    def regroup(self, pulled: ColumnBlock, shape: tuple[int, ...]) -> ColumnBlock:
        """The pullback of these columns from that of :meth:`as_rows`'s
        (``pulled``, at a node of ``shape``): a column's rows summed back."""
        c, b, rows = self.data.shape[:3]
        if isinstance(pulled, SampleColumns) and pulled.samples == b * rows:
            return GroupColumns(pulled.data.unflatten(1, (b, rows)), self.sign)
        dense = pulled.to_dense(shape)  # per-row columns, row-major: (r, c)
        data = dense.data.reshape(b, rows, c, *shape).sum(1).flatten(0, 1)
        return DenseColumns(data, self.sign.T.reshape(-1))

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        dense = self.samples_view().to_dense(tuple(self.data.shape[1:]))
        return DenseColumns(dense.data.reshape(-1, *shape), dense.sign)

    def square_sum(self, shape: tuple[int, ...]) -> torch.Tensor:
        return super().square_sum(shape).reshape(shape)


@dataclass
class OuterColumns(ColumnBlock):
    """Column ``(c, n)`` is ``left[c, n] (x) right[c, n]``; ``C`` dims may be 1."""

    left: torch.Tensor  # [C or 1, N, a]
    right: torch.Tensor  # [C or 1, N, b]
    sign: torch.Tensor  # [C, N]
    transposed: bool = False  # column shape [b, a] instead of [a, b]

    @property
    def column_bytes(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in (self.left, self.right))

    def take(self, start: int, stop: int) -> OuterColumns:
        def cut(t):
            return t if t.shape[0] == 1 else t[start:stop]

        return OuterColumns(
            cut(self.left), cut(self.right), self.sign[start:stop], self.transposed
        )

    def transpose(self) -> OuterColumns:
        return OuterColumns(self.left, self.right, self.sign, not self.transposed)

    def oriented(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) such that the column is ``left (x) right``."""
        return (self.right, self.left) if self.transposed else (self.left, self.right)

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        left, right = self.oriented()
        cols = left.unsqueeze(-1) * right.unsqueeze(-2)  # [C, N, a, b]
        c, n = self.sign.shape
        cols = cols.expand(c, n, *cols.shape[2:])
        return one_per_column(cols, self.sign, shape)

    def square_sum(self, shape: tuple[int, ...]) -> torch.Tensor:
        if len(shape) == 2:
            return _outer_diagonal([self])
        return super().square_sum(shape)


# samples per chunk of ProductColumns' squares: about this many entries at once
_PRODUCT_CHUNK = 1 << 19
# entries of the Gram route's per-sample tensors at once (see square_sum)
_GRAM_LIMIT = 1 << 24


@dataclass
class ProductColumns(ColumnBlock):
    """Column ``(c, n)`` is ``left[c, n, g] @ right[n, g]^T`` over groups ``g``.

    ``left`` is ``[C, N, G, O, L]``, ``right`` ``[N, G, K, L]``; the column,
    ``[G, O, K]``, is read as ``shape`` (``[G * O, K]`` in row-major order);
    when ``transposed`` (``G`` is 1) the column is its transpose, ``[K, O]``.
    """

    left: torch.Tensor
    right: torch.Tensor
    sign: torch.Tensor  # [C, N]
    shape: tuple[int, ...]
    transposed: bool = False

    def transpose(self) -> ProductColumns:
        """The same columns transposed (``G`` must be 1)."""
        shape = tuple(reversed(self.shape))
        return ProductColumns(
            self.left, self.right, self.sign, shape, not self.transposed
        )

    @property
    def column_bytes(self) -> int:  # written out: N columns per slice
        return self.sign.shape[1] * math.prod(self.shape) * self.left.element_size()

    def take(self, start: int, stop: int) -> ProductColumns:
        return ProductColumns(
            self.left[start:stop],
            self.right,
            self.sign[start:stop],
            self.shape,
            self.transposed,
        )

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        data = torch.einsum("cngol,ngkl->cngok", self.left, self.right)
        if self.transposed:
            data = data.transpose(-1, -2)
        return one_per_column(data, self.sign, shape)

    def written_out(self) -> DenseColumns:
        return self.to_dense(self.shape)

    def square_sum(self, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """``sum_{c,n} s[c, n] column(c, n)**2``, never all columns at once.

        Entry ``(o, k)`` of a column is ``sum_l left[o, l] right[k, l]``, so its
        square summed over the columns is also
        ``sum_{l,m} G[o, l, m] right[k, l] right[k, m]`` with the signed Gram
        ``G = sum_c s_c left[c, o, l] left[c, o, m]``: cheaper than forming
        every column when the positions ``L`` are few and the columns many
        (deep, small feature maps). The cheaper of the two routes runs.
        """
        c, n, g, o, ell = self.left.shape
        k = self.right.shape[2]
        direct = c * o * k * (ell + 1)
        gram = (c * o + o * k + k) * ell * ell
        if gram < direct and g * (o + k) * ell * ell <= _GRAM_LIMIT:
            total = self._gram_square_sum()
        else:
            total = self._direct_square_sum()
        if self.transposed:
            total = total[0].T
        return total.reshape(self.shape)

    def _direct_square_sum(self) -> torch.Tensor:
        """Every column formed, a chunk of columns and samples at a time."""
        c, n, g, o, ell = self.left.shape
        k = self.right.shape[2]
        one = g * o * max(k, ell)  # entries of one column (and sample)
        cols = max(1, min(c, _PRODUCT_CHUNK // one))
        step = max(1, _PRODUCT_CHUNK // (cols * one))
        total = self.left.new_zeros(g, o, k)
        for first in range(0, c, cols):
            last = min(first + cols, c)
            left = self.left[first:last].permute(1, 2, 0, 3, 4)  # [N, G, C, O, L]
            for a in range(0, n, step):
                b = min(a + step, n)
                lhs = left[a:b].reshape((b - a) * g, (last - first) * o, ell)
                rhs = self.right[a:b].reshape((b - a) * g, k, ell).transpose(1, 2)
                prod = torch.bmm(lhs, rhs).square_()
                prod = prod.reshape(b - a, g, last - first, o, k)
                sign = self.sign[first:last, a:b]
                total += torch.einsum("cn,ngcok->gok", sign, prod)
        return total

    def _gram_square_sum(self) -> torch.Tensor:
        """Through the signed Gram of ``left`` over the columns, per sample."""
        c, n, g, o, ell = self.left.shape
        k = self.right.shape[2]
        step = max(1, _GRAM_LIMIT // (g * (o + k) * ell * ell))
        total = self.left.new_zeros(g, o, k)
        for a in range(0, n, step):
            b = min(a + step, n)
            # positions innermost: the batched products below run ~4x faster
            left = self.left[:, a:b].contiguous()
            signed = left * self.sign[:, a:b, None, None, None]
            gram = torch.einsum("cngol,cngom->ngolm", signed, left)
            right = self.right[a:b]
            pairs = right.unsqueeze(-1) * right.unsqueeze(-2)  # [N, G, K, L, L]
            total += torch.einsum("ngolm,ngklm->gok", gram, pairs)
        return total


@dataclass
class IndexedRowColumns(ColumnBlock):
    """Columns on a few rows of a ``[V, D]`` table, as an embedding's weight gets.

    Column ``(c, n)`` is ``sum_p e_{rows[n, p]} (x) data[c, n, p]``: each
    position ``p`` of sample ``n`` adds its ``[D]`` vector to row
    ``rows[n, p]`` (rows may repeat). ``data`` ``[C, N, P, D]``, ``rows``
    ``[N, P]``, ``sign`` ``[C, N]``, ``shape`` ``(V, D)``. Squared at the
    parameter touched row by touched row (:meth:`square_sum`); written out
    only when an op takes the weight further (:meth:`written_out`).

    Example:
        >>> cols = IndexedRowColumns(torch.ones(1, 1, 2, 1), torch.tensor([[1, 1]]),
        ...                          torch.ones(1, 1), (3, 1))
        >>> cols.square_sum((3, 1)).flatten()  # the repeated row adds up first
        tensor([0., 4., 0.])
    """

    data: torch.Tensor
    rows: torch.Tensor
    sign: torch.Tensor
    shape: tuple[int, ...]

    @property
    def column_bytes(self) -> int:  # written out: N columns per slice
        return self.sign.shape[1] * math.prod(self.shape) * self.data.element_size()

    def take(self, start: int, stop: int) -> IndexedRowColumns:
        return IndexedRowColumns(
            self.data[start:stop], self.rows, self.sign[start:stop], self.shape
        )

    def flat(self) -> IndexedRowColumns:
        """The same columns with ``C`` 1: column ``(0, n * C + c)`` is ``(c, n)``."""
        c, n, p, d = self.data.shape
        if c == 1:
            return self
        data = self.data.transpose(0, 1).reshape(1, n * c, p, d)
        rows = self.rows.repeat_interleave(c, dim=0)
        return IndexedRowColumns(data, rows, self.sign.T.reshape(1, -1), self.shape)

    @staticmethod
    def joined(parts: list[IndexedRowColumns]) -> IndexedRowColumns:
        """One block for parts of one source (their columns add): positions side
        by side."""
        if len(parts) == 1:
            return parts[0]
        if len({p.sign.shape for p in parts}) != 1:
            parts = [p.flat() for p in parts]
        return IndexedRowColumns(
            torch.cat([p.data for p in parts], dim=2),
            torch.cat([p.rows for p in parts], dim=1),
            parts[0].sign,
            parts[0].shape,
        )

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        c, n, p, d = self.data.shape
        out = self.data.new_zeros(n, c, self.shape[0], d)
        index = self.rows[:, None, :, None].expand(n, c, p, d)
        out.scatter_add_(2, index, self.data.transpose(0, 1))
        return DenseColumns(out.reshape(n * c, *shape), self.sign.T.reshape(n * c))

    def written_out(self) -> DenseColumns:
        return self.to_dense(self.shape)

    def square_sum(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Each sample's repeated rows added, then squared, signed and placed."""
        c, n, p, d = self.data.shape
        vocab = self.shape[0]
        samples = torch.arange(n, device=self.rows.device)[:, None]
        keys = (samples * vocab + self.rows).reshape(-1)  # (sample, row) pairs
        data = self.data.reshape(c, n * p, d)
        unique, inverse = torch.unique(keys, return_inverse=True)
        if unique.numel() < keys.numel():  # a row repeats within a sample
            data = data.new_zeros(c, unique.numel(), d).index_add_(1, inverse, data)
            keys = unique
        signed = torch.einsum("ck,ckd->kd", self.sign[:, keys // vocab], data.square())
        out = data.new_zeros(vocab, d).index_add_(0, keys % vocab, signed)
        return out.reshape(shape)

    def cross_sum(self, other: ColumnBlock) -> torch.Tensor:
        """``sum_k s_k v_k * w_k`` with ``w_k`` the columns of ``other`` (the same
        source, in the same order), read only on the rows ``v_k`` touches."""
        flat = self.flat()
        rows = flat.rows  # [K, P]
        if isinstance(other, OuterColumns):
            left, right = other.oriented()
            c, n = other.sign.shape
            left = left.expand(c, n, -1).transpose(0, 1).reshape(c * n, -1)
            right = right.expand(c, n, -1).transpose(0, 1).reshape(c * n, -1)
            picked = left.gather(1, rows)[..., None] * right[:, None, :]
        else:
            dense = other.to_dense(self.shape).data  # [K, V, D]
            picked = dense[
                torch.arange(rows.shape[0], device=rows.device)[:, None], rows
            ]
        product = flat.data[0] * picked * flat.sign[0][:, None, None]  # [K, P, D]
        out = product.new_zeros(self.shape)
        return out.index_add_(0, rows.reshape(-1), product.reshape(-1, self.shape[1]))


class _Lazy(ColumnBlock):
    """A layout that is written out only a slice at a time (``take``)."""

    def written_out(self) -> ColumnBlock:
        return self.take(0, self.count)

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        return self.written_out().to_dense(shape)


@dataclass
class DiagonalColumns(_Lazy):
    """The signed columns of ``diag(weights)``, per sample when there is a batch dim.

    Column ``j`` is ``e_j sqrt|w_j|`` with sign ``sign(w_j)``; with a batch
    dim (``weights`` of shape ``[N, *rest]``) the columns are per-sample
    (``j`` runs over ``rest``), and per token when ``weights`` is ``[B, L, K]``
    (``j`` runs over ``K``). Nothing is written out until asked for.
    """

    weights: torch.Tensor
    # > 1: each column is centred on its row of this many consecutive entries
    # (of a sample): the block is diag(weights) times the projection that
    # takes out each row's mean, for weights constant along a row
    row_length: int = 1

    @property
    def per_token(self) -> bool:
        """Columns per token (``[B, L, K]`` weights, not centred on rows)?"""
        return self.weights.dim() == 3 and self.row_length == 1

    @property
    def count(self) -> int:
        shape = self.weights.shape
        if self.per_token:
            return shape[2]
        return shape[1:].numel() if len(shape) >= 2 else shape.numel()

    @property
    def column_bytes(self) -> int:
        tokens = self.weights.shape[1] if self.per_token else 1
        return self.weights.numel() * self.weights.element_size() * tokens

    def take(
        self, start: int, stop: int
    ) -> DenseColumns | SampleColumns | TokenColumns:
        """Columns ``start:stop`` written out."""
        w = self.weights
        k = stop - start
        idx = torch.arange(k, device=w.device)
        if self.per_token:
            part = w[..., start:stop].movedim(2, 0)  # [k, B, L]
            data = w.new_zeros(k, *w.shape)
            data[idx, :, :, start + idx] = part.abs().sqrt()
            return TokenColumns(data, part.sign())
        if w.dim() >= 2:
            n = w.shape[0]
            flat = w.reshape(n, -1)[:, start:stop]
            data = w.new_zeros(k, n, self.count)
            root = flat.abs().sqrt().T
            data[idx, :, start + idx] = root
            if self.row_length > 1:  # minus the row's mean
                length = self.row_length
                rows = data.view(k, n, -1, length)
                rows[idx, :, (start + idx) // length] -= (root / length)[..., None]
            return SampleColumns(
                data.reshape(k, n, *w.shape[1:]), flat.sign().T.contiguous()
            )
        flat = w.reshape(-1)[start:stop]
        data = w.new_zeros(k, self.count)
        data[idx, start + idx] = flat.abs().sqrt()
        return DenseColumns(data.reshape(k, *w.shape), flat.sign())


@dataclass
class RowColumns(_Lazy):
    """Columns that each sit on one row of a value, written out a slice at a time.

    ``factors[n, r, j]`` (``[N, R, J, K]``) is column ``j`` of row ``r`` of
    sample ``n``, with sign ``signs[n, r, j]``; it is zero off that row.
    ``join`` maps ``[C, N, R, K]`` back to ``[C, *shape]``. Column ``(r, j)``
    is slice ``r * J + j``; per sample (``SampleColumns``) when ``per_sample``,
    else ``N`` is 1 and the columns are dense.
    """

    factors: torch.Tensor
    signs: torch.Tensor
    join: Callable[[torch.Tensor], torch.Tensor]
    per_sample: bool

    @property
    def count(self) -> int:
        return self.factors.shape[1] * self.factors.shape[2]

    @property
    def column_bytes(self) -> int:
        n, r, _, k = self.factors.shape
        return n * r * k * self.factors.element_size()

    @property
    def sign(self) -> torch.Tensor:  # [R * J, N]
        return self.signs.permute(1, 2, 0).reshape(self.count, -1)

    def take(self, start: int, stop: int) -> DenseColumns | SampleColumns:
        n, r, j, k = self.factors.shape
        idx = torch.arange(start, stop, device=self.factors.device)
        rows, cols = idx // j, idx % j
        data = self.factors.new_zeros(stop - start, n, r, k)
        picked = self.factors[:, rows, cols].transpose(0, 1)  # [C, N, K]
        data[torch.arange(stop - start, device=idx.device), :, rows] = picked
        sign = self.signs[:, rows, cols].T  # [C, N]
        data = self.join(data)
        if self.per_sample:
            return SampleColumns(data, sign.contiguous())
        return DenseColumns(data, sign.reshape(-1))


@dataclass
class ChainedColumns(_Lazy):
    """The columns of several blocks one after the other, as one source.

    For a term that is a sum of differently structured parts (a diagonal
    plus a few dense columns), each part in its own layout. A slice that
    spans two parts is written out densely at a node of ``shape``.
    """

    parts: list[ColumnBlock]
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        return sum(p.count for p in self.parts)

    @property
    def column_bytes(self) -> int:
        return max(p.column_bytes for p in self.parts)

    def take(self, start: int, stop: int) -> ColumnBlock:
        pieces, offset = [], 0
        for part in self.parts:
            lo, hi = max(start, offset), min(stop, offset + part.count)
            if lo < hi:
                pieces.append(part.take(lo - offset, hi - offset).written_out())
            offset += part.count
        if len(pieces) == 1:
            return pieces[0]
        dense = [p.to_dense(self.shape) for p in pieces]
        return DenseColumns(
            torch.cat([d.data for d in dense]), torch.cat([d.sign for d in dense])
        )


Columns = (
    DenseColumns
    | SampleColumns
    | TokenColumns
    | GroupColumns
    | OuterColumns
    | ProductColumns
    | IndexedRowColumns
    | ChainedColumns
)


def one_per_column(
    data: torch.Tensor, sign: torch.Tensor, shape: tuple[int, ...] | None = None
) -> DenseColumns:
    """Per-sample (or per-token) columns as dense ones, sample-major.

    ``data`` is ``[C, *lead, *value]`` with ``sign`` ``[C, *lead]``; column
    ``(*lead, c)`` becomes dense column ``flat(lead) * C + c``, of ``shape``
    (default: ``data``'s value dims). The order every layout writes out in.
    """
    lead = sign.dim() - 1
    value = data.shape[1 + lead :] if shape is None else shape
    flat = data.movedim(0, lead).reshape(-1, *value)
    return DenseColumns(flat, sign.movedim(0, lead).reshape(-1))


def _add_all(parts: list[_DataColumns]) -> _DataColumns:
    total = parts[0]
    for p in parts[1:]:
        total = total.add(p)
    return total


@dataclass
class Placed:
    """Columns for one slice of a node's value (an output of ``split``).

    ``block`` holds them in a layout whose ``data[c]`` has the slice's shape;
    the slice is ``start:stop`` along value dim ``dim`` (a single index that
    ``unbind`` removes). :func:`combine` puts a node's slices into one block,
    one buffer for all of them.
    """

    block: DenseColumns | SampleColumns | TokenColumns
    dim: int
    start: int
    stop: int
    unbind: bool = False

    @property
    def count(self) -> int:
        return self.block.count

    @property
    def column_bytes(self) -> int:
        return self.block.column_bytes

    def take(self, start: int, stop: int) -> Placed:
        """Columns ``start:stop``, still a slice (a drain's slice of them)."""
        return Placed(
            self.block.take(start, stop), self.dim, self.start, self.stop, self.unbind
        )

    def written_out(self) -> Placed:
        return self  # its block is written out already

    def shape_in(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The slice's shape within a value of ``shape``."""
        piece = list(shape)
        piece[self.dim] = self.stop - self.start
        if self.unbind:
            del piece[self.dim]
        return tuple(piece)


def _place_all(pieces: list[Placed], shape: tuple[int, ...]) -> _DataColumns:
    """The slices' columns in one block of the node's ``shape``."""
    blocks = [p.block for p in pieces]
    kinds = {type(b) for b in blocks}
    if kinds == {SampleColumns, TokenColumns}:
        blocks = [b.per_sample() if isinstance(b, TokenColumns) else b for b in blocks]
    elif len(kinds) > 1:
        blocks = [
            b.to_dense(p.shape_in(shape)) for p, b in zip(pieces, blocks, strict=True)
        ]
    first = blocks[0]
    full = first.data.new_zeros(first.data.shape[0], *shape)
    for piece, block in zip(pieces, blocks, strict=True):
        data = block.data.unsqueeze(piece.dim + 1) if piece.unbind else block.data
        full.narrow(piece.dim + 1, piece.start, piece.stop - piece.start).add_(data)
    return type(first)(full, first.sign)


def combine(parts: list[Columns | Placed], shape: tuple[int, ...]) -> Columns:
    """One block for the columns of one source that arrived by several paths.

    The same columns reached the node along different paths, so they add
    (before any squaring): per token or per sample where all parts allow it,
    else written out densely first. Slices (:class:`Placed`) go into one
    block first.
    """
    placed = [p for p in parts if isinstance(p, Placed)]
    if placed:
        rest = [p for p in parts if not isinstance(p, Placed)]
        parts = [_place_all(placed, shape), *rest]
    if len(parts) == 1 and isinstance(parts[0], ProductColumns):
        return parts[0]  # lazy until a rule needs it written out (Rule.accept)
    parts = [p.written_out() for p in parts]  # the rules act on data
    if len(parts) == 1:
        return parts[0]
    kinds = {type(p) for p in parts}
    if kinds in ({TokenColumns}, {GroupColumns}):
        return _add_all(parts)
    if kinds == {SampleColumns, TokenColumns}:
        parts = [p.per_sample() if isinstance(p, TokenColumns) else p for p in parts]
        kinds = {SampleColumns}
    if kinds == {SampleColumns} and len({p.samples for p in parts}) == 1:
        return _add_all(parts)
    return _add_all([p.to_dense(shape) for p in parts])


def concatenate(blocks: list[Columns]) -> list[Columns]:
    """Fewer, wider blocks: same-layout blocks stacked along the column axis.

    Only for blocks of different sources that will travel the same path from
    here on (their sums of squares then stay separate, as they must).
    """
    samples: dict[int, list[SampleColumns]] = {}
    tokens: dict[tuple, list[TokenColumns | GroupColumns]] = {}
    dense: list[DenseColumns] = []
    rest: list[Columns] = []
    for b in blocks:
        if isinstance(b, TokenColumns | GroupColumns):
            tokens.setdefault((type(b), tuple(b.data.shape[1:])), []).append(b)
        elif isinstance(b, SampleColumns):
            samples.setdefault(b.samples, []).append(b)
        elif isinstance(b, DenseColumns):
            dense.append(b)
        else:
            rest.append(b)
    out: list[Columns] = []
    for group in [*samples.values(), *tokens.values()]:
        if len(group) == 1:
            out.append(group[0])
        else:
            out.append(
                type(group[0])(
                    torch.cat([b.data for b in group]),
                    torch.cat([b.sign for b in group]),
                )
            )
    if len(dense) > 1:
        dense = [
            DenseColumns(
                torch.cat([b.data for b in dense]), torch.cat([b.sign for b in dense])
            )
        ]
    return out + dense + rest


# compressed() factors columns of at most this many entries (per sample, or
# per token), only when there are this many times more columns than that,
# and only when the columns it saves would cost more further down than the
# eigendecomposition (about COMPRESS_COST * entries**3 per sample or token)
COMPRESS_MAX_ENTRIES = 1024
COMPRESS_RATIO = 1.5
COMPRESS_COST = 0.4


def compressed(block: Columns, work: float = math.inf) -> Columns:
    """The same curvature with at most one column per entry of a column.

    ``sum_c s_c v_c v_c^T`` per sample (per token, or for the whole value) is
    a ``D x D`` matrix when a column has ``D`` entries there; with more than
    ``D`` columns (``COMPRESS_RATIO`` times as many) its eigendecomposition
    gives ``D`` signed columns with the same sum, so everything downstream
    same sum, so everything downstream costs less. Only for columns that will
    meet no others of their source (they are renumbered). ``work``: entries
    per sample of the nodes still ahead, what one column costs from here.

    Example:
        >>> cols = DenseColumns(torch.tensor([[1.0, 0], [1, 0], [0, 2]]),
        ...                     torch.tensor([1.0, -1.0, 1.0]))
        >>> compressed(cols).count, leaf_diagonal([compressed(cols)], (2,))
        (2, tensor([0., 4.]))
    """
    if not isinstance(block, DenseColumns | SampleColumns | TokenColumns):
        return block
    if block.data.dtype not in (torch.float32, torch.float64):  # eigh's dtypes
        return block
    lead = block.sign.dim() - 1
    data = block.data
    entries = data[(0,) * (1 + lead)].numel()
    if block.count < COMPRESS_RATIO * entries or entries > COMPRESS_MAX_ENTRIES:
        return block
    vectors = data.reshape(block.count, -1, entries).transpose(0, 1)  # [P, C, D]
    signs = block.sign.reshape(block.count, -1).T.unsqueeze(-1)  # [P, C, 1]
    # one entry per column (elementwise ops' own curvature): the sum is diagonal
    if _one_entry_each(vectors):
        values = (signs * vectors.square()).sum(1)  # [P, D]
        bases = torch.eye(entries, dtype=data.dtype, device=data.device)
        bases = bases.expand(*values.shape, entries)
    elif (block.count - entries) * work < COMPRESS_COST * entries**3:
        return block
    else:
        gram = vectors.transpose(1, 2) @ (signs * vectors)  # [P, D, D]
        values, bases = torch.linalg.eigh(gram)
    where = data.shape[1 : 1 + lead]
    columns = bases * values.abs().sqrt().unsqueeze(1)  # [P, D, D(cols)]
    data = columns.permute(2, 0, 1).reshape(entries, *where, *data.shape[1 + lead :])
    sign = values.sign().T.reshape(entries, *where)
    return type(block)(data, sign)


def _one_entry_each(vectors: torch.Tensor) -> bool:
    """Has every column (``vectors[p, c]``) at most one nonzero entry? A few
    columns are looked at first: most blocks fail there, without a full pass."""
    if (vectors[:, :8] != 0).sum(-1).max() > 1:
        return False
    return bool((vectors != 0).sum(-1).max() <= 1)


def storages(block: Any) -> dict[int, int]:
    """The memory ``block`` holds (any layout, :class:`Paired`, :class:`Placed`,
    or lists and dicts of them): each tensor storage once, address -> bytes."""
    if isinstance(block, _DataColumns):  # the common case, quickly (signs aside)
        storage = block.data.untyped_storage()
        return {storage.data_ptr(): storage.nbytes()}
    if isinstance(block, OuterColumns):  # two small factors
        return {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in (block.left, block.right)
        }
    found: dict[int, int] = {}
    stack = [block]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif hasattr(item, "__dataclass_fields__"):  # a layout, Paired, Placed
            stack.extend(vars(item).values())
    return found


def _signed(sign: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    return sign.reshape(*sign.shape, *([1] * (data.dim() - sign.dim()))) * data


def _signed_sum(sign: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """``sum_c sign[c, ...] data[c, ...]`` as one contraction."""
    if sign.dim() == 1:
        return torch.tensordot(sign, data, dims=1)
    if sign.dim() == 2:
        return torch.einsum("cn,cn...->n...", sign, data)
    return _signed(sign, data).sum(0)


def _outer_diagonal(parts: list[OuterColumns]) -> torch.Tensor:
    """``sum_{c,n} s (sum_k left_k (x) right_k)^2`` without forming a column."""
    total = None
    oriented = [p.oriented() for p in parts]
    sign = parts[0].sign
    n = sign.shape[1]  # a factor may broadcast over samples (size 1)
    for k, (lk, rk) in enumerate(oriented):
        for m, (lm, rm) in enumerate(oriented):
            if m < k:
                continue
            lprod, rprod = lk * lm, rk * rm
            if lprod.shape[0] == 1:  # left does not depend on c: sum c first
                term = lprod[0].expand(n, -1).T @ _signed_sum(sign, rprod)
            elif rprod.shape[0] == 1:
                term = _signed_sum(sign, lprod).T @ rprod[0].expand(n, -1)
            else:
                term = torch.einsum("cna,cnb->ab", _signed(sign, lprod), rprod)
            total = term * (1 if m == k else 2) + (0 if total is None else total)
    return total


@dataclass
class Paired:
    """Columns that pair with their source's own columns at the parameters.

    A source whose Hessian term has a cross block between two inputs of a
    node can carry only one side as columns and the other as partners
    ``u_c`` (see ``MatMul.fold``): where the source's columns ``v_c`` reach a
    parameter, the diagonal gains ``sum_c s_c v_c * u_c`` (:func:`paired_diagonal`)
    instead of a square. Partners travel the graph as columns do (pulled back
    through the same linear maps), in the same column order, and are never
    added to the columns themselves nor squared.
    """

    block: Columns


def paired_diagonal(
    parts: list[ColumnBlock], partners: list[ColumnBlock], shape: tuple[int, ...]
) -> torch.Tensor:
    """``sum_c s_c v_c * u_c``: the source's columns ``v`` (the sum of ``parts``)
    times each partner block's columns ``u`` (with the partners' signs ``s``).

    Example:
        >>> v = DenseColumns(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.ones(2))
        >>> u = DenseColumns(torch.eye(2), torch.full((2,), 2.0))
        >>> paired_diagonal([v], [u], (2,))
        tensor([2., 8.])
    """
    if all(isinstance(p, IndexedRowColumns) for p in parts):  # an embedding's rows
        rows = IndexedRowColumns.joined(parts).flat()
        total = rows.data.new_zeros(shape)
        for partner in partners:  # on the rows only, with the partners' signs
            sign = partner.sign.movedim(0, -1).reshape(1, -1)  # written-out order
            signed = IndexedRowColumns(rows.data, rows.rows, sign, rows.shape)
            total += signed.cross_sum(partner)
        return total
    own = combine(parts, shape).to_dense(shape)
    total = torch.zeros(shape, dtype=own.data.dtype, device=own.data.device)
    for partner in partners:
        if isinstance(partner, OuterColumns) and len(shape) == 2:
            left, right = (_sample_major(t, partner.sign) for t in partner.oriented())
            signed = left * partner.sign.T.reshape(-1, 1)
            total += torch.einsum("ka,kab->ab", signed, own.data * right.unsqueeze(1))
            continue
        dense = partner.to_dense(shape)
        total += _signed_sum(dense.sign, own.data * dense.data)
    return total


def _sample_major(factor: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """An outer product's factor ``[C or 1, N, k]`` as ``[N * C, k]``, in the
    order its columns are written out."""
    c, n = sign.shape
    return factor.expand(c, n, -1).transpose(0, 1).reshape(n * c, -1)


def leaf_diagonal(parts: list[ColumnBlock], shape: tuple[int, ...]) -> torch.Tensor:
    """This source's share of a parameter's Hessian diagonal: ``sum_c s_c v_c^2``.

    Rows an embedding picked (:class:`IndexedRowColumns`) and the other parts
    (a tied output layer's) are squared apart, with their cross term read on
    the picked rows only: ``(a + b)^2 = a^2 + b^2 + 2 a b``.
    """
    if len(parts) == 1:
        return parts[0].square_sum(shape)
    indexed = [p for p in parts if isinstance(p, IndexedRowColumns)]
    if indexed:
        rows = IndexedRowColumns.joined(indexed)
        total = rows.square_sum(shape)
        others = [p for p in parts if not isinstance(p, IndexedRowColumns)]
        if others:  # the cross term is linear in the others: one at a time
            total = total + leaf_diagonal(others, shape)
            for other in others:
                total = total + 2 * rows.cross_sum(other).reshape(shape)
        return total
    if all(isinstance(p, OuterColumns) for p in parts) and len(shape) == 2:
        if len({p.sign.shape for p in parts}) == 1:
            return _outer_diagonal(parts)
    return combine(parts, shape).square_sum(shape)
