"""hessian, hessian_blocks and exact hessian_diagonal against the dense reference."""

from __future__ import annotations

import pytest
import torch

from gradgraph import hessian, hessian_blocks, hessian_diagonal
from gradgraph.derivatives import DIAGONAL_METHODS

from .cases_models import MODELS, seed_simple_net
from .model_reference import case_and_hessian, flat


@pytest.mark.parametrize("name", MODELS)
def test_dense_hessian_matches_reference(name):
    case, H = case_and_hessian(name)
    got = hessian(case.loss(), case.model, allow_unused=case.unused, progress=False)
    torch.testing.assert_close(got, H)


@pytest.mark.parametrize("name", MODELS)
def test_blocks_are_the_reference_diagonal_blocks(name):
    case, H = case_and_hessian(name)
    blocks = hessian_blocks(
        case.loss(), case.model, allow_unused=case.unused, progress=False
    )
    start = 0
    for pname, p in case.model.named_parameters():
        stop = start + p.numel()
        torch.testing.assert_close(blocks[pname], H[start:stop, start:stop])
        start = stop
    assert start == H.shape[0]


@pytest.mark.parametrize("name", MODELS)
def test_exact_diagonal_matches_reference(name):
    case, H = case_and_hessian(name)
    got = hessian_diagonal(
        case.loss(), case.model, allow_unused=case.unused, progress=False
    )
    assert list(got) == [n for n, _ in case.model.named_parameters()]
    torch.testing.assert_close(flat(got), torch.diagonal(H))


def test_batch_size_does_not_change_results():
    case, H = case_and_hessian("seed_simple_net")
    for batch_size in (1, 7, 1000):
        got = hessian(case.loss(), case.model, batch_size=batch_size, progress=False)
        torch.testing.assert_close(got, H)
        diag = hessian_diagonal(
            case.loss(), case.model, batch_size=batch_size, progress=False
        )
        torch.testing.assert_close(flat(diag), torch.diagonal(H))


def test_seed_notebook_section_computes_the_blocks():
    """The seed's loop (grad of each gradient entry w.r.t. its own parameter)."""
    case = seed_simple_net()
    loss = case.loss()
    blocks = hessian_blocks(loss, case.model, progress=False)
    for name, param in case.model.named_parameters():
        (jaco,) = torch.autograd.grad(loss, param, create_graph=True)
        rows = [
            torch.autograd.grad(j, param, retain_graph=True)[0].view(-1)
            for j in jaco.view(-1)
        ]
        torch.testing.assert_close(blocks[name], torch.stack(rows))


def test_forms_list_and_tensor():
    case, H = case_and_hessian("relu_mlp")
    params = list(case.model.parameters())
    diag = hessian_diagonal(case.loss(), params, progress=False)
    assert isinstance(diag, list) and len(diag) == len(params)
    torch.testing.assert_close(torch.cat([d.reshape(-1) for d in diag]), H.diag())
    w = params[0]
    block = hessian_blocks(case.loss(), w, progress=False)
    assert isinstance(block, torch.Tensor)
    torch.testing.assert_close(block, H[: w.numel(), : w.numel()])


def test_size_limit_refuses_and_can_be_raised():
    case, H = case_and_hessian("seed_simple_net")
    with pytest.raises(ValueError, match="max_size"):
        hessian(case.loss(), case.model, max_size=100)
    with pytest.raises(ValueError, match="max_size"):
        hessian_blocks(case.loss(), case.model, max_size=50)
    got = hessian(case.loss(), case.model, max_size=141, progress=False)
    torch.testing.assert_close(got, H)


def test_method_table_dispatch_and_unknown_method():
    case, H = case_and_hessian("gelu_mlp")
    assert set(DIAGONAL_METHODS) == {"exact", "rows", "propagate"}
    for method in DIAGONAL_METHODS:
        got = hessian_diagonal(case.loss(), case.model, method=method, progress=False)
        torch.testing.assert_close(flat(got), H.diag())
    with pytest.raises(ValueError, match="choose one of"):
        hessian_diagonal(case.loss(), case.model, method="magic")


def test_bad_inputs():
    case = MODELS["unused_parameter"]()
    loss = case.loss()
    with pytest.raises(ValueError, match="allow_unused"):
        hessian(loss, case.model)
    with pytest.raises(ValueError, match="allow_unused"):
        hessian_diagonal(loss, case.model)
    blocks = hessian_blocks(loss, case.model, allow_unused=True, progress=False)
    assert torch.equal(blocks["spare"], torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="scalar"):
        hessian(case.model(case.inputs), case.model)
    frozen = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="requires_grad"):
        hessian_diagonal(loss, [frozen])
    with pytest.raises(ValueError, match="batch_size"):
        hessian(loss, case.model.net, batch_size=0)
    loss.backward()
    with pytest.raises(ValueError, match="retain_graph"):
        hessian_diagonal(loss, case.model.net, progress=False)
