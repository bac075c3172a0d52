"""GradGraph.saved_memory: activation memory against saved_tensors_hooks."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import gradgraph
from gradgraph import record_modules, trace
from gradgraph.memory import memory_dot, saved_bytes_by_node
from tests.tiny_transformers import tiny_gpt2, tiny_llama


def hooks_count(model: nn.Module, forward) -> tuple[torch.Tensor, int]:
    """The peer: unique storages the pack hook sees in the forward, params excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    return loss, sum(seen.values())


def llama():
    model, ids = tiny_llama()
    return model, lambda: model(ids, labels=ids).loss


def gpt2():
    model, ids = tiny_gpt2()
    return model, lambda: model(ids, labels=ids).loss


def cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 5),
    )
    x = torch.randn(4, 3, 16, 16)
    return model, lambda: nn.functional.cross_entropy(model(x), torch.arange(4))


def lstm():
    torch.manual_seed(0)
    model = nn.LSTM(8, 16, num_layers=2, batch_first=True)
    x = torch.randn(3, 7, 8)
    return model, lambda: model(x)[0].pow(2).mean()


MODELS = [llama, gpt2, cnn, lstm]


@pytest.mark.parametrize("build", MODELS, ids=[f.__name__ for f in MODELS])
def test_saved_memory_matches_saved_tensors_hooks_and_splits_add_up(build):
    model, forward = build()
    with record_modules(model) as rec:
        loss, reference = hooks_count(model, forward)
    graph = trace(loss, model=model, modules=rec)
    total = graph.saved_memory()
    assert reference > 0
    assert abs(total - reference) <= 0.05 * reference, (total, reference)
    for by in ("op", "module", "node"):
        split = graph.saved_memory(by=by)
        assert sum(split.values()) == total, by
    by_module = graph.saved_memory(by="module")
    if build is not lstm:  # an LSTM has no submodules: everything is the model's
        assert sum(v for k, v in by_module.items() if k) >= 0.9 * total
    assert graph.summary()["saved_memory"] == total
    # each storage once: the plain sum of saved tensors counts more
    assert graph.summary()["saved_bytes"] >= total


def test_llama_split_by_layer_is_the_same_for_identical_layers():
    model, forward = llama()
    with record_modules(model) as rec:
        loss = forward()
    split = trace(loss, modules=rec).saved_memory(by="module")
    for part in ("mlp", "post_attention_layernorm", "input_layernorm"):
        layer0 = split[f"model.layers.0.{part}"]
        assert layer0 > 0 and split[f"model.layers.1.{part}"] == layer0, part
    # the rotary cos/sin tables both layers save are charged to layer 0 only
    first, second = (split[f"model.layers.{i}.self_attn"] for i in (0, 1))
    assert 0 < first - second <= 2 * 2 * 16 * 8 * 4


def test_parameters_are_excluded_and_views_count_their_storage_once():
    w = torch.randn(64, requires_grad=True)
    assert trace((w * w).sum()).saved_memory() == 0  # saves w twice: a parameter
    x = torch.randn(10, 64)
    halves = x.chunk(2)  # two views of one 2,560-byte storage
    loss = sum((h * w).sum() for h in halves)
    assert trace(loss).saved_memory() == x.untyped_storage().nbytes() == 2560


def test_backward_frees_it():
    model, forward = cnn()
    loss = forward()
    graph = trace(loss)
    assert graph.saved_memory() > 0
    loss.backward()
    assert trace(loss).saved_memory() == 0
    assert graph.saved_memory() > 0  # a trace is a snapshot


def test_charged_once_to_the_earliest_node_that_saved_it():
    x = torch.randn(8, 4)
    w = torch.randn(4, 4, requires_grad=True)
    h = torch.relu(x @ w)  # relu saves h
    loss = (h @ w).sum()  # the matmul saves h again
    graph = trace(loss)
    per_node = saved_bytes_by_node(graph)
    relu = graph.nodes_by_op("ReluBackward0")[0]
    mm_first, mm_second = sorted(
        graph.nodes_by_op("MmBackward0"), key=lambda n: graph.dag.nodes[n]["seq_nr"]
    )
    assert per_node[relu] == h.nbytes and per_node[mm_second] == 0
    assert per_node[mm_first] == x.nbytes


def test_bad_by_says_what_to_pass():
    graph = trace(torch.ones(2, requires_grad=True).exp().sum())
    with pytest.raises(ValueError, match="'op', 'module' or 'node'"):
        graph.saved_memory(by="layer")


def test_pictures_shade_nodes_and_chart_modules(tmp_path):
    model, forward = gpt2()
    with record_modules(model) as rec:
        loss = forward()
    graph = trace(loss, model=model, modules=rec)
    text = memory_dot(graph, collapse="modules")
    split = graph.saved_memory(by="module")
    attn = split["transformer.h.0.attn"]  # a folded box shows its module's bytes
    assert f"saves {attn / 1024:.1f} KiB" in text
    assert "#ff6b00" in text and "saved for backward" in text
    unfolded = memory_dot(graph)
    biggest = max(saved_bytes_by_node(graph).items(), key=lambda kv: kv[1])[0]
    assert f"n{biggest} [id=n{biggest}" in unfolded
    assert "#ff6b00ff" in unfolded  # the largest node is fully opaque
    svg = gradgraph.render_memory(graph, tmp_path / "memory.svg", collapse="modules")
    assert ET.parse(svg).getroot().tag.endswith("svg")
    png = gradgraph.memory_chart(graph, tmp_path / "memory.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
