"""No global state left behind, and names reach DOT/SVG escaped.

Every public function is called once succeeding and once raising; around each
call a snapshot of torch's and Python's global switches must be unchanged, and
the model's hooks must still be exactly the user's.
"""

from __future__ import annotations

import gc
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn as nn
import torch.nn.modules.module as module_globals

from gradgraph import hvp, trace


def global_state() -> dict:
    return {
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "anomaly_nan": torch.is_anomaly_check_nan_enabled(),
        "saved_tensor_hooks": torch._C._autograd._top_saved_tensors_default_hooks(
            False
        ),
        "module_hooks": {
            name: dict(getattr(module_globals, name))
            for name in dir(module_globals)
            if name.startswith("_global_") and name.endswith("hooks")
        },
        "gc": (gc.isenabled(), gc.get_threshold()),
        "dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def model_hooks(m: nn.Module) -> list:
    return [
        (name, sorted(getattr(sub, name)))
        for sub in m.modules()
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    ]


def setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    m.register_forward_hook(lambda mod, i, o: None)
    m[0].register_full_backward_hook(lambda mod, gi, go: None)
    loss = m(torch.randn(4, 3, requires_grad=True)).pow(2).mean()
    return m, loss


def calls(m, loss):
    """(name, call) pairs; the second of each pair raises."""
    zeros = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    g = trace(loss, model=m)
    return [
        ("trace", lambda: trace(loss, model=m, keep=True)),
        ("trace raising", lambda: trace(loss, names={"x": "y"})),
        ("to_dot", g.to_dot),
        ("to_text", g.to_text),
        ("to_json", g.to_json),
        ("to_svg", g.to_svg),
        ("render raising", lambda: g.render("/nonexistent/dir/x.svg")),
        ("grad_fn raising", lambda: g.grad_fn(0)),
        ("hvp", lambda: hvp(loss, m, zeros)),
        ("hvp raising", lambda: hvp(loss, m, {"0.weight": zeros["0.weight"]})),
    ]


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("index", range(10))
@pytest.mark.parametrize("mode", ["plain", "anomaly", "no_grad_gc_off"])
def test_public_calls_leave_no_state_behind(index, mode):
    m, loss = setup()
    name, call = calls(m, loss)[index]
    hooks = model_hooks(m)
    assert len([h for _, ids in hooks for h in ids]) == 2
    with _mode(mode):
        before = global_state()
        try:
            call()
        except (ValueError, TypeError, RuntimeError):
            assert name.endswith("raising")
        else:
            assert not name.endswith("raising")
        assert global_state() == before
    assert model_hooks(m) == hooks


class _mode:
    """Run a call under anomaly mode, or with grad and gc switched off."""

    def __init__(self, mode: str):
        self.mode = mode

    def __enter__(self):
        self.gc_was = gc.isenabled()
        if self.mode == "anomaly":
            self.ctx = torch.autograd.detect_anomaly(check_nan=False)
        elif self.mode == "no_grad_gc_off":
            self.ctx = torch.no_grad()
            gc.disable()
        else:
            self.ctx = torch.enable_grad()
        self.ctx.__enter__()

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        if self.gc_was:
            gc.enable()


def test_trace_inside_saved_tensor_hooks_keeps_them_active():
    pack_calls = []
    m, loss = setup()
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: pack_calls.append(1) or t, lambda t: t
    ):
        trace(loss, model=m)
        (torch.ones(2, requires_grad=True) * 2).sum()  # saves nothing
        torch.ones(2, requires_grad=True).sin()
    assert len(pack_calls) == 1


# -- escaping ---------------------------------------------------------------------

NASTY = 'a"b<c>&d\nline é ✓ {x} | [y]; \\N \\l \\'


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_names_with_quotes_brackets_ampersands_newlines_unicode_reach_svg_intact():
    x = torch.ones(2, requires_grad=True)
    safe = 'a"b<c>&d\nline é ✓ {x} | [y];'
    g = trace((x * 2).sum(), names={x: safe})
    texts = svg_texts(g.to_svg())
    assert 'a"b<c>&d' in texts and "line é ✓ {x} | [y];" in texts


def test_names_with_backslashes_reach_svg_intact():
    x = torch.ones(2, requires_grad=True)
    g = trace((x * 2).sum(), names={x: NASTY})
    texts = svg_texts(g.to_svg())
    assert "line é ✓ {x} | [y]; \\N \\l \\" in texts


def test_hvp_under_no_grad_gives_the_same_result():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = (x**3).sum()
    v = torch.tensor([1.0, 1.0])
    with torch.no_grad():
        inside = hvp(loss, x, v)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(inside, 6 * x.detach() * v)
