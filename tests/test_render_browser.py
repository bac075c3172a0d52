"""The HTML viewer in a real browser: headless Debian Chromium through selenium.

``make setup`` installs ``chromium`` and ``chromium-driver`` when they are
missing. The test opens the page from file://, checks that the SVG nodes are
there, clicks one, reads the details panel, types in the search box, and
saves a screenshot to ``out/render_browser.png``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from gradgraph import trace
from tools.browser_check import HEADLESS_FLAGS

from .cases import mlp

OUT = Path(__file__).resolve().parent.parent / "out"
FLAGS = (*HEADLESS_FLAGS, "--window-size=1400,900")


@pytest.fixture
def browser(tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "the browser test needs Debian's chromium and chromium-driver "
            "(make setup installs them: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    drv = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield drv
    finally:
        drv.quit()


def test_viewer_shows_nodes_and_fills_details_on_click(browser, tmp_path):
    out, kw = mlp()
    graph = trace(out, **kw)
    weight = graph.nodes_by_op("AccumulateGrad")[0]
    graph.dag.nodes[weight]["name"] = "<script>alert(1)</script>"
    graph.dag.nodes[0]["source"] = "train.py:7 in step: loss = mse(model(x), y)"
    page = tmp_path / "graph.html"
    graph.to_html(page, show_saved=True)

    browser.get(page.as_uri())
    nodes = browser.find_elements(By.CSS_SELECTOR, ".gg-canvas g.node")
    assert len(nodes) >= len(graph)
    assert browser.execute_script("return typeof alert_called") == "undefined"

    browser.find_element(By.CSS_SELECTOR, f"g#n{weight}").click()
    panel = browser.find_element(By.CSS_SELECTOR, ".gg-details")
    assert "<script>alert(1)</script>" in panel.text  # shown as text
    assert "AccumulateGrad" in panel.text
    assert panel.find_elements(By.TAG_NAME, "script") == []

    browser.find_element(By.CSS_SELECTOR, "g#n0").click()
    assert "train.py:7 in step" in panel.text
    assert "MseLossBackward0" in panel.text and "seq_nr" in panel.text

    box = browser.find_element(By.CSS_SELECTOR, ".gg-search")
    box.send_keys("Addmm")
    count = browser.find_element(By.CSS_SELECTOR, ".gg-count").text
    assert count == f"{len(graph.nodes_by_op('AddmmBackward0'))} found"
    box.send_keys(Keys.ENTER)
    assert "AddmmBackward0" in panel.text

    OUT.mkdir(exist_ok=True)
    shot = OUT / "render_browser.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_viewer_zooms_with_the_wheel(browser, tmp_path):
    x = torch.ones(3, requires_grad=True)
    page = tmp_path / "small.html"
    trace((x.exp() * 2).sum(), names={x: "x"}).to_html(page)
    browser.get(page.as_uri())
    svg = browser.find_element(By.CSS_SELECTOR, ".gg-canvas svg")

    def view_width():
        box = browser.execute_script("return arguments[0].getAttribute('viewBox')", svg)
        return float(box.split()[2])

    width = view_width()
    browser.execute_script(
        "var r = arguments[0].getBoundingClientRect();"
        "arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -100,"
        " clientX: r.left + r.width / 2, clientY: r.top + r.height / 2,"
        " bubbles: true, cancelable: true}));",
        svg,
    )
    assert view_width() < width  # zoomed in
    browser.find_element(By.CSS_SELECTOR, ".gg-fit").click()
    assert view_width() == pytest.approx(width)
