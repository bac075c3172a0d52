"""gradient_flow: per-module and per-parameter gradient sizes of one backward."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gradgraph import gradient_flow, record_backward


def deep_sigmoid_net(depth=8):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(16, 1))


def test_rows_equal_torchs_gradients_per_parameter_and_per_module():
    model = deep_sigmoid_net(3)
    x = torch.randn(32, 16)
    record = record_backward(model(x).pow(2).mean(), model=model)
    by_param = {r.name: r for r in gradient_flow(record, by="parameter").rows}
    by_module = gradient_flow(record).rows
    assert [r.name for r in by_module] == ["0", "2", "4", "6"]  # forward order
    for name, p in model.named_parameters():
        g = p.grad.double()
        row = by_param[name]
        assert row.numel == p.numel()
        assert math.isclose(row.norm, g.norm().item(), rel_tol=1e-9)
        assert math.isclose(row.mean_abs, g.abs().mean().item(), rel_tol=1e-9)
        assert math.isclose(row.max_abs, g.abs().max().item(), rel_tol=1e-9)
    for row in by_module:
        grads = torch.cat(
            [p.grad.double().reshape(-1) for p in model[int(row.name)].parameters()]
        )
        assert math.isclose(row.norm, grads.norm().item(), rel_tol=1e-9)
        assert math.isclose(row.mean_abs, grads.abs().mean().item(), rel_tol=1e-9)
        assert row.max_abs == pytest.approx(grads.abs().max().item(), rel=1e-9)


def test_the_gradient_of_this_call_not_the_accumulated_grad():
    model = deep_sigmoid_net(1)
    x = torch.randn(4, 16)
    loss = model(x).sum()
    record = record_backward(loss, model=model, times=2, retain_graph=True)
    first = gradient_flow(record, call=0).rows
    second = gradient_flow(record, call=1).rows
    assert [r.norm for r in first] == [r.norm for r in second]
    total = torch.cat([p.grad.reshape(-1) for p in model[0].parameters()]).norm()
    assert math.isclose(total.item(), 2 * first[0].norm, rel_tol=1e-5)


def test_vanishing_gradients_show_in_the_ratio_table_and_plot(tmp_path):
    model = deep_sigmoid_net(8)
    record = record_backward(model(torch.randn(64, 16)).pow(2).mean(), model=model)
    flow = gradient_flow(record)
    norms = [r.norm for r in flow.rows]
    assert norms[0] < norms[-1] / 100 and flow.ratio() > 100
    table = flow.table().splitlines()
    assert table[0].split() == ["module", "numel", "norm", "mean|g|", "max|g|"]
    assert len(table) == len(flow.rows) + 1 and table[1].split()[0] == "0"
    png = flow.plot(tmp_path / "flow.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = flow.render(tmp_path / "flow.svg")
    texts = [
        t.text or "" for t in ET.parse(svg).iter("{http://www.w3.org/2000/svg}text")
    ]
    assert sum(t.startswith("|g| ") for t in texts) == len(list(model.parameters()))


def test_exploding_and_dead_layers_are_marked():
    model = deep_sigmoid_net(2)
    x = torch.randn(4, 16)
    x[0, 0] = math.nan  # one bad input: NaN gradients for the first weight
    record = record_backward(model(x).sum(), model=model)
    flow = gradient_flow(record, by="parameter")
    tiny, huge = flow._marks()
    bad = {n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()}
    assert bad and {flow.rows[i].name for i in huge} == bad
    with torch.no_grad():
        model[4].weight.zero_()  # nothing flows below the last layer
    model.zero_grad()
    flow = gradient_flow(record_backward(model(x.nan_to_num()).sum(), model=model))
    tiny, huge = flow._marks()
    assert [flow.rows[i].name for i in tiny] == ["0", "2"] and not huge


def test_bad_input_says_what_to_pass():
    model = deep_sigmoid_net(1)
    record = record_backward(model(torch.randn(2, 16)).sum(), model=model)
    with pytest.raises(ValueError, match="'module' or 'parameter'"):
        gradient_flow(record, by="layer")
    with pytest.raises(TypeError, match="record_backward"):
        gradient_flow(model)
    with pytest.raises(ValueError, match="call=3"):
        gradient_flow(record, call=3)
