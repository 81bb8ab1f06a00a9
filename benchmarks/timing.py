"""What the measurements not yet on :mod:`benchmarks.harness` still call by these names:
the harness's timing and memory tools, and their own worker spawning and result saving.
"""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Samples,
    machine_info,
    peak_rss_during,
    race,
    release_free_heap,
    rss_bytes,
    time_call,
)

__all__ = [
    "Samples",
    "machine_info",
    "peak_rss_during",
    "race",
    "release_free_heap",
    "rss_bytes",
    "save_results",
    "spawn",
    "time_call",
]


def spawn(module: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m module *args`` in a fresh process; its last JSON line of stdout.

    A worker that fails, is killed (out of memory) or times out gives ``{"error": ...}``
    instead, so one bad case never stops a sweep.
    """
    command = [sys.executable, "-m", module, *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        killed = proc.returncode in (-9, 137)
        return {"error": "killed (out of memory?)" if killed else " | ".join(tail)[-400:]}
    return json.loads(lines[-1])


def save_results(
    out: Path, results: dict[str, Any], report: str, draw: Callable[[], object] | None = None
) -> None:
    """Write ``out/results.json`` and the markdown ``report`` as ``out/results.md``, then call
    ``draw`` (the benchmark's plot). Called after every case, so an interrupted sweep keeps
    what it measured; a failing plot is reported and never loses the numbers."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(report)
    if draw is None:
        return
    try:
        draw()
    except Exception as e:  # a plot must never lose the numbers
        print("plotting failed:", e, flush=True)
