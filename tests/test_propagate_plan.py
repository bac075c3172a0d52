"""The memory plan (``_Plan.peak_bytes``) against the measured peak.

``over_budget`` refuses a sweep whose plan exceeds the memory budget, so the
plan must not undercount: each model here runs ``hessian_diagonal(...,
method="propagate")`` in a child process (:mod:`.peak_memory`) and the growth of
its peak resident set is compared with the plan, with a few MiB of slack for
the allocator.
"""

from __future__ import annotations

import textwrap

import pytest

from gradgraph.derivatives.propagation import engine

from . import test_propagate_budget, test_propagate_memory
from .peak_memory import peak_growth_mib

SLACK_MIB = 8

# each defines run() (what is measured) and plan_for() -> (loss, params)
ZOO = """
    import torch
    from gradgraph.derivatives.propagation import propagated_hessian_diagonal
    from tests.zoo import build
    case = build({name!r}, torch.float32)

    def plan_for():
        return case.loss(), case.params

    def run():
        return propagated_hessian_diagonal(case.loss(), case.params)
"""
MODELS = {
    # the peak-memory tests' models, with the loss they run
    "tanh-mlp": textwrap.dedent(test_propagate_memory.PEAK_CHILD)
    + "plan_for = lambda: (nn.functional.mse_loss(model(x), y), model)\n",
    "batch-norm-training-cnn": textwrap.dedent(test_propagate_budget.PEAK_CHILD)
    + "plan_for = lambda: (nn.functional.cross_entropy(model(x), y), model)\n",
    "zoo-resnet-training": ZOO.format(name="resnet"),
    "zoo-gpt2": ZOO.format(name="gpt2"),
}

# Known undercount: per-token columns that go per sample at attention (L times
# larger) and stay in the sweep until their paths meet again, several sources
# at once; a 32-token sequence through the zoo GPT-2 peaks at ~0.5 GiB.
UNDERCOUNTED = {
    "gpt2-32-tokens": """
        import torch
        from gradgraph.examples import tiny_models as tiny
        from tests.zoo import _next_token_loss
        from gradgraph.derivatives.propagation import propagated_hessian_diagonal
        torch.manual_seed(0)
        model = tiny.gpt2(width=32, vocab=64, positions=32, bos_token_id=0,
                          eos_token_id=0).eval()
        loss_fn = _next_token_loss(model, torch.randint(0, 64, (1, 32)))
        plan_for = lambda: (loss_fn(), model)
        run = lambda: propagated_hessian_diagonal(loss_fn(), model)
    """,
}


def plan_and_peak_mib(setup: str) -> tuple[float, float]:
    namespace: dict = {}
    exec(textwrap.dedent(setup), namespace)
    plan = engine._Plan(*namespace["plan_for"]()).peak_bytes(engine.DRAIN_BYTES)
    return plan / 2**20, peak_growth_mib(setup)


def check(setup: str) -> None:
    plan, peak = plan_and_peak_mib(setup)
    assert plan >= peak - SLACK_MIB, (plan, peak)
    # the plan's floor is a few slices of DRAIN_BYTES, so tiny models sit far
    # above it; "not absurd": within that floor plus 4x the measured peak
    floor_mib = 4 * engine.DRAIN_BYTES / 2**20 + SLACK_MIB
    assert plan <= floor_mib + 4 * peak, (plan, peak)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_plan_is_at_least_the_measured_peak(name):
    check(MODELS[name])


@pytest.mark.xfail(
    strict=True,
    reason="the plan misses per-sample token columns (the sweep counts what it "
    "holds and stops at the budget instead: engine._Held)",
)
@pytest.mark.parametrize("name", sorted(UNDERCOUNTED))
def test_known_undercount(name):
    check(UNDERCOUNTED[name])
