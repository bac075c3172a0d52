"""Plain rendering from the foundation: text, DOT, SVG, JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gradgraph import DotNotFoundError, trace

from .cases import seed_linear_linear


def test_text_listing_reads_inputs_first():
    out, kw = seed_linear_linear()
    lines = trace(out, **kw).to_text().splitlines()
    assert len(lines) == 8
    assert lines[-1].startswith("n0 = AddmmBackward0(n1, n2, n3)")
    assert "(root)" in lines[-1]
    defined = set()
    for line in lines:
        name, rest = line.split(" = ", 1)
        args = rest[rest.index("(") + 1 : rest.index(")")]
        assert all(a in defined for a in args.split(", ") if a)
        defined.add(name)


def test_svg_render_is_byte_identical(tmp_path):
    if shutil.which("dot") is None:
        pytest.fail("the graphviz 'dot' binary is required (make setup installs it)")
    a = trace(*[seed_linear_linear()[0]]).render(tmp_path / "a.svg")
    b = trace(*[seed_linear_linear()[0]]).render(tmp_path / "b.svg")
    data = Path(a).read_bytes()
    assert data == Path(b).read_bytes() and b"<svg" in data


def test_json_round_trips():
    out, kw = seed_linear_linear()
    data = json.loads(trace(out, **kw).to_json())
    assert len(data["nodes"]) == 8 and len(data["edges"]) == 7
    assert data["graph"]["roots"] == [0]


def test_missing_dot_binary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    g = trace((torch.ones(2, requires_grad=True) * 2).sum())
    with pytest.raises(DotNotFoundError, match="apt-get install graphviz"):
        g.render(tmp_path / "x.svg")
    assert "digraph" in g.to_dot() and g.to_text() and g.to_json()


def test_unwritable_path(tmp_path):
    g = trace((torch.ones(2, requires_grad=True) * 2).sum())
    with pytest.raises(ValueError, match="writable"):
        g.render(tmp_path / "no" / "such" / "dir" / "x.svg")
