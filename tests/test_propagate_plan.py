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

from .peak_memory import peak_growth_mib

SLACK_MIB = 8

# each defines make() -> (loss function, params), float32 as users run it
MODELS = {
    "tanh-mlp": """
        import torch, torch.nn as nn
        def make():
            torch.manual_seed(0)
            width, batch = 160, 1000
            model = nn.Sequential(
                nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1),
            )
            x, y = torch.randn(batch, 1), torch.randn(batch, 1)
            return lambda: nn.functional.mse_loss(model(x), y), model
    """,
    "batch-norm-training-cnn": """
        import torch, torch.nn as nn
        def make():
            torch.manual_seed(0)
            model = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
            ).train()
            x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
            return lambda: nn.functional.cross_entropy(model(x), y), model
    """,
    "zoo-resnet-training": """
        import torch
        from tests.zoo import build
        def make():
            case = build("resnet", torch.float32)
            return case.loss, case.params
    """,
    "zoo-gpt2": """
        import torch
        from tests.zoo import build
        def make():
            case = build("gpt2", torch.float32)
            return case.loss, case.params
    """,
}

# Known undercount: per-token columns that go per sample at attention (L times
# larger) and stay in the sweep until their paths meet again, several sources
# at once; a 32-token sequence through the zoo GPT-2 peaks at ~0.5 GiB.
UNDERCOUNTED = {
    "gpt2-32-tokens": """
        import torch
        from gradgraph.examples import tiny_models as tiny
        from tests.zoo import _next_token_loss
        def make():
            torch.manual_seed(0)
            model = tiny.gpt2(width=32, vocab=64, positions=32, bos_token_id=0,
                              eos_token_id=0).eval()
            ids = torch.randint(0, 64, (1, 32))
            return _next_token_loss(model, ids), dict(model.named_parameters())
    """,
}

CHILD = """
    import torch
    from gradgraph.derivatives.propagation import propagated_hessian_diagonal
    loss_fn, params = make()

    def run():
        return propagated_hessian_diagonal(loss_fn(), params)
"""


def plan_and_peak_mib(setup: str) -> tuple[float, float]:
    namespace: dict = {}
    exec(textwrap.dedent(setup), namespace)
    loss_fn, params = namespace["make"]()
    plan = engine._Plan(loss_fn(), params).peak_bytes(engine.DRAIN_BYTES) / 2**20
    peak = peak_growth_mib(textwrap.dedent(setup) + textwrap.dedent(CHILD))
    return plan, peak


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


@pytest.mark.xfail(strict=True, reason="the plan misses per-sample token columns")
@pytest.mark.parametrize("name", sorted(UNDERCOUNTED))
def test_known_undercount(name):
    check(UNDERCOUNTED[name])
