"""The examples and the gallery: ``gradgraph demo`` runs every example once.

Each example asserts its own numbers (against torch or a dense float64
reference computed in the same script), so an example that exits 0 has passed
its checks. ``GRADGRAPH_FAST=1`` shortens the 1000-epoch fit and the spectral
density; everything else runs as in ``make demo``.
"""

from __future__ import annotations

import html.parser
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gradgraph.cli import PACKAGED_EXAMPLES, demo, find_examples
from gradgraph.gallery import _inline_code, example_story

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = find_examples(ROOT / "examples")


class _Images(html.parser.HTMLParser):
    """Collect the gallery's sections and the image sources in each."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self._current: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._current = attrs["id"]
            self.sections[self._current] = []
        elif tag == "img" and self._current is not None:
            self.sections[self._current].append(attrs["src"])


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Run ``python -m gradgraph demo`` once (short mode) into a temp folder."""
    out = tmp_path_factory.mktemp("gallery")
    env = dict(os.environ, GRADGRAPH_FAST="1")
    proc = subprocess.run(
        [sys.executable, "-m", "gradgraph", "demo", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    page = (out / "index.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(page)
    return proc, out, page, parser.sections


def test_every_seed_section_has_an_example():
    numbers = [p.name[:2] for p in EXAMPLES]
    assert numbers[:7] == ["00", "01", "02", "03", "04", "05", "06"], numbers


def test_examples_ship_inside_the_package():
    """gradgraph/examples is the same folder, so an installed demo finds them."""
    assert [p.name for p in find_examples(PACKAGED_EXAMPLES)] == [
        p.name for p in EXAMPLES
    ]
    assert (PACKAGED_EXAMPLES / "simplenet.py").is_file()
    assert (PACKAGED_EXAMPLES / "tiny_models.py").is_file()


def test_tiny_models_import_without_transformers():
    """The shared tiny configs import transformers only to build a model, and a
    size the model has no use for is a TypeError before that."""
    code = """
import sys
sys.modules["transformers"] = None  # as if it were not installed
from gradgraph.examples import tiny_models
try:
    tiny_models.bloom(positions=8)
except TypeError as exc:
    assert "BloomConfig has no size ['positions']" in str(exc), exc
else:
    raise AssertionError("no TypeError")
try:
    tiny_models.gpt2()
except ImportError:
    print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_demo_runs_all_examples_with_a_progress_line_each(gallery):
    proc, _, _, _ = gallery
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, script in enumerate(EXAMPLES, 1):
        line = rf"\[{i}/{len(EXAMPLES)}\] {re.escape(script.name)} \.\.\. ok in "
        assert re.search(line, proc.stdout), proc.stdout
    assert "gallery: " in proc.stdout


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_section_has_story_pictures_and_output(gallery, script):
    _, out, page, sections = gallery
    title, explanation = example_story(script)
    assert title and explanation, f"{script.name} needs a module docstring"
    assert f"<h2>{_inline_code(title)}</h2>" in page
    assert _inline_code(explanation) in page
    assert script.stem in sections, f"no gallery section for {script.name}"
    pictures = sections[script.stem]
    assert pictures, f"{script.name} wrote no picture under $GRADGRAPH_OUT"
    for src in pictures:
        path = out / src
        assert path.is_file() and path.stat().st_size > 0, src
        if path.suffix == ".svg":
            assert ET.parse(path).getroot().tag.endswith("svg"), src
        else:
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert "<span class='status'>ok</span>" in page.split(f"id='{script.stem}'")[1]


def test_seed_numbers_are_printed(gallery):
    """What the notebook printed, printed again (numbers asserted in the scripts)."""
    _, _, page, _ = gallery
    for text in (
        "o2.grad_fn.next_functions[1][0] is o1.grad_fn: True",
        "Epoch 0, Loss:",
        "Call after zeroing gradients",
        "Third derivative at x=1.0: 24.0",
        "torch.Size([10, 10]) torch.Size([10, 10]) torch.Size([10, 10])",
        "linear.2.weight  numel 100 -&gt;  10000 numbers",
    ):
        assert text in page, text


def test_a_failing_example_fails_the_demo_and_shows_in_the_page(tmp_path, capsys):
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "01_fine.py").write_text('"""Fine.\n\nRuns."""\nprint("hi")\n')
    (examples / "02_broken.py").write_text(
        '"""Broken.\n\nRaises."""\nraise SystemExit("it broke")\n'
    )
    assert demo(str(tmp_path / "out"), str(examples)) == 1
    page = (tmp_path / "out" / "index.html").read_text()
    assert "1 of 2 examples ran without error" in page
    assert "class='example failed'" in page and "it broke" in page
    assert "02_broken.py ... FAILED (exit 1)" in capsys.readouterr().out


def test_demo_without_examples_says_where_it_looked(tmp_path, capsys):
    assert demo(str(tmp_path / "out"), str(tmp_path)) == 2
    assert "no NN_*.py example scripts found" in capsys.readouterr().err


def test_gallery_page_loads_every_image_in_chromium(gallery):
    """tools/browser_check.py in headless Chromium: every picture loads; the
    screenshot lands in out/gallery.png to look at."""
    _, out, _, sections = gallery
    shot = Path(__file__).resolve().parent.parent / "out" / "gallery.png"
    shot.parent.mkdir(exist_ok=True)
    check = Path(__file__).resolve().parent.parent / "tools" / "browser_check.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(check),
            str(out / "index.html"),
            "--screenshot",
            str(shot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pictures = sum(len(p) for p in sections.values())
    assert f"{pictures} images, 0 broken" in proc.stdout
    assert shot.stat().st_size > 10_000
