"""Exact Hessian diagonal: our propagation vs BackPACK DiagHessian vs the seed loop.

The seed notebook's task (y = f(x) on 1000 points of [-10, 10], MSE, float32)
with wider nets: 1-64-64-64-1 (8,513 parameters) and 1-160-160-160-1 (51,841),
Tanh and GELU. Same process, same models, same data for every method:

* ours: ``propagated_hessian_diagonal`` (forward + propagation);
* BackPACK: ``DiagHessian`` (forward + backward with the extension); it refuses
  GELU, so those rows say so;
* seed loop: the notebook's per-element double backward (one backward per
  parameter); timed on the first 300 elements per tensor and scaled to all of
  them (marked "extrapolated"; ``--full-seed-up-to 10000`` runs the whole loop
  on the 8k nets, about a minute each).

A small CNN (Conv2d 1->16, act, MaxPool, Conv2d 16->32, act, MaxPool,
Flatten, Linear 512->10; 9,930 parameters; 1x16x16 inputs, float32,
cross-entropy; ReLU with 128 inputs, Tanh with 8, whose residual terms
carry one column per activation) compares ours with the exact-HVP-rows fallback that
``hessian_diagonal(method="auto")`` used before convolution and pooling had
rules (``method="exact"``, timed once), and with BackPACK; ``--nets cnn``
runs only these rows.

``--nets norm`` runs the same comparison on normalization layers: an MLP
(16-64-64-10, LayerNorm + Tanh after each hidden Linear, batch 64,
cross-entropy; 6,154 parameters) and the CNN above with BatchNorm2d (eval
mode, running statistics) after each convolution, ReLU, batch 16 (10,026
parameters). BackPACK's DiagHessian has no extension for either norm layer;
the rows say so.

Peak memory is the growth of the peak resident set size (VmHWM, reset just
before the call) of a fresh process that runs the method once after building
the model and data (``--peak``; Linux).

BackPACK needs torchvision, which does not install beside torch 2.13; run this
script in the separate venv ``make backpack-venv`` creates (torch 2.14.1,
torchvision 0.29.1): ``.venv-backpack/bin/python benchmarks/bench_diagonal.py``.
In the project venv the BackPACK column reads "not installed".
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time

import torch
import torch.nn as nn
from common import best_of, machine, table

from gradgraph.derivatives import hessian_diagonal
from gradgraph.derivatives.propagation import (
    diagonal_method,
    propagated_hessian_diagonal,
)

try:
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian
except ImportError:  # the project venv: torch 2.13 has no torchvision for BackPACK
    backpack = None

CASES = {
    "tanh-8k": (nn.Tanh, 64),
    "gelu-8k": (nn.GELU, 64),
    "tanh-52k": (nn.Tanh, 160),
    "gelu-52k": (nn.GELU, 160),
}
CNN_CASES = {  # activation, batch size
    "cnn-relu-10k": (nn.ReLU, 128),
    "cnn-tanh-10k": (nn.Tanh, 8),  # Tanh's own curvature: 6k columns per sample
}
NORM_CASES = {  # the norm layer after each hidden layer, batch size
    "ln-mlp-6k": ("layer", 64),
    "bn-cnn-eval-10k": ("batch", 16),
}
SEED_SAMPLE = 300  # elements per tensor timed when the full seed loop is too long


def build(case: str):
    if case in CNN_CASES:
        return build_cnn(case)
    if case in NORM_CASES:
        return build_norm(case)
    act, width = CASES[case]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(1, width),
        act(),
        nn.Linear(width, width),
        act(),
        nn.Linear(width, width),
        act(),
        nn.Linear(width, 1),
    )
    x = torch.linspace(-10, 10, 1000).view(-1, 1)
    y = 2 * x + 3 + torch.sin(x) * 3 * x.abs().sqrt() + torch.cos(x + 3)
    return model, x, y


def build_cnn(case: str, norm: bool = False):
    """Two conv layers on 1x16x16 inputs, ten classes (labels: ``y``).

    ``norm``: BatchNorm2d after each convolution, in eval mode.
    """
    act, batch = (nn.ReLU, NORM_CASES[case][1]) if norm else CNN_CASES[case]
    torch.manual_seed(0)
    layers = []
    for cin, cout in ((1, 16), (16, 32)):
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        layers += [act(), nn.MaxPool2d(2)]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    if norm:  # running statistics as after some training
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        model.eval()
    x = torch.randn(batch, 1, 16, 16)
    y = torch.randint(0, 10, (batch,))
    return model, x, y


def build_norm(case: str):
    kind, batch = NORM_CASES[case]
    if kind == "batch":
        return build_cnn(case, norm=True)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 64),
        nn.LayerNorm(64),
        nn.Tanh(),
        nn.Linear(64, 64),
        nn.LayerNorm(64),
        nn.Tanh(),
        nn.Linear(64, 10),
    )
    x = torch.randn(batch, 16)
    y = torch.randint(0, 10, (batch,))
    return model, x, y


def loss_fn(y: torch.Tensor) -> nn.Module:
    """Cross-entropy for class labels, else MSE."""
    return nn.CrossEntropyLoss() if y.dtype == torch.long else nn.MSELoss()


def ours(model, x, y):
    loss = loss_fn(y)(model(x), y)
    return propagated_hessian_diagonal(loss, model)


def fallback(model, x, y):
    """The exact HVP rows (what ``auto`` falls back to without rules)."""
    loss = loss_fn(y)(model(x), y)
    return hessian_diagonal(loss, model, method="exact", progress=False)


def backpack_model(model):
    """A BackPACK-extended copy (extend() adds hooks; the original stays plain)."""
    return extend(copy.deepcopy(model))


def backpack_diag(model, x, y):
    """``model`` must come from :func:`backpack_model`."""
    loss = extend(loss_fn(y))(model(x), y)
    with backpack(DiagHessian()):
        loss.backward()
    out = {n: p.diag_h.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
        del p.diag_h
    return out


def backpack_refusal(model, x, y) -> str:
    """The layer BackPACK's DiagHessian has no extension for ("" if none)."""
    if backpack is None:
        return ""
    try:
        backpack_diag(backpack_model(model), x, y)
    except NotImplementedError as exc:
        return str(exc).rsplit(".", 1)[-1].strip("'>")
    return ""


def seed_loop(model, x, y, limit=None):
    """The notebook's loop: one backward per diagonal element (``limit`` per tensor).

    Like the notebook it iterates over the whole ``jaco.view(-1)`` (one
    ``unbind``, whose backward costs O(numel) per element) and stops after
    ``limit`` elements, so a sampled run costs the same per element as the
    full loop.
    """
    loss = nn.functional.mse_loss(model(x), y)
    out = {}
    for name, param in model.named_parameters():
        (jaco,) = torch.autograd.grad(loss, param, create_graph=True)
        rows = [
            torch.autograd.grad(j, param, retain_graph=True)[0].view(-1)
            for j, _ in zip(jaco.view(-1), range(limit or jaco.numel()), strict=False)
        ]
        out[name] = torch.stack([r[i] for i, r in enumerate(rows)])
    return out


METHODS = {
    "ours": ours,
    "backpack": backpack_diag,
    "seed": seed_loop,
    "fallback": fallback,
}


def peak_mib(method: str, case: str) -> float:
    """Peak RSS growth (MiB) of a fresh process running ``method`` once on ``case``."""
    code = subprocess.run(
        [sys.executable, __file__, "--peak", method, case],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(code.stdout.strip().splitlines()[-1])


def _peak_child(method: str, case: str) -> None:
    model, x, y = build(case)
    fn = METHODS[method]
    if method == "backpack":
        model = backpack_model(model)
    kwargs = {"limit": SEED_SAMPLE} if method == "seed" else {}
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    fn(model, x, y, **kwargs)
    print((_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def time_seed(model, x, y, full: bool) -> tuple[float, str]:
    if full:
        start = time.perf_counter()
        seed_loop(model, x, y)
        return time.perf_counter() - start, ""
    start = time.perf_counter()
    seed_loop(model, x, y, limit=SEED_SAMPLE)
    elapsed = time.perf_counter() - start
    done = sum(min(p.numel(), SEED_SAMPLE) for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    return elapsed * total / done, " (extrapolated)"


def max_rel(a: dict, b: dict) -> float:
    return max(
        ((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-30)).item()
        for n in a
    )


def mlp_rows(full_seed_up_to: int) -> list[list[str]]:
    rows = []
    for case in CASES:
        model, x, y = build(case)
        n = sum(p.numel() for p in model.parameters())
        t_ours = best_of(lambda m=model, x=x, y=y: ours(m, x, y), repeat=3)
        ref = ours(model, x, y)
        mem_ours = peak_mib("ours", case)
        bp, mem_bp, agree = "refuses (GELU)", "-", ""
        if backpack is None:
            bp = "not installed"
        elif "gelu" not in case:
            bmodel = backpack_model(model)
            t_bp = best_of(lambda m=bmodel, x=x, y=y: backpack_diag(m, x, y), repeat=3)
            agree = f"{max_rel(ref, backpack_diag(bmodel, x, y)):.1e}"
            bp = f"{t_bp:.3f} s ({t_ours / t_bp:.2f}x)"
            mem_bp = f"{peak_mib('backpack', case):.0f}"
        t_seed, note = time_seed(model, x, y, full=n <= full_seed_up_to)
        rows.append(
            [
                case,
                f"{n:,}",
                f"{t_ours:.3f} s",
                bp,
                f"{t_seed:.1f} s{note}",
                f"{t_seed / t_ours:.0f}x",
                f"{mem_ours:.0f}",
                mem_bp,
                agree,
            ]
        )
    return rows


def fallback_rows(cases: dict) -> list[list[str]]:
    """Ours vs the exact-HVP-rows fallback (and BackPACK) on ``cases``."""
    rows = []
    for case in cases:
        model, x, y = build(case)
        n = sum(p.numel() for p in model.parameters())
        method = diagonal_method(loss_fn(y)(model(x), y), model)
        t_ours = best_of(lambda m=model, x=x, y=y: ours(m, x, y), repeat=5)
        ref = ours(model, x, y)
        start = time.perf_counter()
        rows_result = fallback(model, x, y)
        t_rows = time.perf_counter() - start
        bp, mem_bp, agree = "not installed", "-", ""
        refusal = backpack_refusal(model, x, y)
        if refusal:
            bp = f"refuses ({refusal})"
        elif backpack is not None:
            bmodel = backpack_model(model)
            t_bp = best_of(lambda m=bmodel, x=x, y=y: backpack_diag(m, x, y), repeat=5)
            agree = f"{max_rel(ref, backpack_diag(bmodel, x, y)):.1e}"
            bp = f"{t_bp:.3f} s ({t_ours / t_bp:.2f}x)"
            mem_bp = f"{peak_mib('backpack', case):.0f}"
        rows.append(
            [
                case,
                f"{n:,}",
                method,
                f"{t_ours:.3f} s",
                f"{t_rows:.1f} s ({t_rows / t_ours:.0f}x)",
                bp,
                f"{peak_mib('ours', case):.0f}",
                mem_bp,
                f"{max_rel(ref, rows_result):.1e}",
                agree,
            ]
        )
    return rows


def main(full_seed_up_to: int, nets: str) -> None:
    print(machine())
    if nets in ("all", "mlp"):
        print(
            table(
                mlp_rows(full_seed_up_to),
                [
                    "net",
                    "params",
                    "ours",
                    "BackPACK (ours/BackPACK)",
                    "seed loop",
                    "seed/ours",
                    "peak MiB ours",
                    "peak MiB BackPACK",
                    "max rel diff vs BackPACK",
                ],
            )
        )
    for name, cases in (("cnn", CNN_CASES), ("norm", NORM_CASES)):
        if nets not in ("all", name):
            continue
        print()
        print(
            table(
                fallback_rows(cases),
                [
                    "net",
                    "params",
                    "auto uses",
                    "ours",
                    "exact HVP rows (rows/ours)",
                    "BackPACK (ours/BackPACK)",
                    "peak MiB ours",
                    "peak MiB BackPACK",
                    "max rel diff vs rows",
                    "max rel diff vs BackPACK",
                ],
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", nargs=2, metavar=("METHOD", "CASE"))
    parser.add_argument(
        "--full-seed-up-to",
        type=int,
        default=0,
        help="run the whole seed loop for nets up to this many parameters",
    )
    parser.add_argument("--nets", choices=["all", "mlp", "cnn", "norm"], default="all")
    args = parser.parse_args()
    if args.peak:
        _peak_child(*args.peak)
    else:
        main(args.full_seed_up_to, args.nets)
