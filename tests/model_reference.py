"""Each model case with its dense float64 reference Hessian, built once per run."""

from __future__ import annotations

from functools import cache

import torch

from gradgraph import trace
from gradgraph.derivatives import hessian_diagonal
from gradgraph.derivatives.propagation import diagonal_method

from .cases_models import MODELS, ModelCase
from .reference import dense_hessian


@cache
def case_and_hessian(name: str) -> tuple[ModelCase, torch.Tensor]:
    case = MODELS[name]()
    return case, dense_hessian(case.model, case.loss_fn, case.inputs)


def flat(result: dict[str, torch.Tensor]) -> torch.Tensor:
    """A dict result (named_parameters order) as one flat vector."""
    return torch.cat([v.reshape(-1) for v in result.values()])


def assert_propagates_exactly(model, loss_of_output, inputs, op: str | None = None):
    """``model`` (float64) takes the propagation path and matches the dense Hessian.

    ``op``: a grad_fn name the loss's graph must contain, so the case tests
    the rule it is meant to.
    """
    expected = dense_hessian(model, loss_of_output, inputs).diagonal()
    loss = loss_of_output(model(inputs))
    if op is not None:
        assert op in {data["op"] for _, data in trace(loss).dag.nodes(data=True)}
    assert diagonal_method(loss, model) == "propagate"
    tolerance = {"rtol": 1e-10, "atol": 1e-12}
    got = hessian_diagonal(loss, model, method="propagate")
    torch.testing.assert_close(flat(got), expected, **tolerance)
    auto = hessian_diagonal(loss_of_output(model(inputs)), model)
    torch.testing.assert_close(flat(auto), expected, **tolerance)
