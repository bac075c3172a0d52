"""Each model case with its dense float64 reference Hessian, built once per run."""

from __future__ import annotations

from functools import cache

import torch

from .cases_models import MODELS, ModelCase
from .reference import dense_hessian


@cache
def case_and_hessian(name: str) -> tuple[ModelCase, torch.Tensor]:
    case = MODELS[name]()
    return case, dense_hessian(case.model, case.loss_fn, case.inputs)


def flat(result: dict[str, torch.Tensor]) -> torch.Tensor:
    """A dict result (named_parameters order) as one flat vector."""
    return torch.cat([v.reshape(-1) for v in result.values()])
