"""The HTML viewer in a real browser: headless Debian Chromium through selenium.

``make setup`` installs ``chromium`` and ``chromium-driver`` when they are
missing. Pages are opened from file://; the tests click nodes, folded boxes,
their frames and the links in the details panel, type in the search box, and
open the page with JavaScript switched off. Screenshots go to ``out/``.
Latency is measured in ``benchmarks/bench_viewer.py``, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from gradgraph import trace
from gradgraph.render.html import html_fragment
from tools.browser_check import open_browser

from .cases import mlp
from .test_render_collapse import chain_graph

OUT = Path(__file__).resolve().parent.parent / "out"
HANG = 180  # seconds: only to catch a hang


def _start(tmp_path, javascript=True):
    drv = open_browser(tmp_path / "profile", javascript=javascript)
    drv.set_page_load_timeout(HANG)
    drv.set_script_timeout(HANG)
    return drv


@pytest.fixture
def browser(tmp_path):
    drv = _start(tmp_path)
    try:
        yield drv
    finally:
        drv.quit()


def _open(browser, page):
    browser.get(page.as_uri())
    ready = browser.execute_script(
        "return [...document.querySelectorAll('.gg-root')]"
        ".map(r => r.getAttribute('data-gg-ready'))"
    )
    assert ready and set(ready) == {"2"}, ready  # every viewer started


def _attr(browser, name, root=0):
    return browser.execute_script(
        "return document.querySelectorAll('.gg-root')[arguments[1]]"
        ".getAttribute(arguments[0])",
        name,
        root,
    )


def _in_view(browser, selector, root=0):
    """Elements matching ``selector`` drawn wholly inside the canvas."""
    return browser.execute_script(
        "const root = document.querySelectorAll('.gg-root')[arguments[1]];"
        "const c = root.querySelector('.gg-canvas').getBoundingClientRect();"
        "return [...root.querySelectorAll(arguments[0])].filter(e => {"
        " const r = e.getBoundingClientRect();"
        " return r.top >= c.top && r.bottom <= c.bottom && r.left >= c.left"
        " && r.right <= c.right; });",
        selector,
        root,
    )


def _open_chain(browser, tmp_path):
    """A 1,000-node chain (folded to ~200 boxes) opened in the browser."""
    graph = chain_graph(1000)
    page = tmp_path / "chain.html"
    graph.to_html(page)
    _open(browser, page)
    return graph


def _shot(browser, name):
    OUT.mkdir(exist_ok=True)
    browser.save_screenshot(str(OUT / name))
    assert (OUT / name).stat().st_size > 10_000


def test_viewer_shows_nodes_and_fills_details_on_click(browser, tmp_path):
    out, kw = mlp()
    graph = trace(out, **kw)
    weight = graph.nodes_by_op("AccumulateGrad")[0]
    graph.dag.nodes[weight]["name"] = "<script>alert(1)</script>"
    graph.dag.nodes[0]["source"] = "train.py:7 in step: loss = mse(model(x), y)"
    page = tmp_path / "graph.html"
    graph.to_html(page, show_saved=True)
    _open(browser, page)

    nodes = browser.find_elements(By.CSS_SELECTOR, ".gg-canvas g.gg-node")
    assert len(nodes) == len(graph)  # small: nothing folded
    assert browser.execute_script("return typeof alert_called") == "undefined"

    browser.find_element(By.CSS_SELECTOR, f"g[data-id='{weight}']").click()
    panel = browser.find_element(By.CSS_SELECTOR, ".gg-details")
    assert "<script>alert(1)</script>" in panel.text  # shown as text
    assert "AccumulateGrad" in panel.text
    assert panel.find_elements(By.TAG_NAME, "script") == []

    browser.find_element(By.CSS_SELECTOR, "g[data-id='0']").click()
    assert "train.py:7 in step" in panel.text
    assert "MseLossBackward0" in panel.text and "seq_nr" in panel.text

    box = browser.find_element(By.CSS_SELECTOR, ".gg-search")
    box.send_keys("Addmm")
    count = browser.find_element(By.CSS_SELECTOR, ".gg-count").text
    assert count == f"{len(graph.nodes_by_op('AddmmBackward0'))} found"
    box.send_keys(Keys.ENTER)
    assert "AddmmBackward0" in panel.text
    _shot(browser, "render_browser.png")


def test_inputs_and_consumers_are_links(browser, tmp_path):
    out, kw = mlp()
    graph = trace(out, **kw)
    page = tmp_path / "graph.html"
    graph.to_html(page)
    _open(browser, page)
    addmm = graph.nodes_by_op("AddmmBackward0")[0]
    browser.find_element(By.CSS_SELECTOR, f"g[data-id='{addmm}']").click()
    panel = browser.find_element(By.CSS_SELECTOR, ".gg-details")
    links = panel.find_elements(By.CSS_SELECTOR, "a.gg-link")
    # inputs: the next functions; consumers: the nodes that list it as one
    inputs = sorted(graph.dag.successors(addmm))
    consumers = sorted(graph.dag.predecessors(addmm))
    named = [int(a.text.rsplit("#", 1)[1]) for a in links]
    assert sorted(named) == sorted(inputs + consumers)
    target = consumers[0]
    next(a for a in links if a.text.endswith(f"#{target}")).click()
    assert f"#{target}" not in panel.text or "id" in panel.text
    selected = browser.find_elements(By.CSS_SELECTOR, "g.gg-node.gg-selected")
    assert [s.get_attribute("data-id") for s in selected] == [str(target)]
    assert graph.dag.nodes[target]["op"] in panel.text.splitlines()[0]


def test_viewer_zooms_with_the_wheel(browser, tmp_path):
    x = torch.ones(3, requires_grad=True)
    page = tmp_path / "small.html"
    trace((x.exp() * 2).sum(), names={x: "x"}).to_html(page)
    _open(browser, page)
    scale = float(_attr(browser, "data-scale"))
    browser.execute_script(
        "var s = document.querySelector('.gg-svg'), r = s.getBoundingClientRect();"
        "s.dispatchEvent(new WheelEvent('wheel', {deltaY: -100,"
        " clientX: r.left + r.width / 2, clientY: r.top + r.height / 2,"
        " bubbles: true, cancelable: true}));"
    )
    assert float(_attr(browser, "data-scale")) > scale  # zoomed in
    browser.find_element(By.CSS_SELECTOR, ".gg-fit").click()
    assert float(_attr(browser, "data-scale")) < float(scale) * 1.5


def test_big_graph_opens_folded_and_legible(browser, tmp_path):
    graph = _open_chain(browser, tmp_path)
    units = int(_attr(browser, "data-units"))
    assert units < len(graph) // 3  # folded
    assert float(_attr(browser, "data-scale")) >= 0.75
    titles = _in_view(browser, ".gg-node .gg-t")
    assert len(titles) >= 3
    heights = [t.rect["height"] for t in titles]
    assert min(heights) >= 9  # text at least 9 px tall on screen
    assert browser.find_element(By.CSS_SELECTOR, ".gg-mini").is_displayed()
    _shot(browser, "render_browser_big.png")


def test_folded_box_unfolds_in_place_and_folds_back(browser, tmp_path):
    _open_chain(browser, tmp_path)
    units = int(_attr(browser, "data-units"))
    box = _in_view(browser, "g.gg-box")[-1]
    members = browser.execute_script(
        "return JSON.parse(document.querySelector('.gg-data').textContent)"
        ".boxes[arguments[0]][4]",
        int(box.get_attribute("data-box")),
    )
    before = box.rect
    box.click()
    assert int(_attr(browser, "data-frames")) == 1
    assert int(_attr(browser, "data-units")) == units - 1 + members
    frame = _in_view(browser, ".gg-frame")
    assert len(frame) == 1
    # in place: the frame starts near where the box was (same column)
    assert (
        abs(
            frame[0].rect["x"]
            + frame[0].rect["width"] / 2
            - before["x"]
            - before["width"] / 2
        )
        < 60
    )
    _shot(browser, "render_browser_unfold.png")
    frame[0].find_element(By.TAG_NAME, "text").click()
    assert int(_attr(browser, "data-frames")) == 0
    assert int(_attr(browser, "data-units")) == units


def test_search_finds_nodes_inside_folded_boxes(browser, tmp_path):
    graph = _open_chain(browser, tmp_path)
    assert browser.find_elements(By.CSS_SELECTOR, "g.gg-node[data-id='500']") == []
    search = browser.find_element(By.CSS_SELECTOR, ".gg-search")
    search.send_keys("#500")
    assert browser.find_element(By.CSS_SELECTOR, ".gg-count").text == "1 found"
    search.send_keys(Keys.ENTER)
    node = _in_view(browser, "g.gg-node[data-id='500']")
    assert len(node) == 1  # unfolded around it, and in view
    assert "gg-selected" in node[0].get_attribute("class")
    assert float(_attr(browser, "data-scale")) >= 0.8  # zoomed to a legible scale
    panel = browser.find_element(By.CSS_SELECTOR, ".gg-details").text
    assert graph.dag.nodes[500]["op"] in panel and "500" in panel


def test_two_displays_of_one_graph_on_one_page(browser, tmp_path):
    graph = chain_graph(300)
    one = html_fragment(graph, height="420px")
    two = html_fragment(graph, height="420px")
    page = tmp_path / "two.html"
    page.write_text(f"<!doctype html><meta charset=utf-8><body>{one}{two}</body>")
    _open(browser, page)
    ids = browser.execute_script(
        "return [...document.querySelectorAll('[id]')].map(e => e.id)"
    )
    assert len(ids) == len(set(ids))
    units = [int(_attr(browser, "data-units", r)) for r in (0, 1)]
    assert units[0] == units[1]
    box = _in_view(browser, "g.gg-box", root=1)[-1]
    box.click()
    assert int(_attr(browser, "data-frames", 1)) == 1  # the second one unfolded
    assert int(_attr(browser, "data-frames", 0)) == 0  # the first did not
    search = browser.find_elements(By.CSS_SELECTOR, ".gg-search")
    assert len(search) == 2
    search[0].send_keys("#7")
    search[0].send_keys(Keys.ENTER)
    panels = browser.find_elements(By.CSS_SELECTOR, ".gg-details")
    assert graph.dag.nodes[7]["op"] in panels[0].text
    roots = browser.find_elements(By.CSS_SELECTOR, ".gg-root")
    chosen = [r.find_elements(By.CSS_SELECTOR, "g.gg-selected") for r in roots]
    assert [e.get_attribute("data-id") for e in chosen[0]] == ["7"]
    assert chosen[1] == []  # its own selection (the unfolded box) is a frame now
    assert int(_attr(browser, "data-frames", 1)) == 1  # untouched by the search


def test_without_javascript_a_full_size_svg_shows(tmp_path):
    graph = chain_graph(1000)
    page = tmp_path / "chain.html"
    graph.to_html(page)
    browser = _start(tmp_path, javascript=False)
    try:
        browser.get(page.as_uri())
        assert browser.find_elements(By.CSS_SELECTOR, "input, button") == []
        svg = browser.find_element(By.CSS_SELECTOR, ".gg-static svg")
        natural = float(svg.get_attribute("height").removesuffix("pt")) * 4 / 3
        assert svg.rect["height"] == pytest.approx(natural, rel=0.01)  # not shrunk
        scroll = browser.execute_script(
            "const s = document.querySelector('.gg-static');"
            "return [s.scrollHeight, s.clientHeight];"
        )
        assert scroll[0] > scroll[1] > 100  # it scrolls
        _shot(browser, "render_browser_nojs.png")
    finally:
        browser.quit()
