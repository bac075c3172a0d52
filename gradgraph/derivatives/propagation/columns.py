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
* :class:`DiagonalColumns`: the columns of ``diag(weights)`` (an
  activation's own curvature), written out a slice at a time
  (``take``), so a large set of them need not exist at once.
* :class:`RowColumns`: columns that each sit on one row of a value (the
  curvature of a softmax or a normalization layer, per row), written out a
  slice at a time too.
* :class:`ChainedColumns`: the columns of several such blocks one after the
  other (a diagonal plus a few dense columns), each kept in its own layout.

Columns are independent of each other, so a block can travel in slices of
its leading (column) axis and the slices' contributions add.

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
        out = self.data.new_zeros((c, n, *shape))
        idx = torch.arange(n, device=self.data.device)
        out[:, idx, idx] = self.data
        return DenseColumns(out.reshape(c * n, *shape), self.sign.reshape(c * n))


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
        return DenseColumns(cols.reshape(c * n, *shape), self.sign.reshape(c * n))

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
    ``[G, O, K]``, is read as ``shape`` (``[G * O, K]`` in row-major order).
    """

    left: torch.Tensor
    right: torch.Tensor
    sign: torch.Tensor  # [C, N]
    shape: tuple[int, ...]

    @property
    def column_bytes(self) -> int:  # written out: N columns per slice
        return self.sign.shape[1] * math.prod(self.shape) * self.left.element_size()

    def take(self, start: int, stop: int) -> ProductColumns:
        return ProductColumns(
            self.left[start:stop], self.right, self.sign[start:stop], self.shape
        )

    def to_dense(self, shape: tuple[int, ...]) -> DenseColumns:
        data = torch.einsum("cngol,ngkl->cngok", self.left, self.right)
        c, n = self.sign.shape
        return DenseColumns(data.reshape(c * n, *shape), self.sign.reshape(c * n))

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
            left = self.left[:, a:b]
            signed = left * self.sign[:, a:b, None, None, None]
            gram = torch.einsum("cngol,cngom->ngolm", signed, left)
            right = self.right[a:b]
            pairs = right.unsqueeze(-1) * right.unsqueeze(-2)  # [N, G, K, L, L]
            total += torch.einsum("ngolm,ngklm->gok", gram, pairs)
        return total


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
    (``j`` runs over ``rest``). Nothing is written out until asked for.
    """

    weights: torch.Tensor
    # > 1: each column is centred on its row of this many consecutive entries
    # (of a sample): the block is diag(weights) times the projection that
    # takes out each row's mean, for weights constant along a row
    row_length: int = 1

    @property
    def count(self) -> int:
        shape = self.weights.shape
        return shape[1:].numel() if len(shape) >= 2 else shape.numel()

    @property
    def column_bytes(self) -> int:
        return self.weights.numel() * self.weights.element_size()

    def take(self, start: int, stop: int) -> DenseColumns | SampleColumns:
        """Columns ``start:stop`` written out."""
        w = self.weights
        k = stop - start
        idx = torch.arange(k, device=w.device)
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


Columns = DenseColumns | SampleColumns | OuterColumns | ProductColumns


def combine(parts: list[Columns], shape: tuple[int, ...]) -> Columns:
    """One block for the columns of one source that arrived by several paths.

    The same columns reached the node along different paths, so they add
    (before any squaring). Layouts that differ are written out densely first.
    """
    parts = [p.written_out() for p in parts]  # the rules act on data
    if len(parts) == 1:
        return parts[0]
    kinds = {type(p) for p in parts}
    if kinds == {SampleColumns} and len({p.samples for p in parts}) == 1:
        total = parts[0]
        for p in parts[1:]:
            total = total.add(p)
        return total
    dense = [p.to_dense(shape) for p in parts]
    total = dense[0]
    for p in dense[1:]:
        total = total.add(p)
    return total


def concatenate(blocks: list[Columns]) -> list[Columns]:
    """Fewer, wider blocks: same-layout blocks stacked along the column axis.

    Only for blocks of different sources that will travel the same path from
    here on (their sums of squares then stay separate, as they must).
    """
    samples: dict[int, list[SampleColumns]] = {}
    dense: list[DenseColumns] = []
    rest: list[Columns] = []
    for b in blocks:
        if isinstance(b, SampleColumns):
            samples.setdefault(b.samples, []).append(b)
        elif isinstance(b, DenseColumns):
            dense.append(b)
        else:
            rest.append(b)
    out: list[Columns] = []
    for group in samples.values():
        if len(group) == 1:
            out.append(group[0])
        else:
            out.append(
                SampleColumns(
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


def _signed(sign: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    return sign.reshape(*sign.shape, *([1] * (data.dim() - sign.dim()))) * data


def _signed_sum(sign: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """``sum_c sign[c, ...] data[c, ...]`` as one contraction."""
    if sign.dim() == 1:
        return torch.tensordot(sign, data, dims=1)
    return torch.einsum("cn,cn...->n...", sign, data)


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


def leaf_diagonal(parts: list[ColumnBlock], shape: tuple[int, ...]) -> torch.Tensor:
    """This source's share of a parameter's Hessian diagonal: ``sum_c s_c v_c^2``."""
    if len(parts) == 1:
        return parts[0].square_sum(shape)
    if all(isinstance(p, OuterColumns) for p in parts) and len(shape) == 2:
        if len({p.sign.shape for p in parts}) == 1:
            return _outer_diagonal(parts)
    return combine(parts, shape).square_sum(shape)
