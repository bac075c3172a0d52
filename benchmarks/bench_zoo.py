"""The exact Hessian diagonal on the model zoo: its cost in gradients.

For every model of ``tests/zoo.py`` (tiny GPT-2, BERT, ViT, ResNet in training
mode, LLaMA, nn.TransformerEncoder, nn.LSTM, nn.GRU; random init, no
downloads), float32 unless ``--dtype float64``:

* gradient: one forward + backward (``torch.autograd.grad`` of the loss);
* ours: ``hessian_diagonal(loss, params)`` with ``method="auto"``, forward
  included, when ``diagonal_method`` says "propagate"; a model that still
  meets an op with no rule would fall back to HVP rows, and its row names
  the ops instead of timing minutes of rows;
* HVP rows: the gradient with ``create_graph`` plus one double backward per
  parameter entry (what ``method="rows"`` does), timed on a sample of
  ``--rows`` entries and extrapolated to all of them (marked "extrapolated");
  attention runs on the math backend there, the one with a double backward;
* BackPACK ``DiagHessian``: only where ``backpack`` imports (the separate
  venv of ``make backpack-venv``); elsewhere the script says why it is left
  out.

Costs are in gradients: a method's time over the gradient's time.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_zoo.py [--models lstm gru]``.
``--models resnet18`` (ResNet-18, 11.2M parameters, training mode, batch 2 at
32x32; not in the default list) takes minutes: add ``--repeat 1 --rows 5``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import best_of, machine, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/zoo.py

from gradgraph.derivatives import hessian_diagonal  # noqa: E402
from gradgraph.derivatives.propagation import (  # noqa: E402
    diagonal_method,
    unsupported_ops,
)
from tests.zoo import BUILDERS, LARGE, build, twice_differentiable  # noqa: E402

try:
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian
except ImportError:  # the project venv: BackPACK needs a torch of its own
    backpack = None


def gradient(case):
    return torch.autograd.grad(case.loss(), list(case.params.values()))


def ours(case):
    return hessian_diagonal(case.loss(), case.params)


def hvp_rows_seconds(case, rows: int) -> tuple[float, int]:
    """Seconds for every HVP row, from ``rows`` of them spread over the tensors.

    Returns (extrapolated seconds, rows timed).
    """
    params = list(case.params.values())
    total = sum(p.numel() for p in params)
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(0, total, (min(rows, total),), generator=generator)
    offsets = torch.tensor([0] + [p.numel() for p in params]).cumsum(0)
    start = time.perf_counter()
    with twice_differentiable():
        loss = case.loss()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for flat in picks.tolist():
        k = int(torch.searchsorted(offsets, flat, right=True)) - 1
        entry = grads[k].reshape(-1)[flat - int(offsets[k])]
        if entry.requires_grad:
            torch.autograd.grad(entry, params[k], retain_graph=True, allow_unused=True)
    per_row = (time.perf_counter() - start) / len(picks)
    return setup + per_row * total, len(picks)


def backpack_seconds(name: str, dtype) -> str:
    """BackPACK's DiagHessian time, or why it does not run on this model."""
    if backpack is None:
        return "not installed"
    case = build(name, dtype)
    extend(case.model)
    try:
        start = time.perf_counter()
        with backpack(DiagHessian()):
            case.loss().backward()
        return f"{time.perf_counter() - start:.3f} s"
    except Exception as exc:  # noqa: BLE001  (report BackPACK's refusal as is)
        return f"refuses: {type(exc).__name__}: {str(exc)[:60]}"


def run(name: str, dtype, rows: int, repeat: int) -> list[str]:
    case = build(name, dtype)
    n = sum(p.numel() for p in case.params.values())
    t_grad = best_of(lambda: gradient(case), repeat)
    method = diagonal_method(case.loss(), case.params)
    if method == "propagate":
        t_ours = best_of(lambda: ours(case), repeat)
        ours_cell = f"{t_ours:.3f} s = {t_ours / t_grad:.0f} grads"
    else:
        missing = ", ".join(op.replace("Backward", "")[:-1] for op in _ops(case))
        ours_cell = f"exact fallback (no rule: {missing})"
    t_rows, timed = hvp_rows_seconds(case, rows)
    rows_cell = (
        f"{t_rows:.1f} s = {t_rows / t_grad:.0f} grads (extrapolated, {timed} rows)"
    )
    return [
        name,
        f"{n:,}",
        method,
        f"{t_grad * 1e3:.1f} ms",
        ours_cell,
        rows_cell,
        backpack_seconds(name, dtype),
    ]


def _ops(case) -> list[str]:
    return sorted(
        {op.split(" ")[0] for op in unsupported_ops(case.loss(), case.params)}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="*", default=list(BUILDERS), choices=[*BUILDERS, *LARGE]
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--rows", type=int, default=20, help="HVP rows timed")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if backpack is None:
        print("BackPACK left out: not importable here (run `make backpack-venv`).")
    rows = [run(name, dtype, args.rows, args.repeat) for name in args.models]
    header = ["model", "params", "method", "gradient", "ours", "HVP rows", "BackPACK"]
    print(f"{machine()}; {args.dtype}; threads {torch.get_num_threads()}\n")
    print(table(rows, header))


if __name__ == "__main__":
    main()
