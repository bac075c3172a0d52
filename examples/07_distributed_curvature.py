"""7. Curvature of the seed's regression loss over a whole dataset, on 1 or N processes.

    python examples/07_distributed_curvature.py                          # 1 process
    torchrun --nproc_per_node=2 examples/07_distributed_curvature.py     # 2 (gloo, CPU)

The seed notebook's SimpleNet (1-10-10-1, Tanh) is fitted to its target
function; then ``Curvature`` goes through a DataLoader of 1,000 points in
batches of 128 (the last one has 104) and gives the Hessian quantities of the
MEAN loss over all of them. Under torchrun each rank takes every world-th
sample, and every rank gets the global numbers, which the script checks
against the dense float64 Hessian of the full-batch loss. The same code runs
nccl on GPUs (one per rank). Rank 0 writes curvature.json and density.svg
under $GRADGRAPH_OUT/07_distributed_curvature/ (default out/).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from gradgraph import Curvature

SAMPLES, BATCH = 1000, 128


def target_function(x: torch.Tensor) -> torch.Tensor:
    """The seed notebook's target."""
    return 2 * x + 3 + torch.sin(x) * 3 * torch.sqrt(x.abs()) + torch.cos(x + 3)


class SimpleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Sequential(
            nn.Linear(1, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 1)
        )

    def forward(self, x):
        return self.linear(x)


def start() -> tuple[int, int, torch.device]:
    """Join torchrun's process group when launched by it (RANK is set)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cpu")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    # a dead or hung peer makes the others fail after this timeout
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=60))
    return dist.get_rank(), dist.get_world_size(), device


def fitted_model(x, y, device) -> nn.Module:
    """The seed's training loop: plain gradient descent, learning rate 0.01."""
    torch.manual_seed(0)
    model = SimpleNet().double().to(device)
    for _ in range(500):
        loss = F.mse_loss(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= 0.01 * g
    if dist.is_initialized():  # every rank starts from rank 0's weights
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    return model


def dense_hessian(model, x, y) -> torch.Tensor:
    """The full-batch Hessian the slow obvious way, to check against."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        parts = dict(zip(names, theta.split([s.numel() for s in shapes]), strict=True))
        params = {n: parts[n].view(s) for n, s in zip(names, shapes, strict=True)}
        return F.mse_loss(torch.func.functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def main() -> None:
    rank, world, device = start()
    torch.set_num_threads(1)  # a tiny model: intra-op threads only add overhead
    x = torch.linspace(-10, 10, SAMPLES, dtype=torch.float64, device=device)[:, None]
    y = target_function(x)
    model = fitted_model(x, y, device)

    # each rank: every world-th sample (no repeats, unlike DistributedSampler)
    mine = Subset(TensorDataset(x, y), range(rank, SAMPLES, world))
    curv = Curvature(model, F.mse_loss, DataLoader(mine, batch_size=BATCH), timeout=30)
    results = {
        "processes": world,
        "parameters": curv.dim,
        "loss": curv.loss(),
        "trace": float(curv.trace()),
        "trace_xtrace_64": float(curv.trace(method="xtrace", matvecs=64, seed=0)),
        "top_eigenvalues": curv.eigenvalues(k=3, seed=0)[0].tolist(),
    }
    density = curv.density(probes=2, steps=20, seed=0)

    hessian = dense_hessian(model, x, y)
    exact = torch.linalg.eigvalsh(hessian)
    assert np.isclose(results["loss"], F.mse_loss(model(x), y).item(), rtol=1e-10)
    assert np.isclose(results["trace"], hessian.trace().item(), rtol=1e-10)
    assert np.allclose(results["top_eigenvalues"], exact[-3:].flip(0).tolist())
    assert abs(results["trace_xtrace_64"] / results["trace"] - 1) < 1e-2
    assert np.isclose(density.moment(1).item(), results["trace"] / curv.dim, rtol=0.5)

    if rank == 0:
        out = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
        out.mkdir(parents=True, exist_ok=True)
        (out / "curvature.json").write_text(json.dumps(results, indent=2) + "\n")
        import matplotlib

        matplotlib.use("Agg")
        ax = density.plot(sigma=2.0)
        ax.set_ylim(1e-6, 1.0)
        ax.set_title(f"Hessian spectral density, mean loss over {SAMPLES} points")
        ax.figure.savefig(out / "density.svg")
        for name, value in results.items():
            print(f"{name:16s} {value}")
        print(f"wrote {out / 'curvature.json'} and {out / 'density.svg'}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
