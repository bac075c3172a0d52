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
