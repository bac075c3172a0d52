"""GradGraph -> DOT text, and through graphviz's ``dot`` to SVG/PNG/PDF.

The DOT text is written directly (no ``graphviz.Digraph.node()`` call per node):
node names are ``n<id>``, nodes and edges come in id order, and every label
is an HTML-like label whose text goes through one escaping table, so user
strings (parameter names, module names) can hold ``<``, ``&``, quotes,
newlines or any unicode and still show as text. The same program gives the
same DOT text and the same SVG bytes on every run.

Nodes are grouped into one band (cluster) per derivative order when the graph
has orders (forward graph -> gradient graph -> HVP graph), and into one
cluster per module when nodes carry a ``module``.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> x = torch.ones(2, requires_grad=True)
    >>> print(to_dot(trace(x.sum())).splitlines()[0])
    digraph gradgraph {
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import graphviz

from ..graph import GradGraph
from ..nodes import ACCUMULATE, CHAIN, MODULE, MORE, OP
from .collapse import collapse as collapse_graph
from .collapse import parameter_module
from .fold import DEFAULT_MAX_NODES
from .style import (
    FONT,
    FREED,
    SAVED,
    Theme,
    edge_style,
    node_style,
    order_band,
    style_kind,
    theme,
)
from .text import shape_text

INSTALL_HINT = (
    "the graphviz 'dot' program is not installed or not on PATH; install it with "
    "'apt-get install graphviz' (Debian/Ubuntu), 'brew install graphviz' (macOS) or "
    "'conda install graphviz'. to_dot(), to_text() and to_json() work without it."
)
FLOWS = ("forward", "backward")
DOT_TIMEOUT_S = 60  # longest a render waits for dot by default
BIG = 400  # boxes above which dot's effort is bounded (see _header)
TEXT_FORMATS = ("dot", "gv")  # written as DOT text, no layout


class DotNotFoundError(RuntimeError):
    """Raised when rendering needs the graphviz ``dot`` binary and it is missing."""


class DotFailedError(RuntimeError):
    """Raised when ``dot`` overran its time limit or died (e.g. out of memory)."""


_HTML = {
    ord("&"): "&amp;",
    ord("<"): "&lt;",
    ord(">"): "&gt;",
    ord('"'): "&quot;",
    ord("'"): "&#39;",
    ord("\n"): "<br/>",
    ord("\\"): "\\\\",  # graphviz expands \N, \G, \l... even in HTML labels
    **{c: None for c in range(32) if c != ord("\n")},
    0x7F: None,
}


def html_text(text: object) -> str:
    """Text for an HTML-like graphviz label: markup characters escaped, control
    characters dropped, newlines as line breaks.

    Example:
        >>> html_text('<b> & "q"')
        '&lt;b&gt; &amp; &quot;q&quot;'
    """
    return str(text).translate(_HTML)


def label(title: str, *lines: str, color: str = "") -> str:
    """An HTML-like label: ``title`` in bold, ``lines`` small (and ``color``)."""
    font = f'<font point-size="9" color="{color}">' if color else "<font>"
    rest = "".join(f"<br/>{font}{html_text(t)}</font>" for t in lines if t)
    return f"<<b>{html_text(title)}</b>{rest}>"


def node_lines(data: dict) -> tuple[str, list[str]]:
    """Title and detail lines of the box for one node (or folded box).

    Nodes of a recorded backward (``record.annotated()``) get one more line:
    how many times the node ran, its step in the first call that ran it, and
    the norm of the gradient that arrived at it.
    """
    title, lines = _box_lines(data)
    if data.get("runs") is not None:
        ran = f"ran {data['runs']}x"
        if data.get("step") is not None:
            ran += f" · step {data['step']}"
        if data.get("grad_norm") is not None:
            ran += f" · |grad| {data['grad_norm']:.4g}"
        lines = [*lines, ran]
    return title, lines


def _box_lines(data: dict) -> tuple[str, list[str]]:
    kind = data["kind"]
    shape = _shapes(data)
    name = data.get("name")
    if kind == ACCUMULATE:
        return _within(name or "AccumulateGrad", data.get("cluster")), [shape]
    if kind in (CHAIN, MODULE, MORE):
        count = len(data["members"])
        size = f"{count:,} node{'' if count == 1 else 's'}"
        if kind == MORE:
            return data["label"], [size]
        if data.get("repeat"):
            n = data["repeat"]
            title = _within(data["label"], data.get("cluster"))
            each = {op: k // n for op, k in data["ops"].items()}
            return title, [f"{n} blocks × {count // n:,} nodes", ops_line(each)]
        if kind == CHAIN:
            size = f"chain of {size}"
        title = data["module"] if kind == MODULE else data["label"]
        title = _within(title, data.get("cluster"))
        return title, [f"{size} · {shape}", ops_line(data["ops"])]
    if name:
        return name, [f"{data['op']} · {shape}"]
    return data["op"], [shape]


def ops_line(ops: dict[str, int], most: int = 4) -> str:
    """What a folded box holds: its commonest ops and its leaf-tensor count.

    Leaf tensors are the AccumulateGrad nodes: parameters and inputs.

    Example:
        >>> ops_line({"AddmmBackward0": 4, "TanhBackward0": 4, "AccumulateGrad": 8})
        'Addmm ×4 · Tanh ×4 · 8 leaf tensors'
    """
    counts = sorted(
        (
            (-n, _BACKWARD.sub("", op))
            for op, n in ops.items()
            if op != "AccumulateGrad"
        ),
    )
    parts = [f"{op} ×{-n:,}" for n, op in counts[:most]]
    if len(counts) > most:
        parts.append(f"+{len(counts) - most} more ops")
    if ops.get("AccumulateGrad"):
        parts.append(f"{ops['AccumulateGrad']:,} leaf tensors")
    return " · ".join(parts)


_BACKWARD = re.compile(r"Backward\d*$")
LONGEST = 44  # characters of a title; longer ones keep their start and end


def _within(name: str, cluster: str | None) -> str:
    """A module name relative to the cluster it is drawn in, cut to fit."""
    if cluster and name.startswith(cluster + "."):
        name = name[len(cluster) + 1 :]
    if len(name) > LONGEST:
        half = (LONGEST - 1) // 2
        name = f"{name[:half]}…{name[-half:]}"
    return name


def _shapes(data: dict) -> str:
    shapes = data.get("shapes")
    if shapes:
        return " ".join(shape_text(data["dtype"], s) for s in shapes)
    return shape_text(data.get("dtype"), data.get("shape"))


def saved_lines(fact: dict) -> tuple[str, list[str]]:
    """Title and detail lines of a saved-tensor box."""
    if fact["freed"]:
        return fact["attr"], ["freed by backward()"]
    size = shape_text(fact["dtype"], fact["shape"])
    of = f" · {fact['of']}" if fact.get("of") else ""
    held = _bytes(fact["nbytes"])
    if fact.get("packed"):
        held += f" · packed by a hook ({fact['packed']})"
    return fact["attr"], [f"{size}{of}", held]


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:g} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def drawn_graph(
    graph: GradGraph,
    collapse: str | bool | None = None,
    max_nodes: int | None = None,
    depth: int | None = None,
) -> GradGraph:
    """The graph as it will be drawn: folded per :mod:`gradgraph.render.collapse`."""
    small = max_nodes is None or len(graph) <= max_nodes
    if not collapse and small and depth is None:
        return graph
    return collapse_graph(graph, collapse, max_nodes=max_nodes, depth=depth)


def _attrs(attrs: dict[str, str]) -> str:
    """``k=v`` pairs; values quoted unless they are plain words."""
    return " ".join(
        f"{k}={v}" if v.isalnum() else f'{k}="{v}"' for k, v in attrs.items()
    )


class _NodeWriter:
    """Writes node lines fast: styles and shape texts are computed once per call.

    Nodes of kind ``op`` (most of any graph) take their style from the ``node``
    defaults, so their lines carry only id, class and label.
    """

    def __init__(self, look: Theme, extra: dict[int, dict]):
        self.look = look
        self.extra = extra
        self.styles = {k: " " + _attrs(v) for k, v in look.kinds.items()}
        self.styles["op"] = ""
        self.font = f'<br/><font point-size="9" color="{look.muted}">'
        self.cache: dict[tuple, str] = {}

    def line(self, node: int, data: dict) -> str:
        key = (
            data["kind"],
            data["op"],
            data.get("name"),
            data.get("input"),
            data.get("dtype"),
            data.get("shape"),
            data.get("shapes"),
        )
        plain = "members" not in data and "attrs" not in data
        body = self.cache.get(key) if plain else None
        if body is None:
            kind = style_kind(data)
            title, lines = node_lines(data)
            lines += data.get("attrs", ())
            rest = "".join(f"{self.font}{html_text(t)}</font>" for t in lines if t)
            body = (
                f'class="{kind}" label=<<b>{html_text(title)}</b>{rest}>'
                f"{self.styles[kind]}"
            )
            if data.get("repeat"):  # n blocks of the same structure: a stack
                body += " peripheries=2"
            if plain:
                self.cache[key] = body
        extra = self.extra.get(node)
        if extra:
            body += "".join(f' {k}="{v}"' for k, v in extra.items())
        return f"n{node} [id=n{node} {body}]\n"


def _saved_lines(node: int, data: dict, look: Theme) -> Iterator[str]:
    """Saved-tensor boxes beside their node (same rank), tied by a dashed line."""
    saved = data.get("saved") or ()
    if not saved:
        return
    ids = [f"n{node}s{i}" for i in range(len(saved))]
    yield f"{{rank=same; n{node}; {'; '.join(ids)}}}\n"
    for sid, fact in zip(ids, saved, strict=True):
        kind = FREED if fact["freed"] else SAVED
        title, lines = saved_lines(fact)
        text = label(title, *lines, color=look.muted)
        style = _attrs(node_style(kind, look))
        yield f'{sid} [id={sid} class="{kind}" label={text} {style}]\n'
        yield f'n{node} -> {sid} [style=dashed dir=none color="{look.saved_edge}"]\n'


def _header(look: Theme, flow: str, title: str | None, boxes: int = 0) -> list[str]:
    if flow not in FLOWS:
        raise ValueError(f"flow={flow!r}; use 'forward' or 'backward'.")
    graph = {
        "newrank": "true",  # one global ranking: 3x less work for dot on chains
        "bgcolor": look.background,
        "fontname": FONT,
        "fontsize": "12",
        "fontcolor": look.text,
        "rankdir": "TB",
        "nodesep": "0.25",
        "ranksep": "0.3",
        "pad": "0.2",
        "labeljust": "l",
        "labelloc": "t",
    }
    if boxes > BIG:  # bound dot's effort: network simplex and crossing passes
        graph.update(nslimit="2", nslimit1="2", mclimit="0.2", searchsize="10")
        graph["remincross"] = "false"
    lines = [
        f"\tgraph [{_attrs(graph)}]\n",
        f'\tnode [fontname="{FONT}" fontsize="10" margin="0.12,0.05" height="0.3"'
        f' penwidth="1.2" {_attrs(look.kinds[OP])}]\n',
        f'\tedge [color="{look.edge}" arrowsize="0.6"]\n',
    ]
    if title:
        lines.append(f"\tlabel={label(title)} labelloc=t\n")
    return lines


def dot_lines(
    graph: GradGraph,
    theme_name: str | Theme = "light",
    edge_labels: bool = False,
    show_saved: bool = False,
    clusters: bool = True,
    flow: str = "forward",
    title: str | None = None,
    extra: dict[int, dict] | None = None,
) -> list[str]:
    """The body of the DOT text of an (already folded) graph, one line each."""
    look = theme(theme_name)
    dag = graph.dag
    lines = _header(look, flow, title, len(graph))
    writer = _NodeWriter(look, extra or {})
    known = {m for _, m in dag.nodes(data="module") if m} if clusters else set()
    groups: dict[int | None, dict[str, list[int]]] = {}
    where: dict[int, str] = {}
    for node, data in sorted(dag.nodes(data=True)):
        module = _cluster_module(data, known) if clusters else None
        order = data.get("order") if clusters else None
        groups.setdefault(order, {}).setdefault(module or "", []).append(node)
        where[node] = module or ""

    def emit(nodes: list[int], indent: str) -> None:
        data_of = dag._node
        for node in nodes:
            data = data_of[node]
            lines.append(indent + writer.line(node, data))
            if show_saved:
                lines.extend(indent + s for s in _saved_lines(node, data, look))

    for order in sorted(groups, key=lambda o: -1 if o is None else o):
        indent = "\t"
        if order is not None:
            band = order_band(order, look)
            lines.append(f"\tsubgraph cluster_order{order} {{\n")
            lines.append(
                f'\t\tgraph [label={label(band["label"])} style="filled,rounded" '
                f'fillcolor="{band["fillcolor"]}" color="{band["color"]}"]\n'
            )
            indent = "\t\t"
        for step in _module_tree(groups[order]):
            kind, value, depth = step
            pad = indent + "\t" * depth
            if kind == "open":
                cid = f"cluster_o{order}_{value[1]}"
                lines.append(f"{pad}subgraph {cid} {{\n")
                pad += "\t"
                style = f'style="rounded,dashed" color="{look.module_border}"'
                lines.append(f"{pad}graph [label={label(value[0])} {style}]\n")
            elif kind == "close":
                lines.append(f"{pad}}}\n")
            else:
                emit(value, pad)
        if order is not None:
            lines.append("\t}\n")
    spaced = where if len(groups.get(None, groups.get(0, {}))) > 1 else None
    lines.extend(_edge_lines(graph, edge_labels, look, flow == "forward", spaced))
    return lines


def _cluster_module(data: dict, known: set[str]) -> str | None:
    """The module cluster a node is drawn in (a module box draws its own)."""
    if "cluster" in data:  # placed by gradgraph.render.fold
        return data["cluster"]
    kind = data["kind"]
    if kind == MODULE:
        parent = data["module"].rsplit(".", 1)[0] if "." in data["module"] else None
        return parent
    module = data.get("module")
    if module is None and kind == ACCUMULATE and known:
        return parameter_module(data.get("name"), known)
    return module


def _module_tree(by_module: dict[str, list[int]]) -> Iterator[tuple]:
    """Open/close/nodes steps that nest module clusters by their dotted names.

    ``encoder.layer.3`` is drawn inside ``encoder.layer`` inside ``encoder``.
    A module that holds a single thing (one node, or one submodule and no node
    of its own) gets no cluster of its own, so a deep path of wrappers is one
    cluster, not a staircase; a cluster is labelled relative to the one around
    it (``layer.3`` inside ``encoder``).
    """
    children: dict[str, set[str]] = {}
    for module in by_module:
        parts = module.split(".") if module else []
        for k in range(len(parts)):
            parent, child = ".".join(parts[:k]), ".".join(parts[: k + 1])
            children.setdefault(parent, set()).add(child)
    ids = {m: f"m{i}" for i, m in enumerate(sorted(children.keys() | by_module.keys()))}

    def walk(module: str, depth: int, outer: str) -> Iterator[tuple]:
        kids = sorted(children.get(module, ()))
        own = by_module.get(module) or []
        drawn = bool(module) and len(own) + len(kids) >= 2
        if drawn:
            name = module[len(outer) + 1 :] if outer else module
            yield ("open", (name, ids[module]), depth)
            depth, outer = depth + 1, module
        if own:
            yield ("nodes", own, depth)
        for child in kids:
            yield from walk(child, depth, outer)
        if drawn:
            yield ("close", None, depth - 1)

    yield from walk("", 0, "")  # recursion depth = module nesting depth (small)


def _edge_lines(
    graph: GradGraph,
    edge_labels: bool,
    look: Theme,
    forward: bool,
    where: dict[int, str] | None = None,
) -> list[str]:
    """One line per edge, in id order; ``forward`` writes it input -> consumer.

    With ``where`` (node -> module cluster), an edge between two clusters
    spans two ranks, leaving a rank for the parameters of the next block:
    otherwise they share a rank with the previous block's output, the two
    clusters overlap in height and dot sets them side by side (a staircase).
    """
    dag = graph.dag
    out = []
    succ = dag._succ
    styles: dict = {}
    for u in sorted(succ):
        targets = succ[u]
        for v in sorted(targets) if len(targets) > 1 else targets:
            data = targets[v]
            kind = data.get("kind")
            if kind not in styles:
                attrs = edge_style(kind, look)
                styles[kind] = _attrs(attrs)
            attrs = styles[kind]
            if edge_labels and "input_nr" in data:
                attrs = f"{attrs} {_edge_label(dag.nodes[v], data, look)}".strip()
            if where is not None and where[u] != where[v] and kind is None:
                attrs = f"{attrs} minlen=2".strip()
            attrs = f" [{attrs}]" if attrs else ""
            line = f"\tn{v} -> n{u}{attrs}\n" if forward else f"\tn{u} -> n{v}{attrs}\n"
            out.append(line)
            if "multiplicity" in data:
                out.extend([line] * (data["multiplicity"] - 1))
    return out


def _edge_label(target: dict, data: dict, look: Theme) -> str:
    """``input_nr: shape`` of the gradient the edge carries, small and muted."""
    shapes = target.get("shapes")
    nr = data.get("output_nr", 0)
    shape = shapes[nr] if shapes and nr < len(shapes) else target.get("shape")
    text = f"{data['input_nr']}: {shape_text('', shape)}"
    font = f'<font point-size="8" color="{look.muted}">'
    return f"label=<{font}{html_text(text)}</font>>"


def to_dot(
    graph: GradGraph,
    *,
    theme: str | Theme = "light",
    edge_labels: bool = False,
    show_saved: bool = False,
    collapse: str | bool | None = None,
    max_nodes: int | None = None,
    depth: int | None = None,
    clusters: bool = True,
    flow: str = "forward",
    title: str | None = None,
) -> str:
    """DOT text of the graph (deterministic; all of it unless folding is asked).

    Args:
        graph: a traced :class:`~gradgraph.GradGraph`.
        theme: ``"light"`` or ``"dark"`` (see :mod:`gradgraph.render.style`).
        edge_labels: label each edge with its ``input_nr`` and the shape of the
            gradient it carries.
        show_saved: draw the tensors each node saved for backward (freed ones
            dashed).
        collapse, max_nodes, depth: fold big graphs (rules in
            :mod:`gradgraph.render.collapse` and :mod:`gradgraph.render.fold`):
            at most ``max_nodes`` boxes, modules expanded ``depth`` levels.
        clusters: draw derivative-order bands and module clusters.
        flow: ``"forward"`` draws inputs at the top and arrows the way data
            flows, like torchviz (the DOT edge of DAG edge ``u -> v`` is
            ``n<v> -> n<u>``); ``"backward"`` draws the outputs at the top and
            arrows along ``next_functions`` (``n<u> -> n<v>``).
        title: a caption above the picture.
    """
    drawn = drawn_graph(graph, collapse, max_nodes, depth)
    body = dot_lines(drawn, theme, edge_labels, show_saved, clusters, flow, title)
    return dot_source(body)


def dot_source(body: list[str]) -> str:
    """The DOT text around body lines from :func:`dot_lines`."""
    return "digraph gradgraph {\n" + "".join(body) + "}\n"


def to_digraph(graph: GradGraph, **options) -> graphviz.Digraph:
    """A ``graphviz.Digraph`` whose ``source`` is :func:`to_dot`'s text."""
    text = to_dot(graph, **options)
    body = text.splitlines(keepends=True)[1:-1]
    return graphviz.Digraph("gradgraph", body=body)


def pipe(
    dot_text: str, format: str = "svg", timeout: float | None = DOT_TIMEOUT_S
) -> bytes:
    """Run graphviz's ``dot`` on DOT text, at most ``timeout`` seconds.

    A missing ``dot`` is a :class:`DotNotFoundError`; one that overruns the
    time limit (it is stopped) or dies is a :class:`DotFailedError` that says
    what to do.
    """
    format = _known_format(format)
    try:
        done = subprocess.run(
            [graphviz.DOT_BINARY, f"-T{format}"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise DotNotFoundError(INSTALL_HINT) from exc
    except subprocess.TimeoutExpired:
        raise DotFailedError(
            f"graphviz 'dot' did not finish within {timeout:g} s on "
            f"{_boxes(dot_text):,} boxes and was stopped; draw fewer boxes "
            "(max_nodes=200, depth=1), give a longer timeout=, or open "
            "to_html(), which lays out folded boxes."
        ) from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        what = (
            f"was killed by signal {-done.returncode} (out of memory?)"
            if done.returncode < 0
            else f"failed ({why[-1] if why else f'exit {done.returncode}'})"
        )
        raise DotFailedError(
            f"graphviz 'dot' {what} on {_boxes(dot_text):,} boxes; draw fewer "
            "boxes (max_nodes=200, depth=1) or open to_html()."
        )
    return done.stdout


def _boxes(dot_text: str) -> int:
    return dot_text.count(" [id=n")


def _known_format(format: str) -> str:
    if not isinstance(format, str) or format.lower() not in graphviz.FORMATS:
        raise ValueError(
            f"format={format!r} is not a graphviz output format; try format='svg', "
            "'png' or 'pdf'."
        )
    return format.lower()


def output_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The format to write ``path`` in, checked before any layout.

    The suffix decides (``g.png`` is a PNG); ``format`` must agree with it. A
    path without a suffix takes ``format`` (default ``svg``). The folder must
    exist and be writable.

    Example:
        >>> output_format("/tmp/graph.png")
        'png'
    """
    target = Path(os.fspath(path))
    suffix = target.suffix.lower().lstrip(".")
    if suffix in graphviz.FORMATS or suffix in TEXT_FORMATS:
        if format is not None and _canonical(format) != _canonical(suffix):
            raise ValueError(
                f"format={format!r} does not match the file name {str(target)!r}; "
                f"drop format= (the suffix .{suffix} decides) or change the suffix."
            )
        chosen = suffix
    elif suffix and format is None:
        raise ValueError(
            f"cannot tell the picture format from {str(target)!r}; end the name "
            "with .svg, .png or .pdf (or .dot for DOT text), or pass format=."
        )
    else:
        chosen = "svg" if format is None else format
    if chosen not in TEXT_FORMATS:
        chosen = _known_format(chosen)
    folder = target.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(
            f"cannot write {str(target)!r}: {str(folder)!r} is not a writable "
            "folder; pick a writable path."
        )
    if target.is_dir():
        raise ValueError(
            f"cannot write {str(target)!r}: it is a folder; pick a writable path."
        )
    return chosen


def _canonical(format: str) -> str:
    format = str(format).lower()
    return {"jpeg": "jpg", "gv": "dot", "tif": "tiff"}.get(format, format)


def to_svg(
    graph: GradGraph,
    *,
    max_nodes: int | None = DEFAULT_MAX_NODES,
    timeout: float | None = DOT_TIMEOUT_S,
    **options,
) -> str:
    """SVG text of the graph, folded to ``max_nodes`` boxes (None: all of it).

    Other options as in :func:`to_dot`; ``timeout`` bounds ``dot``'s run.
    """
    text = to_dot(graph, max_nodes=max_nodes, **options)
    return pipe(text, "svg", timeout).decode("utf-8")


def render(
    graph: GradGraph,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    max_nodes: int | None = DEFAULT_MAX_NODES,
    timeout: float | None = DOT_TIMEOUT_S,
    **options,
) -> str:
    """Write the picture to ``path`` exactly (no extension added); returns it.

    The format comes from the suffix (:func:`output_format`, checked before
    any layout); ``.dot``/``.gv`` write the DOT text. Folded to ``max_nodes``
    boxes (None: all of it); other options as in :func:`to_dot`.
    """
    format = output_format(path, format)
    text = to_dot(graph, max_nodes=max_nodes, **options)
    if format in TEXT_FORMATS:
        return write_file(path, text.encode("utf-8"))
    return write_file(path, pipe(text, format, timeout))


def write_file(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path``; a ValueError naming the path when it fails."""
    path = os.fspath(path)
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise ValueError(
            f"cannot write {path!r}: {exc.strerror}; pick a writable path."
        ) from exc
    return path
