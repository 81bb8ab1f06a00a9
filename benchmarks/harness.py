"""The one benchmark harness: cases, timing, memory, results, tables, plots and the command line.

A measurement is one module (``benchmarks/kernels.py``, ``models.py``, ...) that declares

* ``NAME``, ``TITLE``, ``MODES`` (mode -> what it measures, the first the default) and
  optionally ``add_arguments(parser)``, ``NOTE`` (the method, in markdown, above its tables)
  and ``ROOFLINE`` (mode -> :func:`dense_matmul`'s options, where its default does not fit);
* ``cases(args, rows)``: the cases of a run, each a JSON dict with a ``"name"`` (a generator
  may look at the ``rows`` measured so far, e.g. to skip what cannot fit after an OOM);
* ``measure(case)``: one case, run in a fresh subprocess (``"in_process": True`` in the case
  runs it in the driver), giving a row or a list of rows;
* ``targets(rows)``: the run's verdicts, made with :class:`Target` (data in the results, never
  decided by the report);
* ``TABLES`` and ``PLOTS``: how the rows read, as :class:`Table` / :class:`Plot` specs.

:func:`main` is every measurement's command line. A run writes ``<out>/results.json`` after
every case (an interrupted sweep keeps what it measured), and ``results.md`` plus its plots,
in one schema: ``benchmark``, ``mode``, ``options``, ``machine`` (CPU model and ISA, cores,
accelerator, versions, date), ``roofline`` (the dense matmul rate measured at the start of the
same run), ``rows``, ``targets`` and ``elapsed_s``.

Timing survives a shared, noisy machine: every sample records how much CPU *other* processes
used while it ran (``/proc/stat`` less this process's own ticks), and competing callables are
timed interleaved (A B C A B C ...), so outside load hits all of them alike and their ratio
holds. Medians use the samples taken while others used under 10% of the machine, when there
are such; :func:`star` marks a median of contended samples only. Peak memory is the resident
set above the level before a call, polled while it runs, in a fresh process.
"""

import argparse
import contextlib
import ctypes
import dataclasses
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]
CLEAN = 0.1  # a sample is clean while other processes use under 10% of the machine
# A call shorter than this is run once untimed right before each timed run: the thread pool
# of the call before (XLA's, torch's OpenMP) spins a while after it returns and would share
# the cores with it, while after a pause pools and caches are cold. Measured: a 20 ms zoo
# call timed right after torch SDPA took 10-25% longer than after another zoo call.
WARM_S = 0.3
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

# --------------------------------------------------------------------------------------
# Timing and memory.


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
    with contextlib.suppress(OSError):  # not glibc: free heap may then count as resident
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclasses.dataclass
class Samples:
    """Seconds per call and, per sample, the share of the machine other processes used."""

    seconds: list[float] = dataclasses.field(default_factory=list)
    contention: list[float] = dataclasses.field(default_factory=list)

    def clean(self, threshold: float = CLEAN) -> list[float]:
        return [t for t, c in zip(self.seconds, self.contention, strict=True) if c < threshold]

    def summary(self, threshold: float = CLEAN) -> dict[str, Any]:
        """Median and minimum over the clean samples (all of them when none is clean)."""
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
    """(seconds, share of all cores used by other processes meanwhile) of one ``run()``."""
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
    threshold: float = CLEAN,
) -> dict[str, Samples]:
    """Time compiled, warmed-up callables interleaved until each has ``repeats`` samples taken
    while others used under ``threshold`` of the machine (at most 3x ``repeats`` rounds, or
    until ``budget_s`` has passed; at least one each)."""
    samples = {name: Samples() for name in runs}
    start, rounds = time.perf_counter(), 0
    while True:
        rounds += 1
        for name, run in runs.items():
            if len(samples[name].clean(threshold)) < repeats:
                if not samples[name].seconds or samples[name].seconds[-1] < WARM_S:
                    run()  # untimed: the pools of the call before go quiet, this one's wake
                seconds, contention = time_call(run)
                samples[name].seconds.append(seconds)
                samples[name].contention.append(contention)
        done = all(len(s.clean(threshold)) >= repeats for s in samples.values())
        if done or time.perf_counter() - start > budget_s or rounds >= 3 * repeats:
            return samples


def peak_rss_during(run: Callable[[], Any], interval_s: float = 0.0005) -> int:
    """Peak resident bytes above the level just before ``run()``: freed heap is handed back
    first, so memory the run reuses from compilation or warm-up still counts."""
    release_free_heap()
    baseline = peak = rss_bytes()
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


def star(summary: Mapping[str, Any]) -> str:
    """``*`` after a median taken over contended samples only."""
    return "*" if summary.get("clean_samples", 1) == 0 else ""


# --------------------------------------------------------------------------------------
# Fresh processes.


def spawn(
    function: str, argument: Any, *, timeout: float, env: Mapping[str, str] | None = None
) -> Any:
    """``function(argument)`` (``"module:function"``, a JSON argument) in a fresh process.

    A worker that fails, is killed (out of memory) or times out gives ``{"error": ...}``, so
    one bad case never stops a sweep.
    """
    command = [sys.executable, "-m", "benchmarks.harness", "--worker", function]
    environment = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            [*command, json.dumps(argument)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("{", "["))]
    if proc.returncode != 0 or not lines:
        if proc.returncode in (-9, 137):
            return {"error": "killed (out of memory?)"}
        return {"error": " | ".join((proc.stderr or "").strip().splitlines()[-3:])[-400:]}
    return json.loads(lines[-1])


def _worker(function: str, argument: str) -> None:
    module, name = function.split(":")
    result = getattr(importlib.import_module(module), name)(json.loads(argument))
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------
# What the numbers depend on.


def machine_info() -> dict[str, Any]:
    """Date, platform, CPU model and ISA, cores, accelerator, library versions, XLA flags."""
    from importlib import metadata

    versions = {}
    for name in ("jax", "jaxlib", "flax", "tokamax", "torch", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": time.strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "processor": _cpuinfo("model name") or platform.processor(),
        "isa": _isa(),
        "cores": os.cpu_count(),
        "accelerator": _accelerator(),
        "versions": versions,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _cpuinfo(key: str) -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return ""


def _isa() -> str:
    """The vector extensions that decide a CPU's matmul rate (AVX-512 doubles AVX2's width)."""
    flags = set(_cpuinfo("flags").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "neon", "asimd")
    return " ".join(f for f in wanted if f in flags) or platform.machine()


def _accelerator() -> str:
    import jax

    device = jax.devices()[0]
    return "" if device.platform == "cpu" else f"{jax.device_count()} x {device.device_kind}"


def dense_matmul(options: Mapping[str, Any]) -> dict[str, float]:
    """GFLOP/s of a dense ``n x n`` matmul (``jnp.dot``, and ``torch.matmul`` when torch is
    installed), timed interleaved: the roofline every run reports next to its numbers."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n, dtype = options.get("n", 2048), options.get("dtype", "float32")
    x = np.random.default_rng(0).standard_normal((n, n), np.float32)
    jx = jnp.asarray(x, dtype)
    dot = jax.jit(jnp.dot).lower(jx, jx).compile()
    runs = {"jnp.dot": lambda: jax.block_until_ready(dot(jx, jx))}
    with contextlib.suppress(ImportError):
        import torch

        # On a GPU torch's matmul runs there too, and is waited for (CUDA calls return early).
        cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
        tx = torch.from_numpy(x).to("cuda" if cuda else "cpu", getattr(torch, dtype))
        sync = torch.cuda.synchronize if cuda else lambda: None
        runs["torch.matmul"] = lambda: (torch.matmul(tx, tx), sync())
    for run in runs.values():
        run()
    timed = race(runs, repeats=7, budget_s=10.0)
    return {name: 2 * n**3 / s.summary()["median_s"] / 1e9 for name, s in timed.items()}


# --------------------------------------------------------------------------------------
# Targets, tables and plots: data and specs that the report renders.


@dataclasses.dataclass(frozen=True)
class Target:
    """A promise a run is held to: ``measured >= threshold`` (``at_least``) or ``<=``."""

    name: str
    threshold: float
    unit: str = "x"
    at_least: bool = True

    def check(
        self, measured: float | None, *, case: str = "", contended: bool = False, note: str = ""
    ) -> dict[str, Any]:
        """The verdict as it is stored in ``results.json``."""
        if measured is None:
            verdict = "not measured"
        elif self.at_least:
            verdict = "met" if measured >= self.threshold else "missed"
        else:
            verdict = "met" if measured <= self.threshold else "missed"
        fields = dataclasses.asdict(self)
        return {**fields, "case": case, "measured": measured, "verdict": verdict,
                "contended": contended, "note": note}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Row], Any]  # None or "" for an empty cell
    format: str = "{}"

    def text(self, row: Row) -> str:
        value = self.cell(row)
        return (
            "" if value is None else value if isinstance(value, str) else self.format.format(value)
        )


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    columns: Sequence[Column]
    rows: Callable[[list[Row]], list[Row]] = list  # which rows, in which order
    note: str = ""

    def markdown(self, rows: list[Row]) -> list[str]:
        shown = self.rows(rows)
        if not shown:
            return []
        lines = [f"### {self.title}", ""] + ([self.note, ""] if self.note else [])
        lines.append("| " + " | ".join(c.header for c in self.columns) + " |")
        lines.append("|---" * len(self.columns) + "|")
        lines += ["| " + " | ".join(c.text(r) for c in self.columns) + " |" for r in shown]
        return [*lines, ""]


@dataclasses.dataclass(frozen=True)
class Plot:
    """Log-log lines: ``points(row)`` yields ``(panel, series, x, y)``; one panel each."""

    file: str
    points: Callable[[Row], Iterable[tuple[str, str, float, float]]]
    xlabel: str
    ylabel: str
    logx: bool = True

    def draw(self, rows: list[Row], out: Path, title: str) -> bool:
        panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for row in rows:
            for panel, series, x, y in self.points(row):
                panels.setdefault(panel, {}).setdefault(series, []).append((x, y))
        if not panels:
            return False
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
        for ax, (panel, lines) in zip(axes[0], panels.items(), strict=True):
            for name, points in lines.items():
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", label=name)
            if self.logx:
                ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set(xlabel=self.xlabel, ylabel=self.ylabel)
            ax.set_title(panel, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / self.file, dpi=110)
        plt.close(fig)
        return True


# --------------------------------------------------------------------------------------
# A run.


def save(module: Any, results: dict[str, Any], out: Path, *, plots: bool = True) -> None:
    """``results.json``, the plots (a failing plot never loses numbers), then ``results.md``."""
    from benchmarks import report

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    machine = results["machine"]
    for plot in getattr(module, "PLOTS", ()) if plots else ():
        try:
            plot.draw(results["rows"], out, f"{machine['processor']}, {machine['cores']} cores")
        except Exception as e:  # the numbers are saved: say why there is no plot
            print(f"plot {plot.file} failed: {e}", flush=True)
    (out / "results.md").write_text("\n".join(report.section(module, results, out, out)) + "\n")


def run(
    module: Any, args: argparse.Namespace, out: Path, only: str | None = None
) -> dict[str, Any]:
    """Every case of ``module`` for ``args`` (whose name has ``only``), saved after each."""
    options = {k: v for k, v in vars(args).items() if k != "out"}
    matmul = getattr(module, "ROOFLINE", {}).get(args.mode, {})
    results: dict[str, Any] = {
        "benchmark": module.NAME,
        "mode": args.mode,
        "options": options,
        "machine": machine_info(),
        "roofline": {"dense_matmul_gflops": spawn("benchmarks.harness:dense_matmul", matmul,
                                                  timeout=300), **matmul},
        "rows": [],
        "targets": [],
    }  # fmt: skip
    started = time.time()
    cases = (c for c in module.cases(args, results["rows"]) if only is None or only in c["name"])
    for n, case in enumerate(cases, 1):
        print(f"[{n}] {case['name']}", flush=True)
        if case.get("in_process"):
            measured = module.measure(case)
        else:
            function = f"{module.__name__}:measure"
            measured = spawn(function, case, timeout=case.get("timeout_s", 1800))
        rows = measured if isinstance(measured, list) else [measured]
        for row in rows:
            row.setdefault("case", case)
            print("   " + json.dumps(_brief(row))[:300], flush=True)
        results["rows"] += rows
        results["targets"] = module.targets(results["rows"])
        save(module, results, out, plots=False)
    results["elapsed_s"] = time.time() - started
    save(module, results, out)
    print(f"wrote {out}/results.json and results.md", flush=True)
    return results


def _brief(row: Row) -> Row:
    """A row without its case, its numbers rounded, for the progress lines."""

    def short(x: Any) -> Any:
        if isinstance(x, float):
            return float(f"{x:.4g}")
        if isinstance(x, dict):
            return {k: short(v) for k, v in x.items()}
        return x

    return {k: short(v) for k, v in row.items() if k != "case"}


def main(module_name: str, argv: list[str] | None = None) -> dict[str, Any]:
    """The command line of the measurement ``module_name`` (``python -m benchmarks.<name>``)."""
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"python -m {module_name}",
        description=(module.__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="modes:\n" + "\n".join(f"  {k:8s} {v}" for k, v in module.MODES.items()),
    )
    parser.add_argument("--mode", choices=tuple(module.MODES), default=next(iter(module.MODES)))
    parser.add_argument(
        "--out", default=None, help=f"default benchmarks/results/{module.NAME}/MODE"
    )
    parser.add_argument("--only", default=None, help="run only the cases whose name has this")
    redo = "measure nothing: check the stored results.json's targets again, redraw its files"
    parser.add_argument("--redraw", action="store_true", help=redo)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out or f"benchmarks/results/{module.NAME}/{args.mode}")
    if args.redraw:
        return redraw(module, out)
    return run(module, args, out, args.only)


def redraw(module: Any, out: Path) -> dict[str, Any]:
    """The results stored in ``out`` with their targets checked again by ``module.targets``
    (after a change to how it checks), then saved and drawn as :func:`run` does."""
    path = out / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: no {path} to redraw; run without --redraw first")
    results = json.loads(path.read_text())
    results["targets"] = module.targets(results["rows"])
    save(module, results, out)
    print(f"redrew {out}/results.json and results.md", flush=True)
    return results


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m benchmarks.harness --worker MODULE:FUNCTION JSON")
