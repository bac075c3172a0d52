"""The example gallery: one HTML page with every example's story and pictures.

``gradgraph demo`` runs the numbered example scripts; each writes its pictures
into ``<out>/<script stem>/``. :func:`write_gallery` then writes
``<out>/index.html``: per example its title and explanation (from the script's
module docstring), its pictures (SVG, or PNG where no SVG of the same name
exists; an HTML file of the same name becomes an "interactive view" link) and
what it printed.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp())
    >>> script = out / "01_hello.py"
    >>> _ = script.write_text("'''1. Hello.\\n\\nSays hello.'''\\nprint(1)\\n")
    >>> example_story(script)
    ('1. Hello.', 'Says hello.')
    >>> run = ExampleRun(script, ok=True, stdout="hello\\n", stderr="", seconds=0.1)
    >>> write_gallery([run], out).name
    'index.html'
"""

from __future__ import annotations

import ast
import html
import re
from dataclasses import dataclass
from pathlib import Path

PICTURE_SUFFIXES = (".svg", ".png")


@dataclass
class ExampleRun:
    """What running one example script gave."""

    script: Path
    ok: bool
    stdout: str
    stderr: str
    seconds: float


def example_story(script: Path) -> tuple[str, str]:
    """The title (docstring's first line) and explanation (its next paragraph).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = Path(tempfile.mkdtemp()) / "02_x.py"
        >>> _ = p.write_text("'''Title.\\n\\nFirst line\\nsecond line.\\n\\nMore.'''")
        >>> example_story(p)
        ('Title.', 'First line second line.')
    """
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    lines = doc.strip().splitlines()
    if not lines:
        return script.stem, ""
    rest = "\n".join(lines[1:]).strip()
    explanation = re.split(r"\n\s*\n", rest)[0] if rest else ""
    return lines[0].strip(), " ".join(explanation.split())


def example_pictures(folder: Path) -> list[tuple[Path, Path | None]]:
    """(picture, interactive page or None) pairs, in the order they were written.

    An SVG hides the PNG of the same name (the PNG is the fallback), and an HTML
    file of the same name is the picture's interactive view.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("fit.png", "fit.svg", "graph.svg", "graph.html"):
        ...     _ = (folder / name).write_text("x")
        >>> sorted((p.name, page and page.name) for p, page in example_pictures(folder))
        [('fit.svg', None), ('graph.svg', 'graph.html')]
    """
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file()]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    stems_with_svg = {p.stem for p in files if p.suffix == ".svg"}
    pictures = []
    for p in files:
        if p.suffix not in PICTURE_SUFFIXES:
            continue
        if p.suffix == ".png" and p.stem in stems_with_svg:
            continue
        page = p.with_suffix(".html")
        pictures.append((p, page if page.is_file() else None))
    return pictures


def _inline_code(text: str) -> str:
    """Escape ``text`` and turn ``code`` spans into <code> elements."""
    return re.sub(r"``(.+?)``", r"<code>\1</code>", html.escape(text))


def _example_section(run: ExampleRun, out: Path) -> str:
    stem = run.script.stem
    title, explanation = example_story(run.script)
    status = "ok" if run.ok else "FAILED"
    parts = [
        f"<section class='example {'ok' if run.ok else 'failed'}' id='{stem}'>",
        f"<h2>{_inline_code(title)}</h2>",
        f"<p class='why'>{_inline_code(explanation)}</p>",
        f"<p class='meta'><code>{html.escape(run.script.name)}</code> · "
        f"<span class='status'>{status}</span> in {run.seconds:.1f} s</p>",
        "<div class='pictures'>",
    ]
    for picture, page in example_pictures(out / stem):
        rel = picture.relative_to(out).as_posix()
        link = ""
        if page is not None:
            href = html.escape(page.relative_to(out).as_posix())
            link = f" · <a href='{href}'>interactive view</a>"
        parts.append(
            f"<figure><a href='{html.escape(rel)}'>"
            f"<img src='{html.escape(rel)}' alt='{html.escape(picture.stem)}' "
            f"loading='eager'></a><figcaption>{html.escape(picture.name)}{link}"
            "</figcaption></figure>"
        )
    parts.append("</div>")
    parts.append(
        "<details open><summary>printed output</summary>"
        f"<pre>{html.escape(run.stdout)}</pre></details>"
    )
    if not run.ok:
        parts.append(f"<pre class='error'>{html.escape(run.stderr[-4000:])}</pre>")
    parts.append("</section>")
    return "\n".join(parts)


STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0;
  background: #f6f7f9; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: 1.2rem 2rem; }
header h1 { margin: 0 0 .3rem 0; font-size: 1.6rem; }
header p { margin: .2rem 0; color: #c9d1e0; }
nav a { color: #9fd0ff; margin-right: 1rem; text-decoration: none; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 2rem 3rem; }
.example { background: #fff; border-radius: 8px; padding: 1rem 1.5rem;
  margin: 1.2rem 0; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
.example.failed { border-left: 6px solid #d33; }
.example h2 { margin: .2rem 0 .5rem; font-size: 1.25rem; }
.why { line-height: 1.45; max-width: 62rem; }
.meta { color: #667; font-size: .85rem; }
.status { font-weight: 600; }
.failed .status { color: #d33; }
.pictures { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
figure { margin: 0; border: 1px solid #e3e6eb; border-radius: 6px;
  padding: .5rem; background: #fff; }
figure img { display: block; max-width: 100%; max-height: 1000px; }
figcaption { font-size: .8rem; color: #556; margin-top: .3rem; }
details pre { background: #f3f4f6; padding: .7rem; overflow: auto;
  max-height: 22rem; font-size: .8rem; }
pre.error { background: #fde8e8; padding: .7rem; overflow: auto; }
code { background: #eef0f3; padding: 0 .2rem; border-radius: 3px; }
"""


def write_gallery(runs: list[ExampleRun], out: Path) -> Path:
    """Write ``out/index.html`` for the example runs; returns its path.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> out = Path(tempfile.mkdtemp())
        >>> script = out / "01_x.py"
        >>> _ = script.write_text("'''1. X.\\n\\nShows x.'''")
        >>> page = write_gallery([ExampleRun(script, True, "x = 1", "", 0.5)], out)
        >>> "<h2>1. X.</h2>" in page.read_text(), "x = 1" in page.read_text()
        (True, True)
    """
    out = Path(out)
    ok = sum(r.ok for r in runs)
    nav = " ".join(
        f"<a href='#{html.escape(r.script.stem)}'>{html.escape(r.script.stem)}</a>"
        for r in runs
    )
    page = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>gradgraph gallery</title>",
        f"<style>{STYLE}</style></head><body>",
        "<header><h1>gradgraph gallery</h1>",
        "<p>The seed notebook's sections as runnable examples: each one prints "
        "what the notebook printed, checks its numbers and draws its graphs.</p>",
        f"<p>{ok} of {len(runs)} examples ran without error.</p>",
        f"<nav>{nav}</nav></header><main>",
        *(_example_section(r, out) for r in runs),
        "</main></body></html>",
    ]
    index = out / "index.html"
    index.write_text("\n".join(page), encoding="utf-8")
    return index
