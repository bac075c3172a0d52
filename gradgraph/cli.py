"""The ``gradgraph`` command.

``gradgraph demo --out out`` runs every example script and writes the gallery
(``out/index.html``); ``gradgraph version`` prints the version.

The examples ship inside the package (``gradgraph/examples``, a symlink to the
repository's ``examples/`` folder that the wheel turns into real files), so
``gradgraph demo`` works from an installed package as well as from a checkout;
``--examples DIR`` runs another folder of ``NN_*.py`` scripts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from .gallery import ExampleRun, write_gallery

PACKAGED_EXAMPLES = Path(__file__).resolve().parent / "examples"


def find_examples(directory: Path) -> list[Path]:
    """The numbered example scripts, in order (``NN_topic.py``).

    Example:
        >>> [p.name for p in find_examples(PACKAGED_EXAMPLES)][:2]
        ['00_quickstart.py', '01_autograd_graph.py']
    """
    return sorted(Path(directory).glob("[0-9][0-9]_*.py"))


def run_examples(
    examples: list[Path], out: Path, env: dict | None = None
) -> list[ExampleRun]:
    """Run each script with ``GRADGRAPH_OUT=out``, printing one progress line each.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "01_hi.py").write_text("print('hi')")
        >>> [run] = run_examples([folder / "01_hi.py"], folder)  # doctest: +ELLIPSIS
        [1/1] 01_hi.py ... ok in ...s
        >>> run.ok, run.stdout
        (True, 'hi\\n')
    """
    env = dict(os.environ if env is None else env)
    env.update(GRADGRAPH_OUT=str(out), MPLBACKEND="Agg")
    runs = []
    for i, script in enumerate(examples, 1):
        print(f"[{i}/{len(examples)}] {script.name} ...", end="", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f" {status} in {seconds:.1f}s", flush=True)
        if proc.returncode:
            print(proc.stderr[-4000:], file=sys.stderr)
        runs.append(
            ExampleRun(script, proc.returncode == 0, proc.stdout, proc.stderr, seconds)
        )
    return runs


def demo(out: str, examples_dir: str | None = None) -> int:
    """Run the examples and write the gallery; the exit status (0 when all ran).

    Args:
        out: folder for ``index.html`` and the examples' pictures.
        examples_dir: folder of ``NN_*.py`` scripts; the packaged examples
            when None.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "01_hi.py").write_text("'''Hi.'''\\nprint('hi')")
        >>> demo(str(folder / "out"), str(folder))  # doctest: +ELLIPSIS
        [1/1] 01_hi.py ... ok in ...s
        gallery: .../out/index.html
        0
    """
    if importlib.util.find_spec("matplotlib") is None:
        print(
            "the examples draw plots with matplotlib, which is not installed; "
            "install it with: pip install 'gradgraph[examples]'",
            file=sys.stderr,
        )
        return 2
    directory = Path(examples_dir) if examples_dir else PACKAGED_EXAMPLES
    examples = find_examples(directory)
    if not examples:
        print(
            f"no NN_*.py example scripts found in {str(directory)!r}", file=sys.stderr
        )
        return 2
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    runs = run_examples(examples, out_path)
    index = write_gallery(runs, out_path)
    failed = [r.script.name for r in runs if not r.ok]
    print(
        f"gallery: {index}" + (f" ({len(failed)} failed: {failed})" if failed else "")
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradgraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the examples and write the gallery")
    p_demo.add_argument("--out", default="out", help="folder for the gallery")
    p_demo.add_argument(
        "--examples",
        default=None,
        help="folder of NN_*.py scripts (default: the examples shipped with gradgraph)",
    )
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.out, args.examples)
    from . import __version__

    print(__version__)
    return 0
