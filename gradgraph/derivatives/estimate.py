"""Matrix-free estimators of a symmetric operator: diagonal, trace, spectrum.

The interface
-------------
Every function here works on an operator ``A`` it only sees through products:

- ``matvec(v) -> A @ v``: a callable taking a flat 1-D tensor of ``dim``
  entries and returning a flat 1-D tensor of ``dim`` entries (same dtype and
  device), for one fixed **symmetric** ``A``. It is called once per vector,
  never with a batch; nothing here differentiates through it.
- ``dim``: the size ``n`` of ``A``.
- keyword-only options every function takes: ``seed`` (a
  ``torch.Generator``, an ``int`` seed, or ``None`` for torch's global RNG; an
  int seed draws on the CPU, so results do not depend on the device; the old
  spelling ``generator=`` still works, with a DeprecationWarning), ``dtype``
  and ``device`` of the vectors handed to ``matvec`` (default float64 on the
  CPU), and ``progress`` (a tqdm bar that appears after 2 seconds;
  ``progress=False`` turns it off).

Nothing here knows about autograd: a
:class:`~gradgraph.derivatives.operator.HessianOperator` (of one loss or of a
dataset) passes its ``matvec``, and a test can pass ``lambda v: M @ v`` for a
dense matrix.

Estimators and their costs (``matvecs`` is the total number of products):

- ``diagonal_estimate``: ``"hutchinson"`` (``E[z * A z]``, Rademacher ``z``),
  ``"xdiag"`` (Epperly, Tropp & Webber's exchangeable estimator: a low-rank
  part from ``matvecs // 2`` sketch vectors, plus Hutchinson on the rest, each
  sketch vector left out in turn), ``"exact"`` (``dim`` products with unit
  vectors). XDiag and XTrace are exact once ``matvecs >= dim``: they then
  spend ``dim`` products on unit vectors.
- ``trace_estimate``: ``"hutchinson"``, ``"hutch++"`` (Meyer et al.),
  ``"xtrace"`` (the trace twin of XDiag), ``"exact"``.
- ``lanczos_eigenvalues``: Lanczos with full reorthogonalisation, stopped when
  every wanted Ritz pair has residual ``||A y - θ y|| <= tol * |θ|``.
- ``spectral_density``: stochastic Lanczos quadrature.

Low-rank-plus-Hutchinson estimators (XDiag, XTrace, Hutch++) are accurate when
the spectrum decays fast, as a Hessian's does near a minimum; at a random
initialisation the spectrum is flat and none of them is accurate with a few
dozen products.

Example:
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> trace_estimate(lambda v: A @ v, 5, method="exact", progress=False)
    tensor(15., dtype=torch.float64)
    >>> values, _ = lanczos_eigenvalues(lambda v: A @ v, 5, k=2, seed=0)
    >>> values.round(decimals=9)
    tensor([5., 4.], dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..deprecation import renamed_keyword

__all__ = [
    "DIAGONAL_ESTIMATORS",
    "TRACE_ESTIMATORS",
    "Matvec",
    "SpectralDensity",
    "apply_columns",
    "diagonal_estimate",
    "lanczos_eigenvalues",
    "spectral_density",
    "trace_estimate",
]

Matvec = Callable[[torch.Tensor], torch.Tensor]
"""A symmetric operator as a function: flat ``(dim,)`` tensor -> flat ``(dim,)``."""

PROGRESS_DELAY_S = 2.0


@dataclass(frozen=True)
class _Setup:
    """What every estimator needs besides the matvec: sizes, RNG, dtype, device."""

    dim: int
    generator: torch.Generator | None
    dtype: torch.dtype
    device: torch.device
    progress: bool

    def signs(self, count: int) -> torch.Tensor:
        """A ``(dim, count)`` block of random signs (Rademacher vectors)."""
        where = self.generator.device if self.generator is not None else "cpu"
        bits = torch.randint(
            0, 2, (self.dim, count), generator=self.generator, device=where
        )
        return (bits.to(self.dtype) * 2 - 1).to(self.device)

    def gaussian(self, count: int) -> torch.Tensor:
        """A ``(dim, count)`` block of standard normal entries."""
        where = self.generator.device if self.generator is not None else "cpu"
        draw = torch.randn(
            self.dim, count, generator=self.generator, device=where, dtype=self.dtype
        )
        return draw.to(self.device)

    def zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=self.dtype, device=self.device)


def _setup(
    dim: Any,
    seed: Any,
    dtype: torch.dtype,
    device: Any,
    progress: bool,
) -> _Setup:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}.")
    if isinstance(dtype, torch.dtype) and dtype.is_complex:
        raise TypeError(
            f"the estimators need a real symmetric operator, got {dtype} vectors; "
            "for complex parameters differentiate real ones instead, e.g. "
            "torch.view_as_real(z) as the parameter and torch.view_as_complex "
            "inside the loss."
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}.")
    if isinstance(seed, bool):
        raise TypeError("seed must be a torch.Generator, an int or None.")
    generator = seed
    if isinstance(seed, int):
        generator = torch.Generator().manual_seed(seed)
    elif seed is not None and not isinstance(seed, torch.Generator):
        raise TypeError(
            "seed must be a torch.Generator, an int or None, got "
            f"{type(seed).__name__}."
        )
    return _Setup(dim, generator, dtype, torch.device(device or "cpu"), progress)


def _check_matvecs(matvecs: Any, least: int, method: str) -> int:
    if isinstance(matvecs, bool) or not isinstance(matvecs, int) or matvecs < least:
        raise ValueError(
            f"method {method!r} needs matvecs >= {least} (an int), got {matvecs!r}."
        )
    return matvecs


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar that shows only after PROGRESS_DELAY_S and vanishes when done."""
    return tqdm(
        total=total, desc=desc, disable=not enabled, delay=PROGRESS_DELAY_S, leave=False
    )


def _bar(total: int, setup: _Setup, desc: str) -> tqdm:
    return progress_bar(total, desc, setup.progress)


def _matvec_checked(matvec: Matvec, v: torch.Tensor) -> torch.Tensor:
    out = matvec(v)
    if not isinstance(out, torch.Tensor) or out.shape != v.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"matvec must map a flat tensor of shape {tuple(v.shape)} to one of the "
            f"same shape, got {got}."
        )
    return out.to(v.dtype)


def apply_columns(
    matvec: Matvec, block: torch.Tensor, *, progress: bool = False, desc: str = "A@v"
) -> torch.Tensor:
    """``A @ block`` for a ``(dim, k)`` block, one ``matvec`` per column.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
        >>> apply_columns(lambda v: A @ v, torch.eye(2))
        tensor([[2., 1.],
                [1., 3.]])
    """
    columns = []
    with progress_bar(block.shape[1], desc, progress) as bar:
        for j in range(block.shape[1]):
            columns.append(_matvec_checked(matvec, block[:, j].contiguous()))
            bar.update()
    if not columns:
        return torch.zeros_like(block)
    return torch.stack(columns, dim=1)


def _solvable(A: torch.Tensor) -> torch.Tensor:
    """``A`` in a dtype torch.linalg works in (float16/bfloat16 -> float32)."""
    return A.to(torch.promote_types(A.dtype, torch.float32))


def _orthonormal_basis(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Y = Q C`` with orthonormal ``Q`` spanning Y's numerical range only."""
    U, S, Wh = (part.to(Y.dtype) for part in torch.linalg.svd(_solvable(Y), False))
    if S.numel() == 0 or S[0] == 0:
        return Y[:, :0], Wh[:0]
    rank = int((S > S[0] * max(Y.shape) * torch.finfo(Y.dtype).eps).sum())
    return U[:, :rank], S[:rank, None] * Wh[:rank]


def _left_out_directions(C: torch.Tensor) -> torch.Tensor:
    """Column i: the unit vector of ``span(Q)`` that leaving sketch i out loses.

    ``C`` is ``(r, m)`` with ``Y = Q C``. Leaving column ``i`` of ``Y`` out, the
    range shrinks by at most one direction ``Q s_i`` with ``C[:, j] . s_i = 0``
    for all ``j != i``; ``s_i = 0`` when nothing is lost.
    """
    rank, count = C.shape
    S = torch.zeros(rank, count, dtype=C.dtype, device=C.device)
    if rank == 0:
        return S
    if rank == count:  # the usual case: C is invertible, s_i ∝ C^{-T} e_i
        inv_t = torch.linalg.inv(_solvable(C)).T
        inv_t = inv_t / torch.linalg.vector_norm(inv_t, dim=0, keepdim=True)
        return inv_t.to(C.dtype)
    for i in range(count):
        rest = torch.cat([C[:, :i], C[:, i + 1 :]], dim=1)
        U, sv, _ = (part.to(C.dtype) for part in torch.linalg.svd(_solvable(rest)))
        tol = (sv[0] if sv.numel() else 1.0) * max(C.shape) * torch.finfo(C.dtype).eps
        if int((sv > tol).sum()) < rank:
            S[:, i] = U[:, -1]
    return S


def _exchangeable_parts(
    matvec: Matvec, setup: _Setup, matvecs: int, desc: str
) -> tuple[torch.Tensor, ...]:
    """Shared work of XDiag and XTrace: sketch, basis, leave-one-out directions."""
    count = min(matvecs // 2, setup.dim)
    omega = setup.signs(count)
    with _bar(2 * count, setup, desc) as bar:
        Y = apply_columns(matvec, omega)
        bar.update(count)
        Q, C = _orthonormal_basis(Y)
        Z = apply_columns(matvec, Q)
        bar.update(count)
    S = _left_out_directions(C)
    return omega, Q, C, Z, S


def _diagonal_hutchinson(matvec, setup, matvecs):
    _check_matvecs(matvecs, 1, "hutchinson")
    total = setup.zeros(setup.dim)
    with _bar(matvecs, setup, "diagonal (Hutchinson)") as bar:
        for _ in range(matvecs):
            z = setup.signs(1)[:, 0]
            total += z * _matvec_checked(matvec, z)
            bar.update()
    return total / matvecs


def _diagonal_xdiag(matvec, setup, matvecs):
    _check_matvecs(matvecs, 4, "xdiag")
    if matvecs >= setup.dim:  # unit vectors span the space within the budget
        return _diagonal_exact(matvec, setup, matvecs)
    omega, Q, C, Z, S = _exchangeable_parts(matvec, setup, matvecs, "diagonal (XDiag)")
    low_rank = (Q * Z).sum(dim=1)  # diag(Q Q^T A)
    QS, ZS = Q @ S, Z @ S
    kept = (S * C).sum(dim=0)  # s_i . C e_i
    per_sketch = low_rank[:, None] - QS * ZS + omega * QS * kept[None, :]
    return per_sketch.mean(dim=1)


def _diagonal_exact(matvec, setup, matvecs):
    out = setup.zeros(setup.dim)
    e = setup.zeros(setup.dim)
    with _bar(setup.dim, setup, "diagonal (exact)") as bar:
        for j in range(setup.dim):
            e[j] = 1
            out[j] = _matvec_checked(matvec, e)[j]
            e[j] = 0
            bar.update()
    return out


DIAGONAL_ESTIMATORS: dict[str, Callable[[Matvec, _Setup, int], torch.Tensor]] = {
    "hutchinson": _diagonal_hutchinson,
    "xdiag": _diagonal_xdiag,
    "exact": _diagonal_exact,
}


def _method(table: dict, method: Any, what: str) -> Callable:
    if method not in table:
        raise ValueError(
            f"unknown {what} method {method!r}; choose one of {sorted(table)}."
        )
    return table[method]


@renamed_keyword("generator", "seed")
def diagonal_estimate(
    matvec: Matvec,
    dim: int,
    *,
    method: str = "xdiag",
    matvecs: int = 64,
    seed: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    progress: bool = True,
) -> torch.Tensor:
    """The diagonal of a symmetric operator from ``matvecs`` products.

    Args:
        matvec: flat ``(dim,)`` -> flat ``(dim,)``, see the module docstring.
        dim: the operator's size.
        method: ``"xdiag"``, ``"hutchinson"`` or ``"exact"`` (``dim`` products,
            ignores ``matvecs``).
        matvecs: total products to spend (XDiag needs at least 4).

    Returns:
        A ``(dim,)`` tensor.

    Example:
        >>> u = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> A = torch.outer(u, u)  # rank one: XDiag's sketch captures it exactly
        >>> diagonal_estimate(lambda v: A @ v, 3, matvecs=4, seed=0).round()
        tensor([1., 4., 9.], dtype=torch.float64)
    """
    estimator = _method(DIAGONAL_ESTIMATORS, method, "diagonal")
    setup = _setup(dim, seed, dtype, device, progress)
    return estimator(matvec, setup, matvecs)


def _trace_hutchinson(matvec, setup, matvecs):
    _check_matvecs(matvecs, 1, "hutchinson")
    total = setup.zeros(())
    with _bar(matvecs, setup, "trace (Hutchinson)") as bar:
        for _ in range(matvecs):
            z = setup.signs(1)[:, 0]
            total += z @ _matvec_checked(matvec, z)
            bar.update()
    return total / matvecs


def _trace_hutchpp(matvec, setup, matvecs):
    _check_matvecs(matvecs, 3, "hutch++")
    third = matvecs // 3
    sketch, probes = setup.signs(third), setup.signs(matvecs - 2 * third)
    with _bar(matvecs, setup, "trace (Hutch++)") as bar:
        Q, _ = _orthonormal_basis(apply_columns(matvec, sketch))
        bar.update(third)
        low_rank = torch.trace(Q.T @ apply_columns(matvec, Q))
        bar.update(third)
        rest = probes - Q @ (Q.T @ probes)
        hutch = (rest * apply_columns(matvec, rest)).sum() / probes.shape[1]
        bar.update(probes.shape[1])
    return low_rank + hutch


def _trace_xtrace(matvec, setup, matvecs):
    _check_matvecs(matvecs, 4, "xtrace")
    if matvecs >= setup.dim:  # unit vectors span the space within the budget
        return _trace_exact(matvec, setup, matvecs)
    omega, Q, C, Z, S = _exchangeable_parts(matvec, setup, matvecs, "trace (XTrace)")
    H = Q.T @ Z
    H = (H + H.T) / 2
    left_out = (S * (H @ S)).sum(dim=0)  # s_i^T H s_i
    kept = (S * C).sum(dim=0)
    hutch = (omega * (Q @ S)).sum(dim=0) * kept  # omega_i . Q s_i (s_i . C e_i)
    return (torch.trace(H) - left_out + hutch).mean()


def _trace_exact(matvec, setup, matvecs):
    return _diagonal_exact(matvec, setup, matvecs).sum()


TRACE_ESTIMATORS: dict[str, Callable[[Matvec, _Setup, int], torch.Tensor]] = {
    "hutchinson": _trace_hutchinson,
    "hutch++": _trace_hutchpp,
    "xtrace": _trace_xtrace,
    "exact": _trace_exact,
}


@renamed_keyword("generator", "seed")
def trace_estimate(
    matvec: Matvec,
    dim: int,
    *,
    method: str = "xtrace",
    matvecs: int = 64,
    seed: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    progress: bool = True,
) -> torch.Tensor:
    """The trace of a symmetric operator from ``matvecs`` products.

    Args:
        matvec: flat ``(dim,)`` -> flat ``(dim,)``, see the module docstring.
        dim: the operator's size.
        method: ``"xtrace"``, ``"hutch++"``, ``"hutchinson"`` or ``"exact"``.
        matvecs: total products to spend (XTrace needs 4, Hutch++ 3).

    Returns:
        A 0-dim tensor.

    Example:
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> trace_estimate(lambda v: A @ v, 3, method="hutchinson", seed=0)
        tensor(6., dtype=torch.float64)
    """
    estimator = _method(TRACE_ESTIMATORS, method, "trace")
    setup = _setup(dim, seed, dtype, device, progress)
    return estimator(matvec, setup, matvecs)


class _Lanczos:
    """Lanczos with full reorthogonalisation, one step at a time.

    Keeps the basis ``V`` and the tridiagonal ``T``. When the Krylov space
    becomes invariant (``beta = 0``) it starts a new block from a random
    vector orthogonal to ``V``: ``T`` is then block diagonal, and copies of
    repeated eigenvalues, which one Krylov space cannot hold, are found too.
    """

    def __init__(self, matvec: Matvec, setup: _Setup, start: torch.Tensor):
        self.matvec, self.setup = matvec, setup
        self.basis: list[torch.Tensor] = []
        self.alpha: list[float] = []
        self.beta: list[float] = []  # beta[j] couples basis[j] and basis[j + 1]
        self.next = start / torch.linalg.vector_norm(start)
        self.exhausted = False  # the basis spans the whole space
        self.broke_down = False  # the last step ended a block
        self.block_start = 0  # where the current block began
        self.scale = 0.0

    def _orthogonalise(self, w: torch.Tensor) -> torch.Tensor:
        V = torch.stack(self.basis, dim=1)
        for _ in range(2):
            w = w - V @ (V.T @ w)
        return w

    def step(self) -> None:
        if self.broke_down:
            self.block_start = len(self.basis)
        q = self.next
        self.basis.append(q)
        w = _matvec_checked(self.matvec, q)
        a = float(q @ w)
        self.alpha.append(a)
        self.scale = max(self.scale, abs(a), float(torch.linalg.vector_norm(w)))
        w = self._orthogonalise(w)
        b = float(torch.linalg.vector_norm(w))
        if len(self.basis) == self.setup.dim:
            self.exhausted = True
            return
        tiny = max(self.scale, 1e-300) * self.setup.dim * torch.finfo(w.dtype).eps
        self.broke_down = b <= tiny
        if not self.broke_down:
            self.beta.append(b)
            self.next = w / b
            return
        self.beta.append(0.0)
        for _ in range(3):  # a Gaussian draw has a part outside V almost surely
            draw = self.setup.gaussian(1)[:, 0]
            fresh = self._orthogonalise(draw)
            norm = torch.linalg.vector_norm(fresh)
            if norm > 1e-6 * torch.linalg.vector_norm(draw):
                self.next = fresh / norm
                return
        self.exhausted = True  # numerically, V already spans the space

    def ritz(
        self, block_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ritz values (ascending), T's eigenvectors, and each pair's residual."""
        first = self.block_start if block_only else 0
        alpha, beta = self.alpha[first:], self.beta[first:]
        m = len(alpha)
        T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(beta[: m - 1], dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        theta, W = torch.linalg.eigh(T)
        last = beta[m - 1] if len(beta) >= m and not self.exhausted else 0.0
        return theta, W, (last * W[-1]).abs()

    def converged(self, k: int, which: str, tol: float, block_only: bool) -> bool:
        theta, _, residual = self.ritz(block_only)
        wanted = _pick(theta, min(k, len(theta)), which)
        floor = self.setup.dim * torch.finfo(torch.float64).eps * self.scale
        bound = tol * torch.clamp(theta[wanted].abs(), min=floor)
        return bool((residual[wanted] <= bound).all())


_WHICH = {"LA", "SA", "LM", "SM"}


def _pick(theta: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """Indices of the ``k`` wanted Ritz values, in the order they are returned."""
    if which == "LA":
        return torch.argsort(theta, descending=True)[:k]
    if which == "SA":
        return torch.argsort(theta)[:k]
    if which == "LM":
        return torch.argsort(theta.abs(), descending=True)[:k]
    return torch.argsort(theta.abs())[:k]


@renamed_keyword("generator", "seed")
def lanczos_eigenvalues(
    matvec: Matvec,
    dim: int,
    k: int = 1,
    which: str = "LA",
    *,
    tol: float = 1e-8,
    max_matvecs: int | None = None,
    seed: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` extreme eigenpairs of a symmetric operator by Lanczos.

    Stops as soon as every wanted Ritz pair ``(θ, y)`` has residual
    ``||A y - θ y|| <= tol * max(|θ|, eps * ||A||)``; for a symmetric ``A``
    an eigenvalue then lies within that distance of ``θ`` (the error of the
    extreme ones is usually far smaller, about residual² / gap). One Krylov
    space holds one copy of a repeated eigenvalue: further copies are found
    when that space becomes invariant (Lanczos then restarts orthogonally),
    but not when the wanted values converge first.

    Args:
        matvec: flat ``(dim,)`` -> flat ``(dim,)``, see the module docstring.
        dim: the operator's size.
        k: how many eigenpairs.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic,
            ``"LM"`` / ``"SM"`` largest / smallest magnitude (``"SM"``
            converges slowly; prefer a shift).
        tol: relative residual at which to stop.
        max_matvecs: stop there even if not converged (default:
            ``min(dim, max(300, 20 k))``); the best Ritz pairs are returned.

    Returns:
        ``(values, vectors)``: ``(k,)`` values in ``which`` order and
        ``(dim, k)`` orthonormal vectors (as columns).

    Example:
        >>> A = torch.diag(torch.tensor([-3.0, 1.0, 2.0], dtype=torch.float64))
        >>> values, vectors = lanczos_eigenvalues(lambda v: A @ v, 3, which="LM")
        >>> values.round(decimals=9), vectors.shape
        (tensor([-3.], dtype=torch.float64), torch.Size([3, 1]))
    """
    if which not in _WHICH:
        raise ValueError(f"which must be one of {sorted(_WHICH)}, got {which!r}.")
    setup = _setup(dim, seed, dtype, device, progress)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dim:
        raise ValueError(f"k must be an int between 1 and dim={dim}, got {k!r}.")
    if max_matvecs is None:
        max_matvecs = min(dim, max(300, 20 * k))
    if not isinstance(max_matvecs, int) or max_matvecs < k:
        raise ValueError(f"max_matvecs must be an int >= k={k}, got {max_matvecs!r}.")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}.")
    lanczos = _Lanczos(matvec, setup, setup.signs(1)[:, 0])
    with _bar(max_matvecs, setup, "Lanczos") as bar:
        while True:
            lanczos.step()
            bar.update()
            steps = len(lanczos.alpha)
            if lanczos.exhausted or steps >= max_matvecs:
                break
            if steps < k or lanczos.broke_down:
                continue  # after a breakdown, explore the new block first
            if lanczos.converged(k, which, tol, block_only=False) and (
                lanczos.block_start == 0
                or lanczos.converged(k, which, tol, block_only=True)
            ):
                break
    theta, W, _ = lanczos.ritz()
    wanted = _pick(theta, k, which)
    V = torch.stack(lanczos.basis, dim=1)
    vectors = V @ W[:, wanted].to(V.dtype)
    return theta[wanted].to(dtype), vectors


@dataclass(frozen=True)
class SpectralDensity:
    """A spectral density as Gauss quadrature nodes and weights (weights sum to 1).

    ``nodes``/``weights`` hold, for each probe of stochastic Lanczos quadrature,
    the Ritz values and the squared first components of T's eigenvectors,
    divided by the number of probes: ``sum(weights * nodes**p)`` estimates
    ``trace(A**p) / dim`` (exactly for one probe's ``v^T A^p v``, p < 2 steps).
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    dim: int

    def moment(self, power: int) -> torch.Tensor:
        """Estimate of ``trace(A**power) / dim``."""
        return (self.weights * self.nodes**power).sum()

    def evaluate(
        self, grid: torch.Tensor | None = None, sigma: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The density smoothed by a Gaussian of width ``sigma`` on ``grid``.

        Defaults: 1000 points spanning the nodes with a margin, ``sigma`` = 1 %
        of that span. Returns ``(grid, density)``; the density integrates to 1.
        """
        low, high = float(self.nodes.min()), float(self.nodes.max())
        span = max(high - low, 1e-12 * max(abs(low), abs(high), 1.0))
        if sigma is None:
            sigma = 0.01 * span
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}.")
        if grid is None:
            grid = torch.linspace(
                low - 5 * sigma, high + 5 * sigma, 1000, dtype=self.nodes.dtype
            )
        grid = torch.as_tensor(grid, dtype=self.nodes.dtype)
        gauss = torch.exp(-0.5 * ((grid[:, None] - self.nodes[None, :]) / sigma) ** 2)
        density = gauss @ self.weights / (sigma * math.sqrt(2 * math.pi))
        return grid, density

    def plot(
        self,
        ax: Any = None,
        *,
        sigma: float | None = None,
        log: bool = True,
        **line: Any,
    ):
        """Draw the smoothed density with matplotlib; returns the Axes.

        Imports matplotlib only when called (``pip install matplotlib``).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "SpectralDensity.plot needs matplotlib: pip install matplotlib."
            ) from exc
        if ax is None:
            _, ax = plt.subplots()
        grid, density = self.evaluate(sigma=sigma)
        ax.plot(grid.cpu().numpy(), density.cpu().numpy(), **line)
        if log:
            ax.set_yscale("log")
            floor = float(density.max()) * 1e-8 if float(density.max()) > 0 else 1e-8
            ax.set_ylim(bottom=floor)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        return ax


@renamed_keyword("generator", "seed")
def spectral_density(
    matvec: Matvec,
    dim: int,
    *,
    probes: int = 8,
    steps: int = 64,
    seed: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    progress: bool = True,
) -> SpectralDensity:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature.

    Runs ``steps`` Lanczos steps (``probes * steps`` products in all) from each
    of ``probes`` random sign vectors and keeps the Gauss quadrature each run
    defines.

    Example:
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
        >>> d = spectral_density(lambda v: A @ v, 3, probes=2, steps=3, seed=0)
        >>> round(float(d.moment(1)), 6)  # trace / dim
        2.333333
    """
    setup = _setup(dim, seed, dtype, device, progress)
    for name, value in (("probes", probes), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    steps = min(steps, dim)
    nodes, weights = [], []
    with _bar(probes * steps, setup, "spectral density") as bar:
        for _ in range(probes):
            lanczos = _Lanczos(matvec, setup, setup.signs(1)[:, 0])
            for _ in range(steps):
                lanczos.step()
                bar.update()
                if lanczos.beta and lanczos.beta[-1] == 0.0:
                    break  # invariant subspace: this quadrature is exact
            theta, W, _ = lanczos.ritz()
            nodes.append(theta)
            weights.append(W[0] ** 2 / probes)
    return SpectralDensity(torch.cat(nodes), torch.cat(weights), dim)
