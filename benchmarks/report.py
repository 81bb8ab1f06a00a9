"""One report of every benchmark, ``benchmarks/RESULTS.md``, built from the results' JSON.

    python -m benchmarks.report            # make results: benchmarks/results -> RESULTS.md
    python -m benchmarks.report --results benchmarks/results --out /tmp/RESULTS.md

Of each benchmark it reads one ``results.json``, the fullest mode there is (``full``, then
``targets``, then ``quick``), and writes: the headline, issues 6 and 7's targets each met,
missed or not measured, as the benchmark's own target function decides it from its JSON;
where every number comes from (mode, date when the JSON records one, CPU, cores, library
versions, the dense matmul rate measured in the same run as the roofline, and how many timed
medians had only contended samples); then each benchmark's tables, rebuilt from its JSON by
its own ``markdown`` function, and its plots. Nothing is typed in by hand and nothing depends
on when the report runs: the same results give the same file, and a test checks that the
committed ``RESULTS.md`` is what the committed results give.
"""

import argparse
import dataclasses
import importlib
import json
import os
import statistics
from pathlib import Path
from typing import Any

MODES = ("full", "targets", "quick")  # preferred first: the fuller sweep wins
STATUSES = ("met", "missed", "not measured")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    command: str  # the module run as ``python -m``
    tables: str  # the module whose ``markdown(results)`` renders its tables
    folder: str  # its results under the results directory ("": mode folders at the top)


BENCHMARKS = (
    Benchmark("kernels", "Attention kernels", "benchmarks.kernels", "benchmarks.kernels", ""),
    Benchmark(
        "models",
        "Model training steps",
        "benchmarks.models",
        "benchmarks.models_report",
        "models",
    ),
    Benchmark("decoding", "Decoding", "benchmarks.decoding", "benchmarks.decoding", "decoding"),
    Benchmark(
        "scaling", "LM training scaling", "benchmarks.scaling", "benchmarks.scaling", "scaling"
    ),
    Benchmark(
        "devices",
        "Data- and sequence-parallel devices",
        "benchmarks.devices",
        "benchmarks.devices_report",
        "devices",
    ),
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One benchmark's chosen ``results.json`` and what it holds."""

    benchmark: Benchmark
    path: Path
    results: dict[str, Any]

    @property
    def source(self) -> str:
        return f"{self.benchmark.name}, {self.results['mode']} run"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One headline line: a target and what was measured against it."""

    status: str  # one of STATUSES
    target: str
    measured: str = ""
    source: str = ""
    caveat: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def line(self) -> str:
        text = f"- **{self.status}**: {self.target}"
        text += f": {self.measured}" if self.measured else ""
        where = "; ".join(part for part in (self.source, self.caveat) if part)
        return text + (f" [{where}]" if where else "")


def find_runs(results_dir: Path) -> dict[str, Run | None]:
    """Benchmark name -> its preferred results (None when it has none)."""
    runs: dict[str, Run | None] = {}
    for benchmark in BENCHMARKS:
        runs[benchmark.name] = None
        for mode in MODES:
            path = Path(results_dir) / benchmark.folder / mode / "results.json"
            if path.is_file():
                runs[benchmark.name] = Run(benchmark, path, json.loads(path.read_text()))
                break
    return runs


def _status(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "missed"


# --------------------------------------------------------------------------------------
# The headline: each benchmark's own verdict, in one line per target.


def _models(run: Run | None) -> list[Verdict]:
    from benchmarks.models_report import TARGET_RATIO, target_verdicts

    target = f"zoo LM training tokens/s >= {TARGET_RATIO:.1f}x the faster PyTorch twin's"
    source = run.source if run else ""
    found = target_verdicts(run.results) if run else []
    if not found:
        return [Verdict("not measured", target, source=source)]
    return [
        Verdict(
            _status(v["met"]),
            f"{target}, {v['case']}, {v['impl']}",
            f"{v['ratio']:.2f}x {v['peer']}'s ({v['tokens_per_s']:,.0f} vs "
            f"{v['peer_tokens_per_s']:,.0f} tokens/s)",
            source,
            "every sample contended, not a verdict" if v["contended"] else "",
        )
        for v in found
    ]


def _decoding(run: Run | None) -> list[Verdict]:
    from benchmarks import decoding

    n = decoding.TARGET_LENGTH
    target = (
        f"KV-cache decoding >= {decoding.TARGET_SPEEDUP:g}x faster than full recomputation "
        f"at N = {n:,} generated tokens"
    )
    t = decoding.target(run.results) if run else {"speedup": None}
    if run is None or t["speedup"] is None:
        return [Verdict("not measured", target, source=run.source if run else "")]
    row = next(r for r in run.results["lengths"] if r["generated"] == n)
    caveats = []
    if row["kv_cache"]["clean_samples"] == 0 or row["recompute"]["clean_samples"] == 0:
        caveats.append("samples contended")
    if not row["tokens_agree"]:
        caveats.append("the two generated different tokens")
    measured = f"{t['speedup']:.1f}x"
    return [Verdict(_status(t["met"]), target, measured, run.source, ", ".join(caveats))]


def _scaling(run: Run | None) -> list[Verdict]:
    from benchmarks import scaling

    target = (
        f"blockwise kernel's longest LM training context >= {scaling.TARGET_RATIO}x the "
        "reference kernel's in the same memory"
    )
    if run is None:
        return [Verdict("not measured", target)]
    t = scaling.target(run.results)

    def context(n: int | None) -> str:
        return "none" if n is None else f"{n:,}"

    measured = (
        f"{context(t['blockwise_longest'])} vs {context(t['reference_longest'])} tokens "
        f"within {t['budget_gib']:g} GiB at width {t['width']}"
    )
    caveat = ""
    if t["met"] is None:
        caveat = "not decided: a kernel never fit, or the reference never ran out of memory"
    else:
        measured = f"{t['ratio']:g}x ({measured})"
        if t["blockwise_longest"] == max(run.results["sweep"]["contexts"]):
            caveat = "blockwise fit the longest context tried, so at least that"
    return [Verdict(_status(t["met"]), target, measured, run.source, caveat)]


def _kernels(run: Run | None) -> list[Verdict]:
    from benchmarks import kernels

    found = kernels.target_verdicts(run.results) if run else []
    source = run.source if run else ""
    lines = []
    for peer, name in (("torch.sdpa", "torch SDPA"), ("jax.nn", "jax.nn")):
        target = (
            f"zoo blockwise kernel >= {kernels.TARGET_RATIOS[peer]:.1f}x {name}'s GFLOP/s "
            "at issue 6's cases"
        )
        cases = [v for v in found if v["target"] == peer]
        if not cases:
            lines.append(Verdict("not measured", target, source=source))
            continue
        ratios = [v["value"] for v in cases]
        met = sum(v["met"] for v in cases)
        contended = sum(v["contended"] for v in cases)
        lines.append(
            Verdict(
                _status(met == len(cases)),
                target,
                f"in {met} of {len(cases)} cases; {min(ratios):.2f}x .. {max(ratios):.2f}x, "
                f"median {statistics.median(ratios):.2f}x",
                source,
                f"{contended} of {len(cases)} from contended samples" if contended else "",
            )
        )
    target = (
        f"zoo blockwise fwd+bwd peak memory above the inputs at T = {kernels.TARGET_MEMORY_T:,} "
        f"<= {kernels.TARGET_MEMORY_BYTES / 2**30:g} GiB"
    )
    memory = [v for v in found if v["target"] == "memory"]
    if not memory:
        lines.append(Verdict("not measured", target, source=source))
    for v in memory:
        lines.append(
            Verdict(
                _status(v["met"]),
                f"{target}, {'causal' if v['causal'] else 'full'}",
                f"{v['value'] / 2**20:,.0f} MiB",
                source,
            )
        )
    return lines


def verdicts(runs: dict[str, Run | None]) -> list[Verdict]:
    """The headline targets of issues 6 and 7, in the issue's order."""
    return [
        *_models(runs["models"]),
        *_decoding(runs["decoding"]),
        *_scaling(runs["scaling"]),
        *_kernels(runs["kernels"]),
    ]


def headline(results_dir: Path | str) -> list[str]:
    """The headline's lines (markdown list items) from the results under ``results_dir``."""
    return [v.line() for v in verdicts(find_runs(Path(results_dir)))]


# --------------------------------------------------------------------------------------
# Where the numbers come from.


def _timings(node: Any) -> list[dict[str, Any]]:
    """Every timing summary (``benchmarks.timing.Samples.summary``) anywhere in ``node``."""
    if isinstance(node, list):
        return [t for item in node for t in _timings(item)]
    if not isinstance(node, dict):
        return []
    if {"samples", "clean_samples", "mean_contention"} <= node.keys():
        return [node]
    return [t for value in node.values() for t in _timings(value)]


def contention(results: dict[str, Any]) -> tuple[int, int, float | None]:
    """(timed medians, of which over contended samples only, others' mean share meanwhile)."""
    timings = _timings(results)
    contended = sum(t["clean_samples"] == 0 for t in timings)
    share = statistics.fmean(t["mean_contention"] for t in timings) if timings else None
    return len(timings), contended, share


def roofline(results: dict[str, Any]) -> str:
    """The dense matmul rate measured in the same run, in words."""
    by_dtype: dict[str, list[float]] = {}
    libraries: set[str] = set()
    for entry in results.get("cases", []):
        rates = entry.get("matmul_gflops")
        if rates:
            dtype = entry.get("case", {}).get("dtype", "float32")
            by_dtype.setdefault(dtype, []).append(max(rates.values()))
            libraries |= rates.keys()
    parts = [
        f"{dtype} {statistics.median(rates):.0f} GFLOP/s median, {min(rates):.0f}..{max(rates):.0f}"
        f" over {len(rates)} cases"
        for dtype, rates in sorted(by_dtype.items())
    ]
    if parts:
        return "; ".join(parts) + f" (best of {' / '.join(sorted(libraries))} per case)"
    single = results.get("matmul_single_core", {})
    if "gflops" in single:
        return f"{single['gflops']:.0f} GFLOP/s on one core (jnp.dot {single['n']}^2 float32)"
    return "not recorded by this benchmark"


def _date(results: dict[str, Any]) -> str:
    date = results.get("date") or results["machine"].get("date")
    return str(date) if date else "date not recorded"


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def machines(runs: dict[str, Run | None], base: Path) -> list[str]:
    lines = [
        "| benchmark | results | mode, date | CPU | cores | versions | matmul roofline, same "
        "run | timed medians over contended samples only |",
        "|---" * 8 + "|",
    ]
    for name, run in runs.items():
        if run is None:
            lines.append(f"| {name} | none |" + " |" * 6)
            continue
        r, m = run.results, run.results["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        if m.get("xla_flags"):
            versions += f"; XLA_FLAGS={m['xla_flags']}"
        n, contended, share = contention(r)
        busy = f" (others used {share:.0%} on average)" if contended and share is not None else ""
        lines.append(
            f"| {name} | `{_relative(run.path, base)}` | {r['mode']}, {_date(r)} "
            f"| {m['processor']} | {m['cores']} | {versions} | {roofline(r)} "
            f"| {contended} of {n}{busy} |"
        )
    return lines


# --------------------------------------------------------------------------------------
# The report.


def _embed(markdown: str) -> list[str]:
    """A benchmark's own report under a section of this one: its title dropped, its
    headings one level down."""
    lines = markdown.rstrip("\n").split("\n")
    if lines and lines[0].startswith("# "):
        lines = lines[2:] if len(lines) > 1 and not lines[1] else lines[1:]
    return ["#" + line if line.startswith("#") else line for line in lines]


def section(benchmark: Benchmark, run: Run | None, base: Path) -> list[str]:
    """One benchmark's part: where it comes from, a warning if contended, plots, tables."""
    lines = [f"## {benchmark.title} (`python -m {benchmark.command}`)", ""]
    if run is None:
        return [*lines, f"No results: run `python -m {benchmark.command} --mode quick`.", ""]
    r = run.results
    origin = f"From `{_relative(run.path, base)}`: the {r['mode']} run, {_date(r)}"
    if "elapsed_s" not in r:
        origin += "; the run stopped before the end (no `elapsed_s`): what it measured until then"
    lines += [origin + ".", ""]
    n, contended, share = contention(r)
    if contended:
        busy = "" if share is None else f" (others used {share:.0%} of the machine on average)"
        lines += [
            f"**Warning: measured under load.** {contended} of {n} timed medians had no sample "
            f"during which other processes used under 10% of the machine{busy}: they are "
            "medians of contended samples. Ratios measured in the same run (interleaved) hold "
            "better than absolute times; compare neither with another run's.",
            "",
        ]
    pngs = sorted(run.path.parent.glob("*.png"))
    if pngs:
        lines += [" ".join(f"![{p.stem}]({_relative(p, base)})" for p in pngs), ""]
    tables = importlib.import_module(benchmark.tables)
    return lines + _embed(tables.markdown(r)) + [""]


def report(results_dir: Path, out: Path) -> str:
    """The text of ``RESULTS.md`` for ``results_dir``'s results, its links relative to ``out``."""
    runs = find_runs(results_dir)
    base = out.parent
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make results` (`python -m benchmarks.report`) from the benchmarks' "
        f"`results.json` files under `{_relative(Path(results_dir), base)}/`: rerun "
        "it after a benchmark, never edit this file by hand (a test checks it is what the "
        "command writes). Each benchmark's fullest run is used (full, then targets, then quick).",
        "",
        "## Headline: the targets of issues 6 and 7",
        "",
        "Each verdict is the benchmark's own target function applied to its JSON.",
        "",
        *(v.line() for v in verdicts(runs)),
        "",
        "## Where and how it was measured",
        "",
        "The machine each run recorded, the dense matmul rate measured in the same run (the "
        "roofline), and how many timed medians come from contended samples only (other "
        "processes used 10% of the machine or more during every sample).",
        "",
        *machines(runs, base),
        "",
    ]
    for benchmark in BENCHMARKS:
        lines += section(benchmark, runs[benchmark.name], base)
    return "\n".join(lines).rstrip("\n") + "\n"


# The README quotes the headline between these lines; `make results` rewrites what is between.
README_START = "<!-- benchmarks.report headline: generated by `make results` -->"
README_END = "<!-- end of the generated headline -->"


def with_headline(readme: str, lines: list[str]) -> str:
    """``readme`` with the text between its headline markers replaced by ``lines``."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {README_START!r} ... {README_END!r} block")
    block = "\n".join([README_START, *lines, ""])
    return readme[:start] + block + readme[end:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="benchmarks/results", help="results directory")
    parser.add_argument("--out", default="benchmarks/RESULTS.md", help="the report to write")
    parser.add_argument("--readme", default="README.md", help="README quoting the headline")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.write_text(report(Path(args.results), out))
    lines = headline(args.results)
    readme = Path(args.readme)
    readme.write_text(with_headline(readme.read_text(), lines))
    print("\n".join(lines))
    print(f"wrote {out} and the headline in {readme}", flush=True)


if __name__ == "__main__":
    main()
