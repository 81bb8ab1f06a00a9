"""Wall-clock timing and peak-memory measurement that survive a shared, noisy machine.

Every sample also records how much CPU *other* processes used while it ran (from
``/proc/stat`` minus this process's own ``/proc/self/stat`` ticks), so a benchmark can keep
the samples taken while it had the cores to itself and say how contended the rest were.
Competing implementations are timed interleaved (A B C A B C ...), never one after another,
so a burst of outside load hits all of them alike and their ratio stays meaningful.
Also shared by every benchmark: :func:`spawn` (one case in a fresh worker process) and
:func:`machine_info` (what the numbers depend on).
"""

import contextlib
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def _own_ticks() -> int:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of every thread


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def release_free_heap() -> None:
    """Hand freed heap back to the OS (glibc ``malloc_trim``), so resident memory is in use."""
    # Not glibc: resident memory may then include free heap that a later run reuses.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Samples:
    """Seconds per call and, per sample, the share of the machine other processes used."""

    seconds: list[float] = field(default_factory=list)
    contention: list[float] = field(default_factory=list)

    def clean(self, threshold: float) -> list[float]:
        return [t for t, c in zip(self.seconds, self.contention, strict=True) if c < threshold]

    def summary(self, threshold: float) -> dict[str, Any]:
        clean = self.clean(threshold)
        used = clean or self.seconds
        return {
            "median_s": statistics.median(used),
            "min_s": min(used),
            "samples": len(self.seconds),
            "clean_samples": len(clean),
            "mean_contention": statistics.fmean(self.contention),
        }


def time_call(run: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, share of all cores used by other processes meanwhile) for one ``run()``."""
    busy, own = _busy_ticks(), _own_ticks()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    others = max(0, (_busy_ticks() - busy) - (_own_ticks() - own)) / _TICKS
    return seconds, others / (seconds * (os.cpu_count() or 1))


def race(
    runs: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    budget_s: float,
    threshold: float = 0.1,
) -> dict[str, Samples]:
    """Time every callable interleaved until each has ``repeats`` clean samples.

    Stops early once ``budget_s`` seconds have passed (every callable still gets at least
    one sample). A sample is clean when other processes used under ``threshold`` of the
    machine while it ran. The callables must already be compiled and warmed up.
    """
    samples = {name: Samples() for name in runs}
    start = time.perf_counter()
    rounds = 0
    while True:
        rounds += 1
        for name, run in runs.items():
            if len(samples[name].clean(threshold)) >= repeats:
                continue
            seconds, contention = time_call(run)
            samples[name].seconds.append(seconds)
            samples[name].contention.append(contention)
        done = all(len(s.clean(threshold)) >= repeats for s in samples.values())
        # Give up on clean samples after 3x the repeats: report the contended ones.
        if done or time.perf_counter() - start > budget_s or rounds >= 3 * repeats:
            return samples


def peak_rss_during(run: Callable[[], Any], interval_s: float = 0.0005) -> int:
    """Peak resident memory above the level just before ``run()``, in bytes.

    Freed heap is handed back to the OS first (glibc ``malloc_trim``), so that memory the
    run reuses from earlier allocations (compilation, warm-up) still counts; a thread polls
    ``/proc/self/statm`` while the run executes.
    """
    release_free_heap()
    baseline = rss_bytes()
    peak = baseline
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(interval_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        run()
    finally:
        stop.set()
        thread.join()
    return max(peak, rss_bytes()) - baseline


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


def machine_info() -> dict[str, Any]:
    """What a result depends on: platform, CPU, cores, library versions, XLA flags; and the
    date it was measured."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cores": os.cpu_count(),
        "versions": _versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("jax", "jaxlib", "flax", "torch", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


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
