"""examples/hessian_notebook.ipynb runs headless, top to bottom, without errors.

The kernel is this interpreter (the venv's ipykernel), registered under a
temporary JUPYTER_PATH, so the test needs no `jupyter kernelspec install` and
ignores kernels registered on the machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOK = EXAMPLES / "hessian_notebook.ipynb"
KERNEL = "gradgraph-test-venv"


def register_this_python(jupyter_dir: Path) -> None:
    spec = jupyter_dir / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "gradgraph tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))


def test_notebook_executes_and_shows_graphs_inline(tmp_path, monkeypatch):
    register_this_python(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("GRADGRAPH_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=600,
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    rich = [o for o in outputs if o.output_type in ("execute_result", "display_data")]
    graphs = [o for o in rich if "image/svg+xml" in o.data]
    plots = [o for o in rich if "image/png" in o.data]
    assert len(graphs) >= 7, "every section's GradGraph should display as SVG"
    assert all("<svg" in o.data["image/svg+xml"] for o in graphs)
    assert len(plots) >= 3, "the fit, the diagonal and the density plots"
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Third derivative at x=1.0: 24.0" in printed
    assert "gradgraph.hvp matches the dense Hessian times v" in printed
