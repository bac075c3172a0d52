"""Draw the gallery of real models: gradgraph beside torchviz and torchview.

Writes one SVG per model and tool under docs/models/ and the page
docs/models.md (box counts and render times measured in the same run).
Tiny configs with random weights, no downloads. Not part of the package.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python docs/models/gallery.py``
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchview
import torchviz

from gradgraph import record_modules, trace
from gradgraph.examples import tiny_models

OUT = Path(__file__).resolve().parent


class LSTMTagger(nn.Module):
    """Embedding -> 2-layer LSTM -> Linear, the classic sequence tagger."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


def models() -> dict:
    """name -> (model, input, output -> loss tensor)."""
    ids = torch.randint(0, 64, (1, 8))
    gpt2 = tiny_models.gpt2(layers=6)
    bert = tiny_models.bert(layers=4)
    vit = tiny_models.vit(layers=4, image=32, patch=8)
    resnet = tiny_models.resnet(widths=[16, 32, 64, 128], depths=[2, 2, 2, 2])
    return {
        "resnet18": (resnet, torch.randn(1, 3, 64, 64), lambda o: o.pooler_output),
        "gpt2": (gpt2, ids, lambda o: o.logits),
        "bert": (bert, ids, lambda o: o.last_hidden_state),
        "vit": (vit, torch.randn(1, 3, 32, 32), lambda o: o.last_hidden_state),
        "lstm": (LSTMTagger(), torch.randint(0, 50, (1, 8)), lambda o: o),
    }


def boxes(svg: str) -> int:
    return len(re.findall(r'<g id="[^"]*" class="node', svg))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def draw(name: str, model, x, pick) -> list[tuple[str, str, int, float]]:
    model.eval()
    rows = []
    torch.manual_seed(0)
    with record_modules(model) as rec:
        out = pick(model(x)).pow(2).mean()
    graph = trace(out, model=model, modules=rec)
    plain = trace(pick(model(x)).pow(2).mean(), model=model)
    for kind, g, options in (
        ("gradgraph", graph, {}),
        ("gradgraph depth=1", graph, {"depth": 1}),
        ("gradgraph, no modules recorded", plain, {}),
    ):
        svg, seconds = timed(lambda g=g, o=options: g.to_svg(**o))
        suffix = {"gradgraph": "", "gradgraph depth=1": "-depth1"}.get(kind, "-plain")
        file = f"{name}-gradgraph{suffix}.svg"
        (OUT / file).write_text(svg)
        rows.append((kind, file, boxes(svg), seconds))
    svg, seconds = timed(
        lambda: (
            torchviz.make_dot(out, params=dict(model.named_parameters()))
            .pipe("svg")
            .decode()
        )
    )
    (OUT / f"{name}-torchviz.svg").write_text(svg)
    rows.append(("torchviz", f"{name}-torchviz.svg", boxes(svg), seconds))

    for roll in (True, False):
        try:
            drawn, seconds = timed(
                lambda r=roll: torchview.draw_graph(
                    model, input_data=x, depth=3, roll=r
                ).visual_graph.pipe(format="svg")
            )
        except Exception as exc:  # noqa: BLE001 - the peer's failure is a result
            failed = f"{type(exc).__name__}: {exc}"[:80]
            continue
        file = f"{name}-torchview.svg"
        (OUT / file).write_text(drawn.decode())
        rows.append(
            (f"torchview (depth=3, roll={roll})", file, boxes(drawn.decode()), seconds)
        )
        break
    else:
        rows.append(("torchview", f"failed ({failed})", 0, 0.0))
    return rows, len(graph)


PAGE = """# Real models, drawn three ways

Each model is a tiny random-weight config (no downloads), drawn by gradgraph
at its default budget (200 boxes) with modules recorded
(`gradgraph.record_modules`), the same with `depth=1`, gradgraph without
recorded modules (modules come from parameter names), and by torchviz
(`make_dot`) and torchview (`draw_graph(depth=3, roll=True)`) in the same run.
Regenerate with `OMP_NUM_THREADS=1 .venv/bin/python docs/models/gallery.py`.

Boxes are the nodes in each SVG; seconds include the graphviz layout
(one shared 2-core machine, so times are indicative).

"""


def main() -> None:
    parts = [PAGE]
    for name, (model, x, pick) in models().items():
        rows, nodes = draw(name, model, x, pick)
        parts.append(f"## {name}\n\nautograd graph: {nodes:,} nodes\n\n")
        parts.append("| drawn by | boxes | seconds | picture |\n|---|---:|---:|---|\n")
        for kind, file, count, seconds in rows:
            link = f"[{file}](models/{file})" if file.endswith(".svg") else file
            parts.append(f"| {kind} | {count} | {seconds:.2f} | {link} |\n")
        print(name, nodes, [(r[0], r[2], round(r[3], 2)) for r in rows], flush=True)
        parts.append(f"\n![{name} by gradgraph](models/{name}-gradgraph.svg)\n\n")
    (OUT.parent / "models.md").write_text("".join(parts))


if __name__ == "__main__":
    main()
