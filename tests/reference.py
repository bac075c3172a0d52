"""Dense float64 truths, built the slow obvious way, for the derivative tests.

``dense_hessian(f, theta)`` differentiates a function of one flat float64
vector twice with torch.autograd.functional.hessian: no gradgraph code involved.
"""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call


def flat_params(
    model: torch.nn.Module,
) -> tuple[list[str], list[torch.Size], torch.Tensor]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names]).double()
    return names, shapes, flat


def unflatten(flat: torch.Tensor, names, shapes) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, s in zip(names, shapes, strict=True):
        k = s.numel()
        out[n] = flat[i : i + k].view(s)
        i += k
    return out


def dense_hessian(model: torch.nn.Module, loss_of_output, inputs) -> torch.Tensor:
    """The full Hessian of ``loss_of_output(model(inputs))`` w.r.t. the parameters.

    Works on a float64 copy: ``functional_call`` can leave a reused submodule's
    weight swapped for a non-leaf tensor, and the caller's model must stay as is.
    """
    model = copy.deepcopy(model).double()
    names, shapes, flat = flat_params(model)

    def f(theta):
        x = inputs.double() if inputs.is_floating_point() else inputs  # token ids
        out = functional_call(model, unflatten(theta, names, shapes), (x,))
        return loss_of_output(out)

    return torch.autograd.functional.hessian(f, flat)
