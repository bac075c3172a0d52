"""Every registered curvature rule, on its op alone, against autograd.

For each case in tests/rule_cases.py: (a) the rule's pullback of random
columns (dense, per-sample and outer-product layouts) equals torch's VJP of
each column; (b) its residual, written out as a matrix ``sum_c s_c v_c v_c^T``
over the op's inputs, equals the Hessian of ``<g, op(inputs)>`` by double
backward (float64), with inputs that share a parameter (all cross blocks) and
without (diagonal blocks only). A registered rule without a case fails.
"""

from __future__ import annotations

import pytest
import torch

from gradgraph.derivatives.propagation import registry
from gradgraph.derivatives.propagation.base import OpContext, Rule, pull
from gradgraph.derivatives.propagation.columns import (
    DenseColumns,
    GroupColumns,
    OuterColumns,
    SampleColumns,
    TokenColumns,
    combine,
)

from .rule_cases import CASES, CUDA_ONLY, Case, cases_for

TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}
COLUMNS = 3


def test_every_registered_rule_has_a_case():
    missing = sorted(set(registry.registered_names()) - set(CASES) - CUDA_ONLY)
    assert not missing, f"add a case to tests/rule_cases.py for: {missing}"


def test_every_case_has_a_registered_rule():
    stale = sorted(set(CASES) - set(registry.registered_names()))
    assert not stale, f"cases for names with no rule: {stale}"


def test_a_name_takes_one_rule(monkeypatch):
    monkeypatch.setattr(registry, "_RULES", dict(registry._RULES))
    with pytest.raises(ValueError, match="TanhBackward0 already has a curvature rule"):
        registry.register(Rule(), "TanhBackward0")

    @registry.register("NewOpBackward0", "OtherOpBackward0")
    class NewRule(Rule):
        pass

    assert isinstance(registry.rule_for("OtherOpBackward0"), NewRule)
    assert registry.register(NewRule, "ThirdBackward0") is registry.rule_for(
        "ThirdBackward0"
    )
    with pytest.raises(ValueError, match="NewOpBackward0 already"):
        registry.register(NewRule(), "FreshBackward0", "NewOpBackward0")
    assert registry.rule_for("FreshBackward0") is None  # nothing half-registered
    with pytest.raises(TypeError, match="at least one grad_fn name"):
        registry.register(NewRule())


def _all_cases():
    return [
        pytest.param(name, k, id=f"{name}-{k}")
        for name in sorted(CASES)
        for k in range(len(cases_for(name)))
    ]


def _node(name: str, case: Case):
    """The op's output, its inputs, and input position -> case input (or None)."""
    out, inputs = case.build()
    fn = out.grad_fn
    assert type(fn).__name__ == name, f"the case builds {type(fn).__name__}"
    which: list[int | None] = []
    for child, _ in fn.next_functions:
        if child is None:
            which.append(None)
            continue
        while type(child).__name__ == "CloneBackward0":  # in-place ops act on a copy
            child = child.next_functions[0][0]
        assert type(child).__name__ == "AccumulateGrad", "inputs must feed the op"
        which.append(next(k for k, t in enumerate(inputs) if t is child.variable))
    return out, inputs, which


def _context(out, inputs, which, grad, coupled: bool) -> OpContext:
    out_shape = tuple(out.shape)
    if getattr(registry.rule_for(type(out.grad_fn).__name__), "several_outputs", 0):
        out_shape = tuple(inputs[which[0]].shape)  # outputs that tile the input
    return OpContext(
        fn=out.grad_fn,
        grad=grad,
        out_shape=out_shape,
        in_shapes=[None if k is None else tuple(inputs[k].shape) for k in which],
        coupled=lambda i, j: coupled,
        memo={},
    )


def _signs(*shape: int) -> torch.Tensor:
    return torch.randint(0, 2, shape).double() * 2 - 1


def _layouts(shape: tuple[int, ...]):
    """Random columns at a node of ``shape`` in every layout that fits it."""
    yield DenseColumns(torch.randn(COLUMNS, *shape, dtype=torch.float64), _signs(3))
    if len(shape) >= 2:
        data = torch.randn(COLUMNS, *shape, dtype=torch.float64)
        yield SampleColumns(data, _signs(COLUMNS, shape[0]))
    if len(shape) >= 3:  # per token of dims 0 and 1
        data = torch.randn(COLUMNS, *shape, dtype=torch.float64)
        yield TokenColumns(data, _signs(COLUMNS, *shape[:2]))
    if len(shape) >= 1 and shape[0] % 2 == 0:  # per sample of two row groups
        data = torch.randn(COLUMNS, 2, shape[0] // 2, *shape[1:], dtype=torch.float64)
        yield GroupColumns(data, _signs(COLUMNS, 2))
    if len(shape) == 2:
        a, b = shape
        for transposed in (False, True):
            left = torch.randn(COLUMNS, 2, b if transposed else a, dtype=torch.float64)
            right = torch.randn(1, 2, a if transposed else b, dtype=torch.float64)
            yield OuterColumns(left, right, _signs(COLUMNS, 2), transposed)


def _vjp(out, x, v):
    return torch.autograd.grad(out, x, v, retain_graph=True)[0]


@pytest.mark.parametrize(("name", "k"), _all_cases())
def test_pullback_is_the_vjp(name, k):
    torch.manual_seed(0)
    out, inputs, which = _node(name, cases_for(name)[k])
    rule = registry.rule_for(name)
    grad = torch.randn(out.shape, dtype=torch.float64)
    ctx = _context(out, inputs, which, grad, coupled=False)
    case = cases_for(name)[k]
    ref_out, ref_inputs = out, inputs  # the node itself (random ops: its own mask)
    if case.float32_node:  # float64 math of a float32-only node
        op, values = case.math()
        ref_inputs = [t.clone().requires_grad_(True) for t in values]
        ref_out = op(*ref_inputs)
    shape = tuple(out.shape)
    for block in _layouts(shape):
        dense = block.to_dense(shape)
        for pos, kin in enumerate(which):
            if kin is None:
                continue
            arrived = rule.accept(ctx, block)  # as the engine hands it over
            if getattr(rule, "several_outputs", False):  # output out.output_nr
                placed = rule.embed(ctx, block, out.output_nr)
                arrived = combine([placed], tuple(ctx.out_shape))
            got = pull(rule, ctx, arrived, pos).to_dense(tuple(inputs[kin].shape))
            expected = torch.stack(
                [_vjp(ref_out, ref_inputs[kin], v) for v in dense.data]
            )
            torch.testing.assert_close(got.data, expected, **TOLERANCE)
            torch.testing.assert_close(got.sign, dense.sign)


def _hessian_of_contraction(case: Case, grad: torch.Tensor):
    op, values = case.math()

    def contraction(*xs):
        return (grad * op(*xs)).sum()

    return torch.autograd.functional.hessian(contraction, values)


def _residual_matrix(rule: Rule, ctx: OpContext) -> dict[int, torch.Tensor]:
    """Position -> its columns, flattened ``[C, size]``, with the common signs."""
    blocks = rule.residual(ctx)
    flat, signs = {}, []
    for pos, block in blocks.items():
        dense = block.to_dense(ctx.in_shapes[pos])
        flat[pos] = dense.data.reshape(dense.data.shape[0], -1)
        signs.append(dense.sign)
    for s in signs[1:]:  # one source: the same columns at every input
        torch.testing.assert_close(s, signs[0])
    return flat, (signs[0] if signs else None)


@pytest.mark.parametrize("coupled", [False, True], ids=["separate", "shared"])
@pytest.mark.parametrize(("name", "k"), _all_cases())
def test_residual_is_the_double_backward(name, k, coupled):
    torch.manual_seed(0)
    case = cases_for(name)[k]
    out, inputs, which = _node(name, case)
    rule = registry.rule_for(name)
    flows = [kin is not None for kin in which]
    if coupled and rule.refuses(out.grad_fn, flows, lambda i, j: True):
        coupled = False  # the engine refuses such a graph: only own blocks count
    grad = torch.randn(out.shape, dtype=torch.float64)
    ctx = _context(out, inputs, which, grad, coupled)
    columns, sign = _residual_matrix(rule, ctx)
    hessian = _hessian_of_contraction(case, grad)
    for i, ki in enumerate(which):
        for j, kj in enumerate(which):
            if ki is None or kj is None or (i != j and not coupled):
                continue
            n_i, n_j = inputs[ki].numel(), inputs[kj].numel()
            expected = hessian[ki][kj].reshape(n_i, n_j)
            got = torch.zeros(n_i, n_j, dtype=torch.float64)
            if i in columns and j in columns:
                got = torch.einsum("c,ci,cj->ij", sign, columns[i], columns[j])
            torch.testing.assert_close(got, expected, **TOLERANCE)


def _masking_rules(flag: str) -> list[str]:
    return [
        n for n in registry.registered_names() if getattr(registry.rule_for(n), flag)
    ]


def test_fusions_have_both_sides():
    assert _masking_rules("positive_mask") and _masking_rules("takes_input_mask")


@pytest.mark.parametrize("name", _masking_rules("positive_mask"))
def test_a_positive_mask_rule_is_the_mask_of_its_output(name):
    """Its pullback is ``v * (output > 0)``; fused, it passes columns on as is."""
    for case in cases_for(name):
        out, inputs, which = _node(name, case)
        ctx = _context(out, inputs, which, torch.randn_like(out), coupled=False)
        block = next(_layouts(tuple(out.shape)))
        got = registry.rule_for(name).pullback(ctx, block, 0)
        torch.testing.assert_close(got.data, block.data * (out > 0))
        ctx.premasked = True
        assert registry.rule_for(name).pullback(ctx, block, 0) is block


@pytest.mark.parametrize("name", _masking_rules("takes_input_mask"))
def test_an_input_mask_taken_over_is_the_vjp_through_the_mask(name):
    for case in cases_for(name):
        out, inputs, which = _node(name, case)
        ctx = _context(out, inputs, which, torch.randn_like(out), coupled=False)
        ctx.mask_input = True
        (x,) = (inputs[k] for k in which if k is not None)
        for block in _layouts(tuple(out.shape)):
            dense = block.to_dense(tuple(out.shape))
            got = registry.rule_for(name).pullback(ctx, block, 0)
            expected = torch.stack(
                [
                    torch.autograd.grad(out, x, v, retain_graph=True)[0] * (x > 0)
                    for v in dense.data
                ]
            )
            torch.testing.assert_close(
                got.to_dense(tuple(x.shape)).data, expected, **TOLERANCE
            )
