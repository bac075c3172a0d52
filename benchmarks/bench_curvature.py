"""Curvature over a dataset: memory and time as the data grows, 1 process vs 2.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_curvature.py``.

1. Peak memory and time of one ``Curvature.hvp`` pass as the dataset grows
   10x (batches made on the fly, so the data itself takes no memory), next to
   the peer a user writes without Curvature: one HVP of the full-batch loss,
   whose graph holds every sample's activations at once. Each size runs in a
   fresh process and reports its peak RSS (``ru_maxrss``) above the RSS it had
   before the call.
2. ``Curvature.trace(method="hutchinson")`` on a compute-bound MLP: 1 process
   vs 2 gloo processes on 127.0.0.1 (each with half the data), same total work.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from common import machine, table

from gradgraph import Curvature, hvp

BATCH, WIDTH = 512, 256


class Batches:
    """``count`` (inputs, targets) batches, made from their index when asked."""

    def __init__(self, count: int, width: int = WIDTH, start: int = 0, step: int = 1):
        self.count, self.width, self.start, self.step = count, width, start, step

    def __iter__(self):
        for i in range(self.start, self.count, self.step):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(BATCH, self.width, generator=g)
            yield x, torch.randint(0, 10, (BATCH,), generator=g)


def mlp(width: int = WIDTH) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, 10),
    )  # fmt: skip


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(how: str, count: int) -> dict:
    """One size, in a fresh process: peak MB above the RSS before, and seconds."""
    torch.set_num_threads(1)
    model = mlp()
    v = [torch.randn_like(p) for p in model.parameters()]
    data = Batches(count)
    if how == "full":  # the whole dataset's graph at once
        x, y = map(torch.cat, zip(*data, strict=True))
    before = rss_mb()
    times = []
    for _ in range(2):  # the faster of 2 runs; the peak is the same for both
        start = time.perf_counter()
        if how == "curvature":
            Curvature(model, F.cross_entropy, data, progress=False).hvp(v)
        else:
            loss = F.cross_entropy(model(x), y)
            hvp(loss, model, dict(zip(dict(model.named_parameters()), v, strict=True)))
            del loss
        times.append(time.perf_counter() - start)
    seconds = min(times)
    return {"extra_mb": peak_mb() - before, "seconds": seconds}


def measure(how: str, count: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", how, str(count)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, world: int, port: int, count: int, threads: int, queue):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=timedelta(seconds=120),
    )  # fmt: skip
    curv = Curvature(
        mlp(1024), F.cross_entropy, Batches(count, 1024, rank, world), progress=False
    )
    curv.trace(method="hutchinson", matvecs=1, seed=0)  # warm-up
    times = []
    for _ in range(2):
        dist.barrier()
        start = time.perf_counter()
        value = float(curv.trace(method="hutchinson", matvecs=2, seed=0))
        times.append(time.perf_counter() - start)
    if rank == 0:
        queue.put((min(times), value))
    dist.destroy_process_group()


def distributed(world: int, threads: int, count: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=rank_main, args=(r, world, port, count, threads, queue))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    result = queue.get(timeout=600)
    for p in procs:
        p.join()
    return result


def main() -> None:
    print(f"machine: {machine()}\n")
    rows = []
    small, large = 8, 80
    for how, label in (("curvature", "Curvature.hvp"), ("full", "full-batch hvp")):
        a, b = measure(how, small), measure(how, large)
        rows.append(
            [
                label,
                f"{a['extra_mb']:.1f}",
                f"{b['extra_mb']:.1f}",
                f"{b['extra_mb'] / max(a['extra_mb'], 1e-9):.2f}x",
                f"{a['seconds']:.2f}",
                f"{b['seconds']:.2f}",
                f"{b['seconds'] / a['seconds']:.1f}x",
            ]
        )
    print(
        f"One HVP of the mean loss, MLP {WIDTH}-{WIDTH}-{WIDTH}-10 "
        f"({sum(p.numel() for p in mlp().parameters()):,} params), batches of "
        f"{BATCH}, {small} vs {large} batches (10x data), 1 thread"
    )
    print(
        table(
            rows,
            [
                "",
                f"peak MB ({small})",
                f"peak MB ({large})",
                "memory ratio",
                f"s ({small})",
                f"s ({large})",
                "time ratio",
            ],
        )
    )

    count = 8
    one_2t, value1 = distributed(1, 2, count)
    one_1t, _ = distributed(1, 1, count)
    two, value2 = distributed(2, 1, count)
    assert abs(value1 - value2) <= 1e-4 * abs(value1), (value1, value2)
    print(
        f"\nHutchinson trace (2 probes, each a pass over {count} batches of {BATCH}) "
        "of an MLP 1024-1024-1024-10, gloo on 127.0.0.1"
    )
    print(
        table(
            [
                ["1 process, 2 threads", f"{one_2t:.2f}", "1.00x"],
                ["1 process, 1 thread", f"{one_1t:.2f}", f"{one_2t / one_1t:.2f}x"],
                ["2 processes, 1 thread each", f"{two:.2f}", f"{one_2t / two:.2f}x"],
            ],
            ["", "seconds", "speed vs 1 process, 2 threads"],
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child_memory(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
