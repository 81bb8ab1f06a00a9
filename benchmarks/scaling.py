"""LM training scaling: tokens/s and peak memory against context length and width, with the
reference kernel (it materializes the ``[B, N, T, T]`` weights) and the blockwise one.

    python -m benchmarks.scaling --mode quick   # contexts 256 ... 16,384 at width 128: minutes
    python -m benchmarks.scaling --mode full    # contexts 256 ... 32,768, widths 128 ... 1,024

The LM is the lm experiment's tiny preset (``benchmarks/train_steps.py``: 4 layers, pre-LN,
GELU, learned positions, tied embeddings, AdamW) at width ``D`` with ``D / 32`` heads (the
preset's head width) and a ``4 D`` feed-forward layer, its position table as long as the
context, its attention kernel chosen by ``TransformerConfig.kernel``. The step is the
runner's (``experiments.runner.train_step`` with ``make_optimizer``, parameters and optimizer
state donated, via ``benchmarks.train_steps.ZooStep``) with the lm experiment's loss, on one
batch of random tokens.

**The memory budget** (``--memory-limit-gib``, default 2.5 GiB): a case fits when the resident
memory of its process, at its peak during a training step, stays within the budget; that
counts everything the step needs (parameters, optimizer state, batch, the compiled program,
the runtime and the step's temporaries). It is enforced per (case, kernel) in a fresh
subprocess by measurement, not ``RLIMIT_AS`` (a JAX process maps about 1.5 GB of address
space at start-up against 0.2 GB resident, so an address-space limit does not say what a
step needs): after compiling, XLA's own plan (``memory_analysis()``: temporaries plus
outputs that do not reuse donated inputs) is added to the resident memory, and a case whose
plan exceeds the budget is not run at all (so that nothing on this shared machine swaps);
otherwise one step runs while a thread polls the resident set (``benchmarks/timing.py``),
and a measured peak above the budget also counts as out of memory. Memory only grows with
the context and the width, so a kernel's larger cases after one that did not fit are not
run.

**Speed**: the kernels that fit a shape are timed interleaved (``benchmarks/timing.py``) in
one more fresh process, after compiling and one warm-up step each (a kernel that fits alone
is timed in its memory process); tokens/s = B x T / median step seconds. A step longer than
the time budget is timed once. Other processes' CPU use during every timed step is recorded
(``*`` in the tables marks medians of contended steps only): compare ratios from one run.

Results: ``<out>/results.json``, ``<out>/results.md`` (tables and the target verdict: the
blockwise kernel trains at a context at least 8x longer than the reference one within the
same budget) and ``<out>/scaling.png``.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.timing import machine_info, save_results, spawn

KERNELS = ("reference", "blockwise")
HEAD_DIM = 32  # the tiny preset's: 128 wide, 4 heads
TARGET_RATIO = 8  # issue 7: blockwise context >= 8x the reference's within the same memory


@dataclasses.dataclass(frozen=True)
class Case:
    context: int  # T, tokens per training sequence
    width: int  # D; heads D / HEAD_DIM, feed-forward 4 D
    kernel: str  # "reference" | "blockwise"
    layers: int = 4
    batch_size: int = 1

    @property
    def name(self) -> str:
        return f"T{self.context}_D{self.width}_L{self.layers}_B{self.batch_size}_{self.kernel}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What one ``--mode`` measures: a context sweep at one width, a width sweep at one
    context, both with every kernel."""

    contexts: tuple[int, ...]
    width: int  # of the context sweep
    widths: tuple[int, ...]
    context: int  # of the width sweep
    layers: int = 4
    batch_size: int = 1
    kernels: tuple[str, ...] = KERNELS
    repeats: int = 3  # timed steps per case (fewer when steps are slow)
    budget_s: float = 60.0  # stop timing a case after this long (it still gets one step)

    def shapes(self) -> list[tuple[int, int]]:
        """Every (context, width) once: the context sweep, then the width sweep."""
        shapes = [(t, self.width) for t in self.contexts]
        return shapes + [(self.context, d) for d in self.widths if (self.context, d) not in shapes]


SWEEPS = {
    "smoke": Sweep(contexts=(16,), width=32, widths=(), context=16, layers=1, repeats=1,
                   budget_s=1.0),
    "quick": Sweep(contexts=(256, 2048, 4096, 16384), width=128, widths=(128, 512),
                   context=256, repeats=2, budget_s=15.0),
    "full": Sweep(contexts=tuple(256 * 2**i for i in range(8)), width=128,
                  widths=(128, 256, 512, 1024), context=1024),
}  # fmt: skip


def model_config(case: Case) -> Any:
    """The tiny preset's LM at ``case``'s width, depth, context and kernel."""
    from benchmarks.train_steps import VOCAB, lm_config

    model, _, _ = lm_config("tiny", case.kernel)
    return dataclasses.replace(
        model,
        vocab_size=VOCAB,
        model_dim=case.width,
        ff_dim=4 * case.width,
        num_heads=max(case.width // HEAD_DIM, 1),
        num_layers=case.layers,
        max_length=case.context,
    )


# --------------------------------------------------------------------------------------
# Worker side: runs inside a fresh subprocess.


def _compiled_step(case: Case) -> tuple[Any, dict[str, Any]]:
    """(a zero-argument call running one training step and waiting for it, facts)."""
    import jax
    import numpy as np
    from flax import nnx

    from benchmarks.train_steps import VOCAB, ZooStep, lm_config, lm_flops_per_token
    from experiments.tasks import lm
    from zoo.models.transformer import TransformerLM, count_parameters

    config = model_config(case)
    _, train, _ = lm_config("tiny")
    model = TransformerLM(config, rngs=nnx.Rngs(train.seed))
    facts: dict[str, Any] = {
        "parameters": count_parameters(model),
        "flops_per_token": lm_flops_per_token(config, case.context),
    }
    # Ids 0-3 are special in every tokenizer of the zoo (0 = PAD, masked out of the loss).
    tokens = np.random.default_rng(0).integers(4, VOCAB, (case.batch_size, case.context + 1))
    step = ZooStep(model, lm.loss_fn, train, {"tokens": tokens.astype(np.int32)})
    del model  # the step holds the parameters (and donates them)
    rng = jax.random.fold_in(step.key, 0)
    start = time.perf_counter()
    compiled = step.fn.lower(step.params, step.opt_state, step.batch, rng).compile()
    facts["compile_s"] = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    if analysis is not None:
        facts["xla_temp_bytes"] = int(analysis.temp_size_in_bytes)
        # What a step allocates afresh: temporaries, and outputs not written over donated inputs.
        facts["xla_fresh_bytes"] = facts["xla_temp_bytes"] + max(
            0, int(analysis.output_size_in_bytes) - int(analysis.alias_size_in_bytes)
        )
    losses: list[float] = []

    def run() -> None:
        step.params, step.opt_state, metrics = compiled(
            step.params, step.opt_state, step.batch, rng
        )
        losses.append(float(metrics["loss"]))  # waits for the step

    facts["losses"] = losses
    return run, facts


def worker_memory(
    case: Case, *, budget_bytes: int, timing: dict[str, Any] | None
) -> dict[str, Any]:
    """Compile, check XLA's plan against the budget, measure one step's peak resident memory;
    then, if ``timing`` (``race``'s ``repeats`` and ``budget_s``) is given, time steps."""
    from benchmarks.timing import (
        Samples,
        peak_rss_during,
        race,
        release_free_heap,
        rss_bytes,
        time_call,
    )

    run, result = _compiled_step(case)
    losses = result.pop("losses")
    release_free_heap()
    resident = rss_bytes()
    result["resident_bytes"] = resident  # before the step: parameters, state, program, runtime
    if "xla_fresh_bytes" in result:
        result["planned_peak_bytes"] = resident + result["xla_fresh_bytes"]
        if result["planned_peak_bytes"] > budget_bytes:
            result["status"] = "out of memory (XLA's plan)"
            return result
    first = Samples()

    def first_run() -> None:
        seconds, contention = time_call(run)
        first.seconds.append(seconds)
        first.contention.append(contention)

    result["peak_bytes"] = resident + peak_rss_during(first_run)
    result["first_step_s"] = first.seconds[0]
    result["first_loss"] = losses[0]
    if result["peak_bytes"] > budget_bytes:
        result["status"] = "out of memory (measured)"
        return result
    result["status"] = "ok"
    if timing is not None:
        # A step longer than the time budget is reported from that first step alone (it paid
        # the same fresh allocations as every step: XLA allocates temporaries per call).
        slow = first.seconds[0] > timing["budget_s"]
        samples = first if slow else race({case.kernel: run}, **timing)[case.kernel]
        result.update(_speed(case, samples))
    return result


def worker_time(cases: list[Case], *, timing: dict[str, Any]) -> dict[str, Any]:
    """Time the steps of ``cases`` (one shape, several kernels) interleaved."""
    from benchmarks.timing import race, time_call

    runs, result = {}, {}
    for case in cases:
        run, facts = _compiled_step(case)
        facts.pop("losses")
        facts["first_call_s"] = time_call(run)[0]
        runs[case.kernel], result[case.kernel] = run, facts
    samples = race(runs, **timing)
    for case in cases:
        result[case.kernel].update(_speed(case, samples[case.kernel]))
    return {"kernels": result}


def _speed(case: Case, samples: Any) -> dict[str, Any]:
    summary = samples.summary(0.1)
    return {**summary, "tokens_per_s": case.batch_size * case.context / summary["median_s"]}


# --------------------------------------------------------------------------------------
# Driver side.


def _estimate_s(case: Case) -> float:
    """A pessimistic step time, for timeouts only (20 GFLOP/s, the reference 5x slower)."""
    D, T, L = case.width, case.context, case.layers
    flops = case.batch_size * T * (6 * 12 * L * D * D + 12 * L * D * T)
    return flops / 20e9 * (5 if case.kernel == "reference" else 1)


def _worker(args: list[str], sweep: Sweep, cases: list[Case]) -> dict[str, Any]:
    timing = ["--repeats", str(sweep.repeats), "--budget-s", str(sweep.budget_s)]
    timeout = 900 + 3 * (sweep.repeats + 2) * sum(_estimate_s(c) for c in cases)
    return spawn("benchmarks.scaling", args + timing, timeout=timeout)


def run_sweep(
    sweep: Sweep, *, budget_gib: float, out: Path, mode: str, log: bool = True
) -> dict[str, Any]:
    """Every shape of ``sweep`` with every kernel: memory in a fresh process per (shape,
    kernel); the kernels that fit timed interleaved in one more process (in the memory
    process itself when only the last kernel fits)."""
    results: dict[str, Any] = {
        "machine": machine_info(),
        "mode": mode,
        "sweep": dataclasses.asdict(sweep),
        "budget_gib": budget_gib,
        "cases": [],
    }
    started = time.time()
    # (kernel, width) -> the shortest context that did not fit; (kernel, context) -> width.
    too_long: dict[tuple[str, int], int] = {}
    too_wide: dict[tuple[str, int], int] = {}
    shapes = sweep.shapes()
    for n, (context, width) in enumerate(shapes):
        if log:
            print(f"[{n + 1}/{len(shapes)}] context {context:,}, width {width:,}", flush=True)
        entries: dict[str, dict[str, Any]] = {}
        untimed: list[Case] = []
        for i, kernel in enumerate(sweep.kernels):
            case = Case(context, width, kernel, layers=sweep.layers, batch_size=sweep.batch_size)
            entry: dict[str, Any] = {"case": dataclasses.asdict(case)}
            longer = too_long.get((kernel, width))
            wider = too_wide.get((kernel, context))
            if longer is not None and context > longer:
                entry["status"] = f"out of memory (not run: T={longer:,} did not fit)"
            elif wider is not None and width > wider:
                entry["status"] = f"out of memory (not run: D={wider:,} did not fit)"
            else:
                alone = not untimed and i == len(sweep.kernels) - 1
                args = ["--worker-memory", json.dumps(dataclasses.asdict(case))]
                args += ["--memory-limit-gib", str(budget_gib)] + (["--time"] if alone else [])
                entry.update(_worker(args, sweep, [case]))
                if entry.get("status", "").startswith("out of memory"):
                    too_long[kernel, width] = min(too_long.get((kernel, width), context), context)
                    too_wide[kernel, context] = min(too_wide.get((kernel, context), width), width)
                elif entry.get("status") == "ok" and "median_s" not in entry:
                    untimed.append(case)
            entry.setdefault("status", "error")
            entries[kernel] = entry
        if untimed:
            specs = json.dumps([dataclasses.asdict(c) for c in untimed])
            timed = _worker(["--worker-time", specs], sweep, untimed)
            for case in untimed:
                timing = timed.get("kernels", {}).get(case.kernel)
                if timing is None:
                    entries[case.kernel]["timing_error"] = timed.get("error", "no result")
                else:  # the memory process's facts stand; its compile and first call too
                    entries[case.kernel].update(
                        {k: v for k, v in timing.items() if k not in entries[case.kernel]}
                    )
                    entries[case.kernel]["interleaved_with"] = [c.kernel for c in untimed]
        for entry in entries.values():
            if log:
                _print_case(entry)
            results["cases"].append(entry)
        results["target"] = target(results)
        _save(results, out, with_plot=False)
    results["elapsed_s"] = time.time() - started
    _save(results, out)
    if log:
        print(f"wrote {out}/results.json, results.md, scaling.png", flush=True)
    return results


def _print_case(entry: dict[str, Any]) -> None:
    parts = [f"   {Case(**entry['case']).name:32s} {entry['status']}"]
    if "tokens_per_s" in entry:
        parts.append(f"{entry['tokens_per_s']:10.1f} tok/s")
    for key in ("peak_bytes", "planned_peak_bytes"):
        if key in entry:
            parts.append(f"{key.split('_b')[0].replace('_', ' ')} {entry[key] / 2**30:.2f} GiB")
            break
    for key in ("error", "timing_error"):
        if key in entry:
            parts.append(f"{key.replace('_', ' ')}: {entry[key]}")
    print("  ".join(parts), flush=True)


def _save(results: dict[str, Any], out: Path, *, with_plot: bool = True) -> None:
    draw = (lambda: plot(results, out)) if with_plot else None
    save_results(out, results, markdown(results), draw)


# --------------------------------------------------------------------------------------
# Reports.


def longest_contexts(results: dict[str, Any]) -> dict[str, dict[int, int | None]]:
    """kernel -> width -> the longest context that fit the budget (None: none did)."""
    longest: dict[str, dict[int, int | None]] = {}
    for entry in results["cases"]:
        case = Case(**entry["case"])
        widths = longest.setdefault(case.kernel, {})
        best = widths.setdefault(case.width, None)
        if entry["status"] == "ok" and (best is None or case.context > best):
            widths[case.width] = case.context
    return longest


def target(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 7: blockwise trains at a context >= 8x the reference's, within the budget.

    At the context sweep's width; ``met`` is None when a kernel has no context that fit, or
    when neither ran out of memory (the sweep then says nothing about the ratio).
    """
    width = results["sweep"]["width"]
    longest = longest_contexts(results)
    reference = longest.get("reference", {}).get(width)
    blockwise = longest.get("blockwise", {}).get(width)
    failed = any(
        e["status"].startswith("out of memory")
        for e in results["cases"]
        if e["case"]["width"] == width and e["case"]["kernel"] == "reference"
    )
    verdict: dict[str, Any] = {
        "width": width,
        "budget_gib": results["budget_gib"],
        "reference_longest": reference,
        "blockwise_longest": blockwise,
        "ratio": None,
        "met": None,
    }
    if reference and blockwise and failed:
        verdict["ratio"] = blockwise / reference
        verdict["met"] = verdict["ratio"] >= TARGET_RATIO
    return verdict


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if entry["status"] == "ok":
        memory = f"{entry['peak_bytes'] / 2**30:.2f} GiB"
        if "tokens_per_s" not in entry:
            return f"timing failed: {entry.get('timing_error', '?')[:40]}<br>{memory}"
        star = "*" if entry.get("clean_samples", 1) == 0 else ""
        return f"{entry['tokens_per_s']:,.0f}{star} tok/s<br>{memory}"
    if "peak_bytes" in entry:
        return f"OOM: {entry['peak_bytes'] / 2**30:.2f} GiB measured"
    if "planned_peak_bytes" in entry:
        return f"OOM: {entry['planned_peak_bytes'] / 2**30:.2f} GiB planned"
    if entry["status"].startswith("out of memory"):
        return "OOM " + entry["status"].split("(", 1)[1].rstrip(")")
    return "error: " + entry.get("error", "?")[:60]


def markdown(results: dict[str, Any]) -> str:
    m, sweep = results["machine"], results["sweep"]
    lines = [
        f"# LM training scaling ({results['mode']})",
        "",
        f"{m['processor']}, {m['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"The lm experiment's tiny LM ({sweep['layers']} layers, heads of {HEAD_DIM}, "
        f"feed-forward 4 x width), batch {sweep['batch_size']}, the runner's AdamW training "
        f"step. Memory budget: {results['budget_gib']:g} GiB of resident memory for the whole "
        "process at its peak during a step; OOM = over it, by XLA's plan (not run) or measured. "
        "Per cell: tokens/s (median step; `*` = only steps during which other processes used "
        ">10% of the machine) and peak resident GiB.",
    ]
    by_shape = {
        (e["case"]["context"], e["case"]["width"], e["case"]["kernel"]): e for e in results["cases"]
    }
    for title, shapes in (
        (f"Context, width {sweep['width']}", [(t, sweep["width"]) for t in sweep["contexts"]]),
        (f"Width, context {sweep['context']:,}", [(sweep["context"], d) for d in sweep["widths"]]),
    ):
        if not shapes:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| context T | width D | " + " | ".join(KERNELS) + " | blockwise / reference |",
            "|---" * (len(KERNELS) + 3) + "|",
        ]
        for t, d in shapes:
            cells = [_cell(by_shape.get((t, d, k))) for k in KERNELS]
            ref, blk = (by_shape.get((t, d, k), {}) for k in KERNELS)
            ratio = (
                f"{blk['tokens_per_s'] / ref['tokens_per_s']:.2f}x"
                if "tokens_per_s" in ref and "tokens_per_s" in blk
                else ""
            )
            lines.append(f"| {t:,} | {d:,} | " + " | ".join(cells) + f" | {ratio} |")
    t = results.get("target") or target(results)
    lines += ["", "## Target (issue 7)", ""]

    def context(n: int | None) -> str:
        return "none" if n is None else f"{n:,}"

    summary = (
        f"longest context within {t['budget_gib']:g} GiB at width {t['width']}: reference "
        f"{context(t['reference_longest'])}, blockwise {context(t['blockwise_longest'])}"
    )
    if t["met"] is None:
        lines.append(f"- {summary}: not decided by this sweep (a kernel never fit, or the "
                     "reference never ran out of memory)")  # fmt: skip
    else:
        verdict = "met" if t["met"] else "MISSED"
        bound = ""
        if t["blockwise_longest"] == max(sweep["contexts"]):
            bound = "; the blockwise kernel fit the sweep's longest context, so at least that"
        lines.append(f"- {summary}: {t['ratio']:g}x ({verdict}, target >= {TARGET_RATIO}x{bound})")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["sweep"]
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 7.2), squeeze=False)
    budget = results["budget_gib"]
    for column, (axis, fixed, label) in enumerate(
        (("context", ("width", sweep["width"]), "context T"),
         ("width", ("context", sweep["context"]), "width D"))
    ):  # fmt: skip
        speed, memory = axes[0][column], axes[1][column]
        for kernel in KERNELS:
            entries = sorted(
                (e for e in results["cases"]
                 if e["case"]["kernel"] == kernel and e["case"][fixed[0]] == fixed[1]),
                key=lambda e: e["case"][axis],
            )  # fmt: skip
            ok = [e for e in entries if "tokens_per_s" in e]
            line = speed.plot(
                [e["case"][axis] for e in ok],
                [e["tokens_per_s"] for e in ok],
                marker="o",
                label=kernel,
            )[0]
            known = [e for e in entries if "peak_bytes" in e or "planned_peak_bytes" in e]
            memory.plot(
                [e["case"][axis] for e in known],
                [e.get("peak_bytes", e.get("planned_peak_bytes", 0)) / 2**30 for e in known],
                marker="o",
                color=line.get_color(),
                label=kernel,
            )
            planned = [e for e in known if "peak_bytes" not in e]
            if planned:  # open markers: XLA's plan, the step was not run
                memory.plot(
                    [e["case"][axis] for e in planned],
                    [e["planned_peak_bytes"] / 2**30 for e in planned],
                    ls="",
                    marker="o",
                    markerfacecolor="white",
                    color=line.get_color(),
                    label=kernel + " (XLA's plan, not run)",
                )
        memory.axhline(budget, color="grey", ls="--", label=f"budget {budget:g} GiB")
        speed.set_ylabel("tokens / s")
        memory.set_ylabel("peak resident GiB")
        name = f"{fixed[0]} {fixed[1]:,}"
        speed.set_title(f"training step, {name}", fontsize=9)
        memory.set_title(f"memory, {name}", fontsize=9)
        for ax in (speed, memory):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(
        f"LM training scaling ({results['machine']['processor']}, "
        f"{results['machine']['cores']} cores)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=tuple(SWEEPS), default="quick")
    parser.add_argument(
        "--out", default=None, help="directory (default benchmarks/results/scaling/<mode>)"
    )
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=2.5,
        help="resident memory a training step may use, whole process (default 2.5)",
    )
    parser.add_argument("--contexts", default=None, help="comma-separated context lengths")
    parser.add_argument("--widths", default=None, help="comma-separated widths")
    parser.add_argument(
        "--kernels", default=None, help="comma-separated subset of " + ",".join(KERNELS)
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per case")
    parser.add_argument("--worker-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-time", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    timing = {"repeats": args.repeats, "budget_s": args.budget_s}
    if args.worker_memory:
        result = worker_memory(
            Case(**json.loads(args.worker_memory)),
            budget_bytes=int(args.memory_limit_gib * 2**30),
            timing=timing if args.time else None,
        )
        print(json.dumps(result), flush=True)
        return None
    if args.worker_time:
        cases = [Case(**c) for c in json.loads(args.worker_time)]
        print(json.dumps(worker_time(cases, timing=timing)), flush=True)
        return None
    sweep = SWEEPS[args.mode]
    if args.contexts:
        sweep = dataclasses.replace(sweep, contexts=_ints(args.contexts))
    if args.widths:
        sweep = dataclasses.replace(sweep, widths=_ints(args.widths))
    if args.kernels:
        kernels = tuple(args.kernels.split(","))
        if not set(kernels) <= set(KERNELS):
            parser.error(f"--kernels must be a subset of {','.join(KERNELS)}, got {args.kernels}")
        sweep = dataclasses.replace(sweep, kernels=kernels)
    if args.repeats:
        sweep = dataclasses.replace(sweep, repeats=args.repeats)
    out = Path(args.out or f"benchmarks/results/scaling/{args.mode}")
    return run_sweep(sweep, budget_gib=args.memory_limit_gib, out=out, mode=args.mode)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


if __name__ == "__main__":
    main()
