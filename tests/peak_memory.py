"""The growth of a child process's peak resident set while it runs ``run()``.

``peak_growth_mib(setup)`` runs ``setup`` (Python source that defines
``run()``) in a fresh interpreter, calls ``run()`` once to load torch's
kernels, resets the peak (VmHWM, Linux), calls it again and returns how far
the peak rose above the resident set before the second call, in MiB.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

_MEASURE = """
def _kib(field):
    with open("/proc/self/status") as f:
        return next(int(s.split()[1]) for s in f if s.startswith(field + ":"))

run()
_before = _kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
run()
print((_kib("VmHWM") - _before) / 2**10)
"""


def peak_growth_mib(setup: str) -> float:
    code = textwrap.dedent(setup) + _MEASURE
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=1200,
    )
    return float(out.stdout.split()[-1])
