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
from gradgraph.derivatives import (
    diagonal_estimate,
    operator,
    spectral_density,
    trace_estimate,
)
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


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_exact_diagonal_and_trace_equal_full_batch(problem):
    curv, truth, _, _ = problem
    assert_close(flat(curv.diagonal(method="exact")), truth.diagonal())
    assert curv.trace().item() == pytest.approx(truth.trace().item(), rel=1e-12)


@pytest.mark.parametrize(
    ("quantity", "method"),
    [
        ("diagonal", "hutchinson"),
        ("diagonal", "xdiag"),
        ("trace", "hutchinson"),
        ("trace", "hutch++"),
        ("trace", "xtrace"),
    ],
)
def test_estimators_see_the_full_batch_hessian(problem, quantity, method):
    """With the same seed, an estimator over the DataLoader gives what it gives on
    the dense full-batch Hessian: the same probes meet the same operator."""
    curv, truth, _, _ = problem
    estimate = {"diagonal": diagonal_estimate, "trace": trace_estimate}[quantity]
    expected = estimate(
        lambda v: truth @ v, curv.dim, method=method, matvecs=12, seed=7
    )
    got = getattr(curv, quantity)(method=method, matvecs=12, seed=7)
    got = flat(got) if quantity == "diagonal" else got
    assert_close(got, expected)


def test_eigenvalues_and_density_of_the_full_batch_hessian(problem):
    curv, truth, model, _ = problem
    values, vectors = curv.eigenvalues(k=3, which="LM", seed=0)
    exact = torch.linalg.eigvalsh(truth)
    assert_close(values, exact[exact.abs().argsort(descending=True)[:3]])
    assert len(vectors) == 3
    for value, vector in zip(values, vectors, strict=True):
        assert list(vector) == [n for n, _ in model.named_parameters()]
        y = flat(vector)
        assert_close(truth @ y, value * y, atol=1e-6, rtol=1e-6)
    density = curv.density(probes=3, steps=6, seed=2)
    peer = spectral_density(lambda v: truth @ v, curv.dim, probes=3, steps=6, seed=2)
    assert_close(density.nodes, peer.nodes)
    assert_close(density.weights, peer.weights)
    assert density.moment(1).item() == pytest.approx(
        truth.trace().item() / curv.dim, rel=0.5
    )


def test_operator_is_the_hessian(problem):
    curv, truth, _, _ = problem
    op = curv.operator()
    assert op.shape == (curv.dim, curv.dim)
    dense = op @ np.eye(curv.dim)
    assert_close(torch.from_numpy(dense), truth)
    x = np.arange(curv.dim, dtype=np.float64)
    assert_close(torch.from_numpy(op.matvec(x)), truth @ torch.from_numpy(x))


# ---- 2 gloo processes on 127.0.0.1 -------------------------------------------------


PEER_TIMEOUT_S = 2.0  # Curvature(timeout=): how long a rank waits for its peers
GROUP_TIMEOUT_S = 300  # the process group's own: start-up on a busy machine is slow
HANG_S = 3600  # a hung rank sleeps this long (it is killed): a real hang
RUN_LIMIT_S = 600  # limit on a whole run, spawn and imports included: catches hangs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantities(curv: Curvature) -> dict[str, torch.Tensor]:
    """Everything Curvature computes, as tensors (the same calls on every rank)."""
    torch.manual_seed(5)
    v = torch.randn(curv.dim, dtype=torch.float64)
    return {
        "loss": torch.tensor(curv.loss(), dtype=torch.float64),
        "gradient": flat(curv.gradient()),
        "hvp": flat(curv.hvp(v)),
        "diagonal": flat(curv.diagonal()),
        "trace": curv.trace(),
        "xdiag": flat(curv.diagonal(method="xdiag", matvecs=8, seed=3)),
        "hutchinson": curv.trace(method="hutchinson", matvecs=4, seed=3),
        "eigenvalues": curv.eigenvalues(k=2, seed=4)[0],
        "density": curv.density(probes=2, steps=4, seed=5).nodes,
    }


def shard(dataset, rank: int, world_size: int) -> DataLoader:
    """Every world_size-th sample from ``rank`` on (no padding, unlike
    DistributedSampler, which repeats samples to even out the shards)."""
    return DataLoader(
        Subset(dataset, range(rank, len(dataset), world_size)), batch_size=2
    )


def worker(rank: int, world_size: int, port: int, mode: str, out: str) -> None:
    """One rank. Mode "die": the quantities of its shard (saved), then rank 1 dies
    mid-pass; mode "hang": rank 1 hangs mid-pass (it sleeps far past any limit
    here and is killed). Rank 0 records the error it got and how long it waited."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    result: dict = {}
    path = os.path.join(out, f"rank{rank}.pt")
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=GROUP_TIMEOUT_S),
        )
        model, loss_fn, dataset = regression()
        loader = shard(dataset, rank, world_size)
        if mode == "die":
            result["quantities"] = quantities(
                Curvature(model, loss_fn, loader, progress=False)
            )
            torch.save(result, path)
        calls = []

        def failing_loss(out, target):
            calls.append(1)
            if rank == 1 and len(calls) == 2:  # mid-pass, after one batch
                if mode == "die":
                    os._exit(3)
                time.sleep(HANG_S)
            return loss_fn(out, target)

        failing = Curvature(
            model, failing_loss, loader, progress=False, timeout=PEER_TIMEOUT_S
        )
        start = time.monotonic()
        try:
            failing.hvp(torch.ones(failing.dim, dtype=torch.float64))
            result["error"] = None
        except RuntimeError as exc:
            result["error"] = str(exc)
        result["seconds"] = time.monotonic() - start
    except BaseException:
        result["traceback"] = traceback.format_exc()
    torch.save(result, path)
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
        procs[0].join(timeout=RUN_LIMIT_S)
        assert procs[0].exitcode == 0, f"rank 0 hung: not done after {RUN_LIMIT_S} s"
    finally:
        for p in procs[1:]:
            p.join(timeout=0 if mode == "hang" else 30)
            if p.is_alive():
                p.kill()
                p.join()
    results = []
    for r in range(world_size):
        path = tmp_path / f"rank{r}.pt"
        res = torch.load(path) if path.exists() else {}
        assert "traceback" not in res, res.get("traceback")
        results.append(res)
    return results


@pytest.fixture(scope="module")
def die_run(tmp_path_factory):
    """One 2-rank run: every quantity on both ranks, then rank 1 dies mid-pass."""
    return run_ranks("die", tmp_path_factory.mktemp("die"))


def test_two_gloo_processes_equal_one_process(die_run):
    model, loss_fn, dataset = regression()
    loader = DataLoader(dataset, batch_size=BATCH)
    one = quantities(Curvature(model, loss_fn, loader, progress=False))
    assert set(die_run[0]["quantities"]) == set(one)
    for rank in die_run:
        for name, value in one.items():
            assert_close(rank["quantities"][name], value, msg=name)


def check_peer_failure(ranks) -> None:
    """Rank 0 raised (it did not hang, nor return a number without its peer), its
    error says which rank it is and that a peer failed, and rank 1 never finished.
    The only time limit catches a hang: the peer timeout plus three minutes,
    below the group timeout a hang would wait for and far below the HANG_S that
    rank 1 sleeps."""
    rank0 = ranks[0]
    assert rank0["error"] is not None, "rank 0 returned although rank 1 failed"
    assert "rank 0 of 2" in rank0["error"]
    assert "a peer rank died" in rank0["error"]
    assert rank0["seconds"] < PEER_TIMEOUT_S + 180, "rank 0 waited like a hang"
    assert "error" not in ranks[1]  # rank 1 never got past the failure


def test_a_dead_peer_makes_the_others_fail_clearly(die_run):
    check_peer_failure(die_run)  # gloo sees the closed socket


def test_a_hung_peer_makes_the_others_fail_after_the_timeout(tmp_path):
    ranks = run_ranks("hang", tmp_path)
    check_peer_failure(ranks)
    assert ranks[0]["seconds"] >= PEER_TIMEOUT_S - 0.1  # it did wait for the peer
    assert f"within {PEER_TIMEOUT_S:g} s" in ranks[0]["error"]


# ---- bad input, state left as it was -----------------------------------------------


def test_a_non_scalar_loss_is_refused():
    model, _, dataset = regression()

    def per_sample(out, y):
        return F.mse_loss(out, y, reduction="none")

    curv = Curvature(model, per_sample, DataLoader(dataset, batch_size=4))
    with pytest.raises(ValueError, match=r"batch 0: loss_fn.*scalar.*shape \(4, 2\)"):
        curv.trace()


def test_an_empty_data_loader_is_refused():
    model, loss_fn, _ = regression()
    empty = TensorDataset(torch.zeros(0, 3).double(), torch.zeros(0, 2).double())
    for data in (DataLoader(empty, batch_size=4), []):
        curv = Curvature(model, loss_fn, data, progress=False)
        with pytest.raises(ValueError, match="no samples"):
            curv.hvp(torch.zeros(curv.dim, dtype=torch.float64))


def test_batches_that_do_not_fit_the_model_are_refused():
    model, loss_fn, _ = regression()
    wide = [(torch.randn(4, 5).double(), torch.randn(4, 2).double())]
    with pytest.raises(ValueError, match=r"batch 0: the model rejected .*\(4, 5\)"):
        Curvature(model, loss_fn, wide, progress=False).trace()
    short = [(torch.randn(4, 3).double(), torch.randn(3, 2).double())]
    with pytest.raises(ValueError, match=r"batch 0 has 4 inputs but targets.*\(3, 2\)"):
        Curvature(model, loss_fn, short, progress=False).trace()
    classes = [(torch.randn(4, 3).double(), torch.tensor([0, 1, 2, 3]))]
    with pytest.raises(ValueError, match=r"batch 0: loss_fn rejected .*\(4, 2\)"):
        Curvature(model, F.cross_entropy, classes, progress=False).loss()
    floats = [(torch.randn(4, 3), torch.randn(4, 2))]  # float32 into a float64 model
    with pytest.raises(ValueError, match="batch 0: the model rejected"):
        Curvature(model, loss_fn, floats, progress=False).loss()
    with pytest.raises(TypeError, match=r"batch 0 .*\(inputs, targets\) pairs"):
        Curvature(model, loss_fn, [torch.randn(4, 3)], progress=False).loss()


def test_bad_arguments_are_refused():
    model, loss_fn, dataset = regression()
    loader = DataLoader(dataset, batch_size=4)
    with pytest.raises(TypeError, match="one-shot iterator"):
        Curvature(model, loss_fn, (b for b in loader))
    with pytest.raises(TypeError, match="iterable of"):
        Curvature(model, loss_fn, 3)
    with pytest.raises(TypeError, match="params is required"):
        Curvature(lambda x: x, loss_fn, loader)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        Curvature(model, "mse", loader)
    with pytest.raises(ValueError, match="timeout"):
        Curvature(model, loss_fn, loader, timeout=0)
    curv = Curvature(model, loss_fn, loader, progress=False)
    with pytest.raises(ValueError, match="flat vector of 26 entries"):
        curv.hvp(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown diagonal method"):
        curv.diagonal(method="nope")


def test_grad_mode_is_left_as_it_was_and_params_select_the_result_form():
    model, loss_fn, dataset = regression()
    loader = DataLoader(dataset, batch_size=4)
    first = model[0]
    curv = Curvature(model, loss_fn, loader, params=[first.weight], progress=False)
    x, y = dataset.tensors
    truth = torch.autograd.functional.hessian(
        lambda w: loss_fn(model[2](model[1](F.linear(x, w, first.bias))), y),
        first.weight.detach(),
    ).reshape(12, 12)
    v = torch.randn(3 * 4, dtype=torch.float64)
    with torch.no_grad():
        (hv,) = curv.hvp([v.view(4, 3)])
        assert not torch.is_grad_enabled()
    assert_close(hv.reshape(-1), truth @ v)
    bad = Curvature(model, loss_fn, [(torch.randn(4, 5).double(), x[:4])])
    with torch.no_grad(), pytest.raises(ValueError):
        bad.trace()
    assert torch.is_grad_enabled()


def test_the_progress_bar_goes_to_stderr_and_can_be_turned_off(capsys, monkeypatch):
    monkeypatch.setattr(operator, "PROGRESS_DELAY_S", 0.0)  # bars show after 2 s
    model, loss_fn, dataset = regression()
    loader = DataLoader(dataset, batch_size=4)
    Curvature(model, loss_fn, loader, progress=False).trace()
    assert capsys.readouterr().err == ""
    Curvature(model, loss_fn, loader).trace()
    captured = capsys.readouterr()
    assert "trace:" in captured.err and "/3 " in captured.err
    assert captured.out == ""


def test_the_example_runs_under_torchrun_with_two_processes(tmp_path):
    """examples/07 under ``torchrun --nproc_per_node=2`` (gloo, loopback): every rank
    asserts the global numbers against the dense full-batch Hessian."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "07_distributed_curvature.py"
    env = {**os.environ, "GRADGRAPH_OUT": str(tmp_path), "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += [f"--master_port={free_port()}", str(example)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / example.stem
    results = json.loads((out / "curvature.json").read_text())
    assert results["processes"] == 2 and results["parameters"] == 141
    assert (out / "density.svg").read_text().lstrip().startswith("<?xml")
