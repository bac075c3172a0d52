"""The Jupyter example runs and shows the viewer, the listing and make_dot's SVG."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "rendering.ipynb"


def test_rendering_notebook_runs_and_displays_the_viewer():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    viewer, listing, dot = (
        {k: v for o in c["outputs"] for k, v in o.get("data", {}).items()}
        | {"text": "".join(o.get("text", "") for o in c["outputs"])}
        for c in nb.cells[1:]
    )
    html = viewer["text/html"]
    assert html.startswith('<div class="gg-root"') and "AddmmBackward0" in html
    assert "@0" in listing["text"] and "(root)" in listing["text"]
    assert "<svg" in dot["image/svg+xml"]
