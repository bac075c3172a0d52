"""gradient_flow(): how big the gradients are, layer by layer, in one backward.

The classic check for vanishing and exploding gradients: for each parameter
(or each module, its parameters together) the norm, the mean and the max of
the absolute values of the gradient that reached it, in forward order. Read
from a :func:`gradgraph.record_backward` record (the gradient each
AccumulateGrad node received in that call, not the accumulated ``.grad``), as
a table, as the familiar plot (layers on the x-axis, log scale; zero and
non-finite gradients marked) and on the graph itself.

Example:
    >>> import math, torch
    >>> from gradgraph import record_backward
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(),
    ...                           torch.nn.Linear(3, 1))
    >>> _ = torch.nn.init.constant_(net[0].weight, 0.5)
    >>> rec = record_backward(net(torch.ones(2, 3)).sum(), model=net)
    >>> flow = gradient_flow(rec)
    >>> [row.name for row in flow.rows]
    ['0', '2']
    >>> grads = torch.cat([p.grad.reshape(-1) for p in net[2].parameters()])
    >>> math.isclose(flow.rows[1].norm, grads.norm().item(), rel_tol=1e-6)
    True
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .nodes import ACCUMULATE
from .recorder import BackwardRecord

__all__ = ["FlowRow", "GradientFlow", "gradient_flow"]


@dataclass(frozen=True)
class FlowRow:
    """Gradient sizes of one parameter or one module (its parameters together).

    Attributes:
        name: parameter name or module name (``""`` for the model's own
            parameters; ``"node <id>"`` for an unnamed leaf).
        numel: number of gradient entries.
        norm: 2-norm of the gradient.
        mean_abs: mean of the absolute values.
        max_abs: largest absolute value.
        nodes: the AccumulateGrad node ids it covers.
    """

    name: str
    numel: int
    norm: float
    mean_abs: float
    max_abs: float
    nodes: tuple[int, ...]

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.norm, self.mean_abs, self.max_abs))


@dataclass
class GradientFlow:
    """Rows in forward order (first layer first); see :func:`gradient_flow`."""

    rows: list[FlowRow]
    by: str
    record: BackwardRecord

    def table(self) -> str:
        """A fixed-width text table, one row per parameter or module."""
        width = max([len(r.name) for r in self.rows] + [len(self.by)])
        head = f"{self.by:<{width}}  {'numel':>9}  {'norm':>10}  {'mean|g|':>10}  "
        lines = [head + f"{'max|g|':>10}"]
        for r in self.rows:
            lines.append(
                f"{r.name:<{width}}  {r.numel:>9,}  {r.norm:>10.3e}  "
                f"{r.mean_abs:>10.3e}  {r.max_abs:>10.3e}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def ratio(self) -> float:
        """Largest over smallest gradient norm among rows (inf if one is 0):
        a quick number for "vanishing" (huge ratio) along the depth."""
        norms = [r.norm for r in self.rows]
        low = min(norms, default=0.0)
        return math.inf if low == 0 else max(norms) / low

    def plot(self, path: str | os.PathLike, title: str | None = None) -> str:
        """The gradient-flow plot: max and mean |g| per layer, log scale, with
        zero gradients (vanishing) and inf/NaN (exploding) marked; writes
        ``path`` (format from its suffix) and returns it. Needs matplotlib."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = range(len(self.rows))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(self.rows) + 2), 4.2))
        try:
            for attr, label, alpha in (
                ("max_abs", "max |grad|", 0.35),
                ("mean_abs", "mean |grad|", 0.9),
            ):
                values = [getattr(r, attr) for r in self.rows]
                shown = [v if math.isfinite(v) and v > 0 else math.nan for v in values]
                ax.bar(xs, shown, alpha=alpha, label=label)
            tiny, huge = self._marks()
            if tiny:
                ax.scatter(
                    tiny,
                    [self._floor()] * len(tiny),
                    marker="v",
                    s=60,
                    label="zero gradient (vanishing)",
                    zorder=3,
                )
            if huge:
                ax.scatter(
                    huge,
                    [self._ceiling()] * len(huge),
                    marker="^",
                    s=60,
                    label="inf/NaN gradient (exploding)",
                    zorder=3,
                )
            ax.set_yscale("log")
            ax.set_xticks(
                list(xs),
                [r.name for r in self.rows],
                rotation=70,
                ha="right",
                fontsize=7,
            )
            ax.set_xlabel(f"{self.by} (forward order)")
            ax.set_ylabel("gradient magnitude")
            ax.set_title(title or "gradient flow")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            fig.savefig(os.fspath(path))
        finally:
            plt.close(fig)
        return os.fspath(path)

    def _marks(self) -> tuple[list[int], list[int]]:
        tiny = [i for i, r in enumerate(self.rows) if r.finite and r.max_abs == 0]
        huge = [i for i, r in enumerate(self.rows) if not r.finite]
        return tiny, huge

    def _positive(self) -> list[float]:
        return [
            v
            for r in self.rows
            for v in (r.mean_abs, r.max_abs)
            if math.isfinite(v) and v > 0
        ] or [1.0]

    def _floor(self) -> float:
        return min(self._positive()) / 10

    def _ceiling(self) -> float:
        return max(self._positive()) * 10

    def _picture(self, options: dict) -> dict:
        lines, shade = {}, {}
        for r in self.rows:
            for node in r.nodes:
                flow = self.record.calls[-1].incoming[node][0]
                lines[node] = [
                    f"|g| {flow.norm:.3g} · mean {flow.mean_abs:.2g} · "
                    f"max {flow.max_abs:.2g}"
                ]
                shade[node] = flow.norm if math.isfinite(flow.norm) else 0.0
        options.setdefault("title", "gradient flow: |grad| at each parameter")
        return {"lines": lines, "shade": shade} | options

    def to_dot(self, **options: Any) -> str:
        """DOT text: each parameter's box shows its gradient's norm, mean and
        max and is shaded by the norm; options as for
        :func:`gradgraph.render.emphasis.emphasized_dot`."""
        from .render.emphasis import emphasized_dot

        return emphasized_dot(self.record.graph, **self._picture(options))

    def render(self, path: str | os.PathLike, format: str = "svg", **options) -> str:
        """Write :meth:`to_dot`'s picture to ``path``; returns it."""
        from .render.emphasis import render_emphasized

        return render_emphasized(
            self.record.graph, path, format, **self._picture(options)
        )


def _nan_max(values: list[float]) -> float:
    """max() that returns NaN when any value is NaN (plain max() depends on order)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def gradient_flow(
    record: BackwardRecord, by: str = "module", call: int = -1
) -> GradientFlow:
    """Per module (or parameter) norm, mean and max |grad| of one recorded backward.

    Args:
        record: from :func:`gradgraph.record_backward` (pass ``model=`` there
            so parameters have names and modules).
        by: ``"module"`` (a parameter belongs to the module its name is in:
            ``layers.0.mlp.up.weight`` -> ``layers.0.mlp.up``) or
            ``"parameter"``.
        call: which recorded backward call (default the last).

    Returns:
        A :class:`GradientFlow` with one row per module or parameter, in
        forward order (the reverse of the order backward reached them).
    """
    if by not in ("module", "parameter"):
        raise ValueError(f"by={by!r}; use 'module' or 'parameter'.")
    if not isinstance(record, BackwardRecord):
        raise TypeError(
            "gradient_flow() takes a record from gradgraph.record_backward(loss, "
            f"model=model), got {type(record).__name__}."
        )
    if not record.calls:
        raise ValueError("the record holds no backward call; run one first.")
    try:
        ran = record.calls[call]
    except IndexError:
        raise ValueError(
            f"call={call} but the record holds {len(record.calls)} call(s)."
        ) from None
    nodes = record.graph.dag.nodes
    leaves = [
        n
        for n in reversed(ran.order)
        if nodes[n]["kind"] == ACCUMULATE and ran.incoming.get(n)
    ]
    groups: dict[str, list[int]] = {}
    for node in leaves:
        name = nodes[node].get("name") or f"node {node}"
        key = _module_of(name) if by == "module" and nodes[node].get("name") else name
        groups.setdefault(key, []).append(node)
    rows = []
    for key, members in groups.items():
        flows = [ran.incoming[n][0] for n in members]
        flows = [f for f in flows if f.norm is not None and f.mean_abs is not None]
        if not flows:
            continue
        sizes = [math.prod(f.shape) for f in flows]
        numel = sum(sizes)
        rows.append(
            FlowRow(
                name=key,
                numel=numel,
                norm=math.sqrt(sum(f.norm**2 for f in flows)),
                mean_abs=sum(f.mean_abs * k for f, k in zip(flows, sizes, strict=True))
                / max(numel, 1),
                max_abs=_nan_max([f.max_abs for f in flows]),
                nodes=tuple(members),
            )
        )
    return GradientFlow(rows, by, record)
