"""Curvature over a dataset against the dense float64 Hessian of the full-batch loss,
and 2 gloo processes on 127.0.0.1 against 1 process."""

from __future__ import annotations

import os
import socket
import time
import traceback
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils.data import DataLoader, Subset, TensorDataset

from gradgraph import Curvature
from tests.reference import dense_hessian

SAMPLES, BATCH = 11, 4  # batches of 4, 4, 3: the last one is uneven


def regression():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(SAMPLES, 3).double(), torch.randn(SAMPLES, 2).double()
    return model, F.mse_loss, TensorDataset(x, y)


def classification():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.GELU(), nn.Linear(5, 3)).double()
    x, y = torch.randn(SAMPLES, 3).double(), torch.randint(0, 3, (SAMPLES,))
    return model, F.cross_entropy, TensorDataset(x, y)


PROBLEMS = {"regression": regression, "classification": classification}


def full_batch_hessian(model, loss_fn, dataset) -> torch.Tensor:
    x, y = dataset.tensors
    return dense_hessian(model, lambda out: loss_fn(out, y), x)


def flat(values) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in values.values()])


@pytest.fixture(params=sorted(PROBLEMS))
def problem(request):
    model, loss_fn, dataset = PROBLEMS[request.param]()
    truth = full_batch_hessian(model, loss_fn, dataset)
    loader = DataLoader(dataset, batch_size=BATCH)
    return Curvature(model, loss_fn, loader, progress=False), truth, model, dataset


def test_hvp_gradient_and_loss_equal_full_batch(problem):
    curv, truth, model, dataset = problem
    assert [len(b[0]) for b in curv.data] == [4, 4, 3]
    torch.manual_seed(5)
    v = torch.randn(curv.dim, dtype=torch.float64)
    hv = curv.hvp(v)
    assert list(hv) == [n for n, _ in model.named_parameters()]
    assert_close(flat(hv), truth @ v)
    x, y = dataset.tensors
    full = curv.loss_fn(model(x), y)
    assert curv.loss() == pytest.approx(full.item(), rel=1e-12)
    expected = torch.autograd.grad(full, list(model.parameters()))
    assert_close(flat(curv.gradient()), torch.cat([g.reshape(-1) for g in expected]))
    block = torch.randn(curv.dim, 3, dtype=torch.float64)
    assert_close(curv.matmat(block), truth @ block)


def test_operator_is_the_hessian(problem):
    curv, truth, _, _ = problem
    op = curv.operator()
    assert op.shape == (curv.dim, curv.dim)
    dense = op @ np.eye(curv.dim)
    assert_close(torch.from_numpy(dense), truth)
    x = np.arange(curv.dim, dtype=np.float64)
    assert_close(torch.from_numpy(op.matvec(x)), truth @ torch.from_numpy(x))


# ---- 2 gloo processes on 127.0.0.1 -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantities(curv: Curvature) -> dict[str, torch.Tensor]:
    """Everything Curvature computes, as tensors (the same calls on every rank)."""
    torch.manual_seed(5)
    v = torch.randn(curv.dim, dtype=torch.float64)
    return {
        "loss": torch.tensor(curv.loss()),
        "gradient": flat(curv.gradient()),
        "hvp": flat(curv.hvp(v)),
    }


def shard(dataset, rank: int, world_size: int) -> DataLoader:
    """Every world_size-th sample from rank on (no padding, unlike DistributedSampler)."""
    return DataLoader(
        Subset(dataset, range(rank, len(dataset), world_size)), batch_size=2
    )


def worker(rank: int, world_size: int, port: int, mode: str, out: str) -> None:
    """One rank: the quantities of its shard, then (mode "die"/"hang") a peer failure."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    result: dict = {}
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=20),
        )
        model, loss_fn, dataset = regression()
        curv = Curvature(
            model, loss_fn, shard(dataset, rank, world_size), progress=False
        )
        result["quantities"] = quantities(curv)
        if mode != "equal":
            calls = []

            def failing_loss(out, target):
                calls.append(1)
                if rank == 1 and len(calls) == 2:  # mid-pass, after one batch
                    if mode == "die":
                        os._exit(3)
                    time.sleep(60)
                return loss_fn(out, target)

            failing = Curvature(
                model,
                failing_loss,
                shard(dataset, rank, world_size),
                progress=False,
                timeout=2.0,
            )
            start = time.monotonic()
            try:
                failing.hvp(torch.ones(curv.dim, dtype=torch.float64))
                result["error"] = None
            except RuntimeError as exc:
                result["error"] = str(exc)
            result["seconds"] = time.monotonic() - start
        else:
            dist.destroy_process_group()
    except BaseException:
        result["traceback"] = traceback.format_exc()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    os._exit(0)  # leave without tearing down a group whose peer is gone


def run_ranks(mode: str, tmp_path, world_size: int = 2) -> list[dict]:
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=worker, args=(r, world_size, port, mode, str(tmp_path)))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    try:
        procs[0].join(timeout=90)
        assert procs[0].exitcode == 0, "rank 0 did not finish within 90 s"
    finally:
        for p in procs[1:]:
            p.join(timeout=0 if mode == "hang" else 30)
            if p.is_alive():
                p.kill()
                p.join()
    results = []
    for r in range(world_size):
        path = tmp_path / f"rank{r}.pt"
        if not path.exists():
            results.append(None)
            continue
        res = torch.load(path)
        assert "traceback" not in res, res.get("traceback")
        results.append(res)
    return results


def test_two_gloo_processes_equal_one_process(tmp_path):
    ranks = run_ranks("equal", tmp_path)
    model, loss_fn, dataset = regression()
    one = quantities(
        Curvature(model, loss_fn, DataLoader(dataset, batch_size=BATCH), progress=False)
    )
    for res in ranks:
        for name, value in one.items():
            assert_close(res["quantities"][name], value, msg=name)


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_failed_peer_makes_the_others_fail_clearly(tmp_path, mode):
    ranks = run_ranks(mode, tmp_path)
    rank0 = ranks[0]
    assert rank0["error"] is not None, "rank 0 returned although rank 1 failed"
    assert "rank 0 of 2" in rank0["error"]
    assert "a peer rank died" in rank0["error"]
    assert rank0["seconds"] < 2.0 + 3.0  # the 2 s timeout, with slack for a busy CPU
    assert ranks[1] is None  # rank 1 never got to write its result
