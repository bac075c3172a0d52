"""The ``gradgraph`` command.

``gradgraph demo --out out`` runs every example script and writes the gallery
(``out/index.html``); ``gradgraph version`` prints the version.
"""

from __future__ import annotations

import argparse
import html
import os
import subprocess
import sys
import time
from pathlib import Path


def find_examples(directory: Path) -> list[Path]:
    """The numbered example scripts, in order (``examples/NN_topic.py``)."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.py"))


def run_examples(examples: list[Path], out: Path) -> list[dict]:
    """Run each example with ``GRADGRAPH_OUT=out``; return what each printed."""
    env = dict(os.environ, GRADGRAPH_OUT=str(out), MPLBACKEND="Agg")
    results = []
    for i, script in enumerate(examples, 1):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
        print(f"[{i}/{len(examples)}] {script.name}: {status} in {seconds:.1f}s")
        if proc.returncode:
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        results.append(
            {
                "script": script,
                "ok": proc.returncode == 0,
                "stdout": proc.stdout,
                "seconds": seconds,
            }
        )
    return results


def write_index(results: list[dict], out: Path) -> Path:
    """A plain gallery page: each example's output and the pictures it wrote."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>gradgraph gallery</title>",
        "<h1>gradgraph gallery</h1>",
    ]
    for res in results:
        stem = res["script"].stem
        parts.append(f"<h2>{html.escape(stem)}</h2>")
        for pic in sorted(out.glob(f"{stem}*.svg")):
            parts.append(f"<img src='{html.escape(pic.name)}' style='max-width:100%'>")
        parts.append(f"<pre>{html.escape(res['stdout'])}</pre>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


def demo(out: str, examples_dir: str) -> int:
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    examples = find_examples(Path(examples_dir))
    if not examples:
        print(f"no examples found in {examples_dir!r}", file=sys.stderr)
        return 2
    results = run_examples(examples, out_path)
    index = write_index(results, out_path)
    print(f"gallery: {index}")
    return 0 if all(r["ok"] for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradgraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the examples and write the gallery")
    p_demo.add_argument("--out", default="out")
    p_demo.add_argument("--examples", default="examples")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.out, args.examples)
    from . import __version__

    print(__version__)
    return 0
