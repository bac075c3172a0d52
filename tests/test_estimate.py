"""The matrix-free estimators on dense matrices whose answers are known exactly."""

from __future__ import annotations

import pytest
import torch

from gradgraph.derivatives import (
    diagonal_estimate,
    lanczos_eigenvalues,
    spectral_density,
    trace_estimate,
)

N = 120


def decaying(n: int = N, rate: float = 15.0, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with eigenvalues 10^(-i/rate), in a random basis."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    values = 10.0 ** (-torch.arange(n, dtype=torch.float64) / rate)
    return (U * values) @ U.T


def low_rank(n: int = N, rank: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    B = torch.randn(n, rank, dtype=torch.float64, generator=g)
    return B @ torch.diag(torch.tensor([3.0, -2.0, 1.5, 1.0, -0.5]).double()) @ B.T


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("method", ["hutchinson", "xdiag"])
def test_diagonal_error_shrinks_with_matvecs(method):
    A = decaying()
    errors = [
        rel(
            diagonal_estimate(
                lambda v: A @ v,
                N,
                method=method,
                matvecs=m,
                seed=5,
                progress=False,
            ),
            A.diag(),
        )
        for m in (8, 32, 128)
    ]
    assert errors[0] > errors[1] > errors[2]
    if method == "xdiag":  # 64 sketch vectors capture the decaying spectrum
        assert errors[2] < 1e-3


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_error_shrinks_with_matvecs(method):
    A = decaying()
    errors = [
        abs(
            float(
                trace_estimate(
                    lambda v: A @ v,
                    N,
                    method=method,
                    matvecs=m,
                    seed=5,
                    progress=False,
                )
            )
            / float(A.trace())
            - 1
        )
        for m in (9, 33, 129)
    ]
    assert errors[0] > errors[2]
    if method != "hutchinson":
        assert errors[2] < 1e-3


def test_sketching_estimators_are_exact_on_low_rank():
    A = low_rank()
    mv = lambda v: A @ v  # noqa: E731
    for method in ("xdiag", "exact"):
        got = diagonal_estimate(mv, N, method=method, matvecs=16, progress=False)
        torch.testing.assert_close(got, A.diag())
    for method in ("xtrace", "hutch++", "exact"):
        got = trace_estimate(mv, N, method=method, matvecs=18, progress=False)
        torch.testing.assert_close(got, A.trace())


def test_hutchinson_is_exact_on_a_diagonal_matrix():
    d = torch.linspace(-1, 3, N, dtype=torch.float64)
    mv = lambda v: d * v  # noqa: E731
    got = diagonal_estimate(mv, N, method="hutchinson", matvecs=1, progress=False)
    torch.testing.assert_close(got, d)
    got = trace_estimate(mv, N, method="hutchinson", matvecs=1, progress=False)
    torch.testing.assert_close(got, d.sum())


def test_seeds_reproduce_and_differ():
    A = decaying()
    mv = lambda v: A @ v  # noqa: E731

    def run(g):
        return trace_estimate(
            mv, N, method="hutchinson", seed=g, matvecs=4, progress=False
        )

    assert torch.equal(run(7), run(torch.Generator().manual_seed(7)))
    assert not torch.equal(run(7), run(8))


@pytest.mark.parametrize(
    "estimate", [diagonal_estimate, trace_estimate, spectral_density]
)
def test_generator_is_the_deprecated_spelling_of_seed(estimate):
    A = decaying()
    mv = lambda v: A @ v  # noqa: E731
    options = {"progress": False}
    if estimate is spectral_density:
        options.update(probes=2, steps=4)
    else:
        options.update(matvecs=8)
    new = estimate(mv, N, seed=3, **options)
    with pytest.warns(DeprecationWarning, match=r"generator=\.\.\.\) is deprecated"):
        old = estimate(mv, N, generator=3, **options)
    result = (lambda d: d.nodes) if estimate is spectral_density else (lambda t: t)
    assert torch.equal(result(old), result(new))


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "SM"])
def test_lanczos_matches_eigvalsh(which):
    g = torch.Generator().manual_seed(1)
    M = torch.randn(60, 60, dtype=torch.float64, generator=g)
    A = M + M.T
    exact = torch.linalg.eigvalsh(A)
    order = {
        "LA": torch.argsort(exact, descending=True),
        "SA": torch.argsort(exact),
        "LM": torch.argsort(exact.abs(), descending=True),
        "SM": torch.argsort(exact.abs()),
    }[which]
    values, vectors = lanczos_eigenvalues(
        lambda v: A @ v, 60, k=3, which=which, seed=0, progress=False
    )
    torch.testing.assert_close(values, exact[order[:3]])
    torch.testing.assert_close(A @ vectors, vectors * values, atol=1e-6, rtol=0)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(3, dtype=torch.float64))


class Counted:
    """``v -> A @ v`` that counts its calls."""

    def __init__(self, A: torch.Tensor):
        self.A, self.calls = A, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.A @ v


def test_lanczos_finds_repeated_eigenvalues():
    # 4 copies of 5 and 6 other values: the first Krylov space is invariant
    # after 7 steps; new blocks then find the other copies
    A = torch.diag(torch.tensor([5.0] * 4 + [0.0, 1, 2, 3, 4, 4.5]).double())
    values, vectors = lanczos_eigenvalues(Counted(A), 10, k=5, seed=0, progress=False)
    torch.testing.assert_close(values, torch.tensor([5.0] * 4 + [4.5]).double())
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(5).double())


def test_lanczos_stops_when_converged_or_at_the_budget():
    A = decaying(rate=5.0)  # top eigenvalue 1, next 0.63: converges fast
    counted = Counted(A)
    values, _ = lanczos_eigenvalues(counted, N, tol=1e-10, seed=0, progress=False)
    torch.testing.assert_close(values, torch.ones(1, dtype=torch.float64))
    assert counted.calls < 40
    counted = Counted(A)
    lanczos_eigenvalues(counted, N, max_matvecs=5, seed=0, progress=False)
    assert counted.calls == 5


def test_spectral_density_moments_and_curve():
    d = torch.linspace(-1, 2, 50, dtype=torch.float64)
    density = spectral_density(
        lambda v: d * v, 50, probes=3, steps=6, seed=0, progress=False
    )
    assert density.nodes.shape == (18,)
    torch.testing.assert_close(density.weights.sum(), torch.tensor(1.0).double())
    for power in range(12):  # Gauss quadrature with 6 nodes is exact to degree 11
        torch.testing.assert_close(density.moment(power), (d**power).mean())
    grid, curve = density.evaluate(sigma=0.05)
    area = torch.trapezoid(curve, grid)
    torch.testing.assert_close(area, torch.tensor(1.0).double(), atol=1e-3, rtol=0)


def test_spectral_density_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    A = decaying()
    density = spectral_density(lambda v: A @ v, N, steps=20, progress=False)
    ax = density.plot(log=True)
    assert ax.get_yscale() == "log" and len(ax.lines) == 1
    plt.close(ax.figure)


def test_bad_inputs():
    A = decaying()
    mv = lambda v: A @ v  # noqa: E731
    with pytest.raises(ValueError, match="dim"):
        diagonal_estimate(mv, 0)
    with pytest.raises(ValueError, match="choose one of"):
        diagonal_estimate(mv, N, method="exact-ish")
    with pytest.raises(ValueError, match="choose one of"):
        trace_estimate(mv, N, method="xdiag")
    with pytest.raises(ValueError, match="matvecs >= 4"):
        trace_estimate(mv, N, method="xtrace", matvecs=3)
    with pytest.raises(ValueError, match="same shape"):
        trace_estimate(lambda v: v[:3], N, matvecs=4, progress=False)
    with pytest.raises(TypeError, match="seed must be"):
        trace_estimate(mv, N, seed="seed")
    with pytest.raises(TypeError, match="only seed="):
        trace_estimate(mv, N, seed=0, generator=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'probe'"):
        spectral_density(mv, N, probe=4)  # a misspelt option is not swallowed
    with pytest.raises(TypeError, match="dtype"):
        trace_estimate(mv, N, dtype=torch.int64)
    with pytest.raises(ValueError, match="k must be"):
        lanczos_eigenvalues(mv, N, k=0)
    with pytest.raises(ValueError, match="which"):
        lanczos_eigenvalues(mv, N, which="BE")
    with pytest.raises(ValueError, match="probes"):
        spectral_density(mv, N, probes=0)
