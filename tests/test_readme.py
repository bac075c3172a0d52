"""The README's Python examples run as printed and say what they claim.

Each ```python block is run verbatim; blocks that continue from "your" model or
data get a small prelude defining those names. The numbers in the blocks'
comments (node counts, diff summary, backward counts, x**4 derivatives) are
checked against what the code returns.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest
import torch
import torch.nn as nn

import gradgraph

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run(block: int, **names) -> dict:
    """Execute README block ``block`` (0-based) with ``names`` predefined."""
    namespace = {"torch": torch, "nn": nn, "gradgraph": gradgraph, **names}
    exec(compile(BLOCKS[block], f"README.md block {block + 1}", "exec"), namespace)
    return namespace


def line_with(block: int, text: str) -> str:
    """The code (before any comment) of the block's first line containing text."""
    line = next(ln for ln in BLOCKS[block].splitlines() if text in ln)
    return line.split("  #")[0].strip()


def small_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(16, 3)
    return model, x, torch.sin(x.sum(1, keepdim=True))


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks write pictures


def test_there_are_six_examples():
    assert len(BLOCKS) == 6


def test_api_example_gives_the_seed_graph(tmp_path):
    ns = run(0)
    g = ns["g"]
    assert "8 nodes, 7 edges" in BLOCKS[0]
    assert (g.dag.number_of_nodes(), g.dag.number_of_edges()) == (8, 7)
    assert (tmp_path / "linear_linear.svg").read_text().lstrip().startswith("<")


def test_rendering_example_writes_every_form(tmp_path):
    model, x, y = small_model()
    run(1, model=model, loss=((model(x) - y) ** 2).mean())
    for name in ("graph.svg", "graph.html"):
        assert (tmp_path / name).stat().st_size > 0


def test_create_graph_example_diff_matches_its_comment():
    ns = run(2)
    claim = re.search(
        r"(\d+) matched, (\d+) added, (\d+) removed, (\d+) freed", BLOCKS[2]
    )
    summary = eval(line_with(2, ".diff(g)"), ns)
    keys = ("matched", "added", "removed", "freed")
    expected = dict(zip(keys, claim.groups(), strict=True))
    assert {k: str(summary[k]) for k in expected} == expected


def test_retain_graph_example_counts_match_its_comments():
    ns = run(3)
    rec = ns["rec"]
    assert "{0: 3, 1: 3, 2: 3, 3: 3}" in BLOCKS[3]
    assert rec.counts() == {0: 3, 1: 3, 2: 3, 3: 3}
    norms = re.search(r"\{3: \[([\d., ]+)\]\}", BLOCKS[3]).group(1)
    claimed = [float(n) for n in norms.split(",")]
    assert rec.accumulated()[3] == pytest.approx(claimed, abs=0.01)
    assert "saved tensors" in gradgraph.explain_retain_graph(ns["out"])


def test_derivative_engine_example_runs_and_x4_gives_4_12_24():
    model, x, y = small_model()
    v = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    ns = run(4, model=model, x=x, v=v, loss_fn=lambda out: ((out - y) ** 2).mean())
    values = eval(line_with(4, "derivatives("), ns)
    assert "[4., 12., 24.]" in BLOCKS[4]
    assert [float(d) for d in values] == [4.0, 12.0, 24.0]
    assert ns["values"].shape == (3,)


def test_curvature_example_runs_on_a_loader():
    model, x, y = small_model()
    loader = [(x[:8], y[:8]), (x[8:], y[8:])]
    v = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    ns = run(5, model=model, loader=loader, v=v)
    assert ns["values"].shape == (3,)
