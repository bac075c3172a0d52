"""expand() + rendering of the seed SimpleNet's HVP graph, against the autograd
work itself and against torchviz drawing the same outputs.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_expansion.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchviz
from common import best_of, machine, table

from gradgraph import expand, order_summary
from gradgraph.expansion import anomaly_mode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.cases import seed_simplenet  # noqa: E402  (the same net the tests use)


def autograd_only(loss, params, anomaly=False):
    """The derivative passes expand() runs, with no gradgraph code around them."""
    with anomaly_mode(anomaly):
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * torch.ones_like(g)).sum() for g in grads)
        hv = torch.autograd.grad(dot, params, create_graph=True)
    return [loss, *grads, dot, *hv]


def main() -> None:
    # one intra-op thread: on a shared machine, torch's thread pool makes the
    # small matmuls here 10-100x noisier than the work itself
    torch.set_num_threads(1)
    print(f"machine: {machine()}, torch.set_num_threads(1)\n")
    loss, model = seed_simplenet()
    params = list(model.parameters())
    g = expand(loss, model)
    sizes = ", ".join(f"order {k}: {r['nodes']}" for k, r in order_summary(g).items())
    print(f"SimpleNet HVP graph: {len(g)} nodes ({sizes})\n")

    bare = best_of(lambda: autograd_only(loss, params), 20)
    bare_anomaly = best_of(lambda: autograd_only(loss, params, anomaly=True), 20)
    plain = best_of(lambda: expand(loss, model, created_by=False), 20)
    linked = best_of(lambda: expand(loss, model), 20)
    with_dot = best_of(lambda: expand(loss, model).to_dot(), 20)
    with_svg = best_of(lambda: expand(loss, model).to_svg(), 5)
    rows = [
        ["autograd: grad + HVP, create_graph=True", f"{bare * 1e3:.1f}", "-"],
        ["  the same under anomaly mode", f"{bare_anomaly * 1e3:.1f}", "-"],
        [
            "expand(created_by=False)",
            f"{plain * 1e3:.1f}",
            f"{(plain - bare) * 1e3:.1f}",
        ],
        ["expand()", f"{linked * 1e3:.1f}", f"{(linked - bare) * 1e3:.1f}"],
        [
            "expand().to_dot()",
            f"{with_dot * 1e3:.1f}",
            f"{(with_dot - bare) * 1e3:.1f}",
        ],
        [
            "expand().to_svg() (graphviz layout included)",
            f"{with_svg * 1e3:.1f}",
            f"{(with_svg - bare) * 1e3:.1f}",
        ],
    ]
    print("expanding and rendering the SimpleNet HVP graph")
    print(table(rows, ["", "ms", "ms beyond the autograd work"]))

    outputs = autograd_only(loss, params)
    named = dict(model.named_parameters())
    ours_dot = best_of(lambda: expand(loss, model, created_by=False).to_dot(), 20)
    theirs_dot = best_of(
        lambda: torchviz.make_dot(tuple(outputs), params=named).source, 20
    )
    ours_svg = best_of(lambda: expand(loss, model, created_by=False).to_svg(), 5)
    theirs_svg = best_of(
        lambda: torchviz.make_dot(tuple(outputs), params=named).pipe(format="svg"), 3
    )
    print("\nDOT/SVG of the same graph: gradgraph (derivatives included) vs torchviz")
    print(
        table(
            [
                [
                    "DOT text",
                    f"{ours_dot * 1e3:.1f}",
                    f"{theirs_dot * 1e3:.1f}",
                    f"{theirs_dot / ours_dot:.2f}x",
                ],
                [
                    "SVG",
                    f"{ours_svg * 1e3:.1f}",
                    f"{theirs_svg * 1e3:.1f}",
                    f"{theirs_svg / ours_svg:.2f}x",
                ],
            ],
            ["", "gradgraph ms", "torchviz ms", "torchviz / gradgraph"],
        )
    )
    print(
        "\n(gradgraph's column includes computing the gradient and the HVP; "
        "torchviz only draws outputs computed beforehand)"
    )


if __name__ == "__main__":
    main()
