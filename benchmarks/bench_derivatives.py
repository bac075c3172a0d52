"""The derivative engine against its peers, side by side in one run.

1. HVP cost on the seed task with a wider net (1-64-64-64-1 Tanh, 8,513
   parameters, 1000 points, float64): gradgraph.hvp vs a hand-written double
   backward (from scratch, and reusing the gradient graph), torch.func
   forward-over-reverse, torch.autograd.functional.hvp; in units of one gradient.
2. Estimators on that net trained with Adam (lr 1e-3, 2000 steps, float64) and
   at initialisation: relative errors of the diagonal and trace estimates
   against the exact diagonal, for a few HVP budgets (fixed seed).
3. Top eigenvalue: Lanczos with a 30-HVP budget vs PyHessian's power iteration
   (if ``pip install pyhessian`` works) and scipy eigsh on hessian_operator.
4. derivatives(x**4, order 3) vs a hand-written create_graph chain and nested
   torch.func.grad.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_derivatives.py``
(``--threads N``, default 1: stable timings on a shared machine).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from common import best_of, machine, table
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import functional_call, grad, jvp

import gradgraph
from gradgraph.derivatives import lanczos_eigenvalues
from gradgraph.derivatives.hvp import flat_hvp
from gradgraph.derivatives.params import as_params

DTYPE = torch.float64


def seed_target(x: torch.Tensor) -> torch.Tensor:
    """The seed notebook's target: 2x + 3 + 3 sin(x) sqrt|x| + cos(x + 3)."""
    return 2 * x + 3 + torch.sin(x) * 3 * torch.sqrt(x.abs()) + torch.cos(x + 3)


def wide_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(1, 64),
        nn.Tanh(),
        nn.Linear(64, 64),
        nn.Tanh(),
        nn.Linear(64, 64),
        nn.Tanh(),
        nn.Linear(64, 1),
    ).to(DTYPE)


def seed_data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-10, 10, 1000, dtype=DTYPE).view(-1, 1)
    return x, seed_target(x)


def train(model: nn.Module, x, y, steps: int = 2000) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


def paired_ratio(ours, peer, pairs: int) -> float:
    """Median of ours / peer over back-to-back runs, alternating which goes first.

    Each pair sees about the same load, so on a busy machine this is steadier
    than a ratio of two separately taken minimums.
    """
    ours(), peer()
    ratios = []
    for i in range(pairs):
        first, second = (ours, peer) if i % 2 == 0 else (peer, ours)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        a, b = (t1 - t0, t2 - t1) if i % 2 == 0 else (t2 - t1, t1 - t0)
        ratios.append(a / b)
    return statistics.median(ratios)


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"


# 1. HVP ---------------------------------------------------------------------


def hvp_section(model, x, y, repeat: int) -> str:
    params = list(model.parameters())
    named = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, dtype=DTYPE, generator=g) for p in params]
    v_named = dict(zip(named, v, strict=True))

    # (out - y)^2 mean, not F.mse_loss: torch.func's fwd-over-rev fails on
    # mse_loss here ("ZeroTensors are immutable"); every candidate uses the same
    def loss_fn():
        return ((model(x) - y) ** 2).mean()

    def gradient():
        return torch.autograd.grad(loss_fn(), params)

    def hand_double_backward():
        gs = torch.autograd.grad(loss_fn(), params, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(gs, v, strict=True))
        return torch.autograd.grad(dot, params)

    def ours():
        return gradgraph.hvp(loss_fn(), model, v_named)

    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)

    def hand_reuse():
        dot = sum((gi * vi).sum() for gi, vi in zip(grads, v, strict=True))
        return torch.autograd.grad(dot, params, retain_graph=True)

    def ours_reuse():
        return gradgraph.hvp(None, params, v, grads=list(grads))

    def loss_of(p):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    def func_fwd_over_rev():
        p = {k: t.detach() for k, t in named.items()}
        return jvp(grad(loss_of), (p,), (v_named,))[1]

    def functional_hvp():
        def f(*ps):
            return loss_of(dict(zip(named, ps, strict=True)))

        return torch.autograd.functional.hvp(
            f, tuple(t.detach() for t in params), tuple(v)
        )[1]

    # every HVP agrees before anything is timed
    want = torch.cat([t.reshape(-1) for t in hand_double_backward()])
    for fn in (ours, ours_reuse, hand_reuse, func_fwd_over_rev, functional_hvp):
        out = fn()
        out = out.values() if isinstance(out, dict) else out
        got = torch.cat([t.reshape(-1) for t in out])
        torch.testing.assert_close(got, want)

    # interleave the candidates over several rounds; keep each one's best
    candidates = {
        "gradient (forward + backward)": gradient,
        "hand-written double backward": hand_double_backward,
        "gradgraph.hvp": ours,
        "hand-written 2nd backward, grads reused": hand_reuse,
        "gradgraph.hvp(grads=...)": ours_reuse,
        "torch.func jvp(grad) fwd-over-rev": func_fwd_over_rev,
        "torch.autograd.functional.hvp": functional_hvp,
    }
    best = {name: math.inf for name in candidates}
    for _ in range(5):
        for name, fn in candidates.items():
            best[name] = min(best[name], best_of(fn, repeat))
    unit = best["gradient (forward + backward)"]
    comparisons = [
        ("gradgraph.hvp", "hand-written double backward"),
        ("gradgraph.hvp(grads=...)", "hand-written 2nd backward, grads reused"),
        ("gradgraph.hvp", "torch.func jvp(grad) fwd-over-rev"),
        ("gradgraph.hvp", "torch.autograd.functional.hvp"),
    ]
    rows = [[name, fmt(t), f"{t / unit:.2f}", "", ""] for name, t in best.items()]
    for ours_name, peer_name in comparisons:
        paired = paired_ratio(candidates[ours_name], candidates[peer_name], 4 * repeat)
        rows.append(
            [
                f"{ours_name} / {peer_name}",
                "",
                "",
                f"{best[ours_name] / best[peer_name]:.3f}",
                f"{paired:.3f}",
            ]
        )
    header = [
        "HVP (8,513 params, 1000 points)",
        "best time",
        "x gradient",
        "ratio of bests",
        "median paired ratio",
    ]
    return table(rows, header)


# 2. estimators --------------------------------------------------------------


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def estimator_section(model, x, y, label: str, budgets: list[int]) -> str:
    loss = F.mse_loss(model(x), y)
    ps = as_params(model)
    start = time.perf_counter()
    exact = ps.flatten(
        gradgraph.hessian_diagonal(loss, model, progress=False, batch_size=64).values()
    )
    exact_s = time.perf_counter() - start
    trace = exact.sum()
    rows = []
    for m in budgets:
        row = [str(m)]
        for method in ("hutchinson", "xdiag"):
            est = gradgraph.hessian_diagonal(
                loss, model, method, matvecs=m, seed=0, progress=False
            )
            row.append(f"{relative(ps.flatten(est.values()), exact):.2g}")
        for method in ("hutchinson", "hutch++", "xtrace"):
            est = gradgraph.hessian_trace(
                loss, model, method, matvecs=m, seed=0, progress=False
            )
            row.append(f"{abs(float(est / trace) - 1):.2g}")
        rows.append(row)
    header = [
        f"HVPs ({label})",
        "diag Hutchinson",
        "diag XDiag",
        "trace Hutchinson",
        "trace Hutch++",
        "trace XTrace",
    ]
    note = (
        f"\nexact diagonal ({ps.numel} entries, method "
        f"{gradgraph.diagonal_method(loss, model)!r}): {exact_s:.1f} s; "
        f"trace = {float(trace):.6g}; relative errors (2-norm for the diagonal), "
        "seed 0\n"
    )
    return table(rows, header) + note


# 3. eigenvalues -------------------------------------------------------------


class Counting:
    def __init__(self, matvec):
        self.matvec, self.calls = matvec, 0

    def __call__(self, v):
        self.calls += 1
        return self.matvec(v)


def pyhessian_top(model, x, y, max_iter: int, tol: float):
    """PyHessian's power iteration: (value, HVPs), or (None, why it cannot run)."""
    try:
        import pyhessian  # noqa: F401
    except ImportError as exc:
        return None, f"not installed: {exc}"  # the table then shows why
    ph = sys.modules["pyhessian.hessian"]  # the module, not the class it exports
    original = ph.hessian_vector_product
    calls = [0]

    def counted(*args):
        calls[0] += 1
        return original(*args)

    default = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)  # PyHessian draws its vectors in this dtype
    ph.hessian_vector_product = counted
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():  # it calls backward(create_graph=True)
            warnings.simplefilter("ignore", UserWarning)
            h = ph.hessian(model, nn.MSELoss(), data=(x, y), cuda=False)
            values, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
    finally:
        torch.set_default_dtype(default)
        ph.hessian_vector_product = original
        model.zero_grad(set_to_none=True)  # drop the .grad graphs it left
    return values[0], calls[0]


def eigen_section(model, x, y) -> str:
    ps = as_params(model)
    loss = F.mse_loss(model(x), y)
    matvec = flat_hvp(loss, ps)
    reference, _ = lanczos_eigenvalues(
        matvec, ps.numel, tol=1e-14, max_matvecs=600, seed=1, progress=False
    )
    top = float(reference[0])
    rows = []

    def row(label, calls, value):
        error = "-" if value is None else f"{abs(float(value) / top - 1):.1e}"
        rows.append([label, str(calls), error])

    for budget in (5, 10, 20, 30):
        counted = Counting(matvec)
        value, _ = lanczos_eigenvalues(
            counted,
            ps.numel,
            tol=1e-30,
            max_matvecs=budget,
            seed=0,
            progress=False,
        )
        row(f"gradgraph Lanczos, budget {budget}", counted.calls, value[0])
        value, calls = pyhessian_top(model, x, y, budget, 0.0)
        row(f"PyHessian power iteration, {budget} iterations", calls, value)
    counted = Counting(matvec)
    value, _ = lanczos_eigenvalues(counted, ps.numel, seed=0, progress=False)
    row("gradgraph.hessian_eigenvalues defaults (tol 1e-8)", counted.calls, value[0])
    value, calls = pyhessian_top(model, x, y, 100, 1e-3)
    row("PyHessian power iteration, its defaults (tol 1e-3)", calls, value)
    op = gradgraph.hessian_operator(F.mse_loss(model(x), y), model)
    counted = Counting(op.matvec)
    counted_op = LinearOperator(op.shape, matvec=counted, dtype=op.dtype)
    value = eigsh(counted_op, k=1, which="LA", tol=1e-6, v0=np.ones(ps.numel))[0][0]
    row("scipy eigsh(hessian_operator), tol 1e-6", counted.calls, value)
    note = f"\nreference top eigenvalue (Lanczos, residual 1e-14): {top:.12g}\n"
    return (
        table(rows, ["top eigenvalue (trained net)", "HVPs", "relative error"]) + note
    )


# 4. derivatives -------------------------------------------------------------


def derivatives_section(repeat: int) -> str:
    def f(x):
        return x**4

    def hand_chain():
        x = torch.tensor(1.0, requires_grad=True)
        y = f(x)
        out = []
        for _ in range(3):
            (y,) = torch.autograd.grad(y, x, create_graph=True)
            out.append(y)
        return out

    def ours():
        return gradgraph.derivatives(f, 1.0, 3)

    third = grad(grad(grad(f)))

    def nested_func_grad():
        return third(torch.tensor(1.0))

    assert [float(d) for d in ours()] == [float(d.detach()) for d in hand_chain()]
    assert float(nested_func_grad()) == 24.0
    loops = 50

    def many(fn):
        return lambda: [fn() for _ in range(loops)]

    best = {"hand": math.inf, "ours": math.inf, "func": math.inf}
    for _ in range(3):
        best["hand"] = min(best["hand"], best_of(many(hand_chain), repeat) / loops)
        best["ours"] = min(best["ours"], best_of(many(ours), repeat) / loops)
        best["func"] = min(
            best["func"], best_of(many(nested_func_grad), repeat) / loops
        )
    pairs = 4 * repeat
    rows = [
        ["hand-written create_graph chain (3 orders)", fmt(best["hand"]), "", ""],
        [
            "gradgraph.derivatives(f, 1.0, 3)",
            fmt(best["ours"]),
            f"{best['ours'] / best['hand']:.2f} vs hand chain",
            f"{paired_ratio(many(ours), many(hand_chain), pairs):.2f}",
        ],
        [
            "nested torch.func.grad (3rd order only)",
            fmt(best["func"]),
            f"ours / func {best['ours'] / best['func']:.2f}",
            f"{paired_ratio(many(ours), many(nested_func_grad), pairs):.2f}",
        ],
    ]
    header = [
        "x**4 at 1, orders 1-3",
        "best time per call",
        "ratio of bests",
        "median paired ratio",
    ]
    return table(rows, header)


SECTIONS = ("derivatives", "hvp", "estimators", "eigen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--only", nargs="*", choices=SECTIONS, default=SECTIONS, help="sections to run"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}, torch threads: {args.threads}\n")
    x, y = seed_data()
    if "derivatives" in args.only:
        print(derivatives_section(args.repeat), "\n")
    if "hvp" in args.only:
        print(hvp_section(wide_mlp(), x, y, args.repeat), "\n")
    if "estimators" not in args.only and "eigen" not in args.only:
        return
    start = time.perf_counter()
    trained = wide_mlp()
    final = train(trained, x, y)
    print(
        f"trained 1-64-64-64-1 Tanh: 2000 Adam steps in "
        f"{time.perf_counter() - start:.1f} s, final MSE {final:.4g}\n"
    )
    if "estimators" in args.only:
        print(estimator_section(trained, x, y, "trained", [16, 32, 64, 128]))
        print(estimator_section(wide_mlp(), x, y, "initialisation", [64]))
    if "eigen" in args.only:
        print(eigen_section(trained, x, y))


if __name__ == "__main__":
    main()
