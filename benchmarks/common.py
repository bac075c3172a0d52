"""Shared timing helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import platform
import time

import torch


def best_of(fn, repeat: int = 5) -> float:
    """The fastest of ``repeat`` runs of ``fn()``, in seconds (after one warm-up).

    The result is kept until the clock has stopped, so freeing it is not timed.
    """
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        del result
    return min(times)


def machine() -> str:
    """One line naming the machine the figures came from."""
    import os

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def table(rows: list[list[str]], header: list[str]) -> str:
    """A GitHub-markdown table."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return (
            "| "
            + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def main_with_big_stack(main, megabytes: int = 1024) -> None:
    """Run ``main()`` in a thread with a large C stack.

    Benchmarks build chains of 100k+ nodes; torch frees such a graph recursively
    in C++ once Python has visited its nodes (see README, Known limits), which
    overflows the default 8 MB stack at exit.
    """
    import threading

    old = threading.stack_size(megabytes << 20)
    try:
        thread = threading.Thread(target=main)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old)
