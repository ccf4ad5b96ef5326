"""Run one workload in a fresh interpreter and report its peak memory as one JSON line.

``python -m benchmarks._child MODULE:FUNCTION JSON_KWARGS``

The target's module is imported first (with everything it imports), then the kernel's peak-RSS
counter is reset (``echo 5 > /proc/self/clear_refs``) and the RSS read as the baseline. The
workload runs, and its peak is ``VmHWM`` from ``/proc/self/status``. Where the reset is not
allowed, the baseline is the peak so far (``VmHWM`` after imports), which is the same number
unless importing briefly used more memory than it kept.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path


def _status_kib(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak-RSS counter where allowed; return the baseline in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return _status_kib("VmHWM") * 1024
    return _status_kib("VmRSS") * 1024


def main(argv: list[str]) -> int:
    """Import the target, reset the peak, run it, print the report."""
    target, raw_kwargs = argv
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    kwargs = json.loads(raw_kwargs)
    baseline = _reset_peak()
    started = time.perf_counter()
    result = function(**kwargs)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM") * 1024
    report = {"baseline": baseline, "peak": peak, "seconds": seconds, "result": result}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
