"""The HTML viewer in headless Chromium: page size, opening time, interaction latency.

For each graph (a 1,000-node chain, a deep Linear/LayerNorm/Tanh model with
modules recorded, of about 2,400 and 12,000 nodes; ``--big`` adds the
100,000-node one) it writes ``to_html()`` and measures:

- ``page MB`` and ``to_html s`` (Python: fold, nest, layout of the no-JS SVG);
- ``open s``: from navigation to the viewer's first layout drawn;
- ``wheel ms``: one wheel zoom step, event to the next painted frame (median
  of 20);
- ``unfold ms`` / ``fold ms``: a click on a folded box until the next frame
  (dagre relayout included), and the click on its frame that folds it back;
- ``search ms``: typing an op name and Enter (unfolds the boxes around the
  first match, zooms to it) until the next frame.

Run: ``.venv/bin/python benchmarks/bench_viewer.py [--big]``. Needs chromium
and chromedriver (``make setup``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_render import big_model_graph, chain
from common import machine, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradgraph import trace  # noqa: E402
from tools.browser_check import open_browser  # noqa: E402

NEXT_FRAME = """
const done = arguments[arguments.length - 1];
const t0 = performance.now();
(new Function(arguments[0]))();
requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0)));
"""
WHEEL = """
const svg = document.querySelector('.gg-svg'), r = svg.getBoundingClientRect();
svg.dispatchEvent(new WheelEvent('wheel', {deltaY: %d, clientX: r.left + r.width / 2,
  clientY: r.top + r.height / 2, bubbles: true, cancelable: true}));
"""
CLICK = """
const c = document.querySelector('.gg-canvas').getBoundingClientRect();
const inView = [...document.querySelectorAll('%s')].filter(e => {
  const r = e.getBoundingClientRect();
  return r.top > c.top && r.bottom < c.bottom && r.left > c.left && r.right < c.right;
});
inView[inView.length - 1].dispatchEvent(new MouseEvent('click', {bubbles: true}));
"""
SEARCH = """
const box = document.querySelector('.gg-search');
box.value = '%s';
box.dispatchEvent(new Event('input'));
box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}));
"""


def model(layers: int):
    loss, net, rec = big_model_graph(layers)
    return trace(loss, model=net, modules=rec)


def measure(browser, graph, page: Path, query: str) -> list[str]:
    start = time.perf_counter()
    text = graph.to_html(page)
    build = time.perf_counter() - start
    start = time.perf_counter()
    browser.get(page.as_uri())
    while (
        browser.execute_script(
            "return document.querySelector('.gg-root').getAttribute('data-gg-ready')"
        )
        != "2"
    ):
        time.sleep(0.05)
    opened = time.perf_counter() - start
    run = lambda js: browser.execute_async_script(NEXT_FRAME, js)  # noqa: E731
    wheel = statistics.median(run(WHEEL % (100 if i % 2 else -100)) for i in range(20))
    unfold = run(CLICK % ".gg-box")
    fold = run(CLICK % ".gg-frame text")
    search = run(SEARCH % query)
    return [
        f"{len(graph):,}",
        f"{len(text.encode()) / 1e6:.2f}",
        f"{build:.1f}",
        f"{opened:.1f}",
        f"{wheel:.0f}",
        f"{unfold:.0f}",
        f"{fold:.0f}",
        f"{search:.0f}",
    ]


def main() -> None:
    cases = [
        ("chain", lambda: trace(chain(1000).sum()), "sin"),
        ("Linear/LayerNorm/Tanh ×300", lambda: model(300), "layernorm"),
        ("Linear/LayerNorm/Tanh ×1,500", lambda: model(1500), "layernorm"),
    ]
    if "--big" in sys.argv:
        cases.append(("Linear/LayerNorm/Tanh ×12,500", lambda: model(12500), "tanh"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        browser = open_browser(Path(tmp) / "profile")
        try:
            for name, build, query in cases:
                page = Path(tmp) / "page.html"
                rows.append([name, *measure(browser, build(), page, query)])
                print(rows[-1], flush=True)
        finally:
            browser.quit()
    print(machine())
    header = [
        "graph",
        "nodes",
        "page MB",
        "to_html s",
        "open s",
        "wheel ms",
        "unfold ms",
        "fold ms",
        "search ms",
    ]
    print(table(rows, header))


if __name__ == "__main__":
    main()
