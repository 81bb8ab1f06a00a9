"""LM training scaling: tokens/s and peak memory against context and width, the reference
kernel (it materializes the ``[B, N, T, T]`` weights) against the blockwise one.

python -m benchmarks.scaling               # contexts 256 ... 16,384 at width 128: minutes
python -m benchmarks.scaling --mode full   # contexts 256 ... 32,768, widths 128 ... 1,024
"""

import argparse
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column, Plot, Row, Table, Target

NAME, TITLE = "scaling", "LM training scaling"
MODES = {
    "quick": "contexts 256 ... 16,384 at width 128, widths 128 and 512 at context 256",
    "full": "contexts 256 ... 32,768 at width 128, widths 128 ... 1,024 at context 1,024",
    "smoke": "one layer, width 32, context 16: seconds, for the tests",
}
KERNELS = ("reference", "blockwise")
HEAD_DIM = 32  # the tiny preset's: 128 wide, 4 heads
OOM = ("out of memory (XLA's plan)", "out of memory (measured)")
TARGET = Target("blockwise / reference longest LM training context in the same memory", 8.0)
NOTE = """\
The lm experiment's tiny LM (`benchmarks/train_steps.py`: pre-LN, GELU, learned positions,
tied embeddings) at width D, D / 32 heads, a 4 D feed-forward layer, positions as long as the
context; the runner's AdamW step (`ZooStep`, state donated) with the lm loss on random tokens.
**Memory**: a case fits when its process's resident memory at its peak during a step (all of
it: parameters, optimizer state, batch, program, runtime, temporaries) stays within
`--memory-limit-gib` (2.5). Each (shape, kernel) runs in a fresh process: after compiling,
XLA's plan (temporaries, and outputs not written over donated inputs) is added to the resident
memory, and a case planned over the budget is not run (nothing on a shared machine swaps);
else one step runs while a thread polls the resident set, and a peak over the budget is out of
memory too. Memory only grows with context and width: a kernel's larger cases after one that
did not fit are not run. (Not an address-space limit: JAX maps ~1.5 GB at start, 0.2 GB
resident.) **Speed**: the kernels that fit a shape are timed interleaved in one more fresh
process, after compiling and a warm-up step each; tokens/s = B x T / median step seconds, a
step longer than the time budget timed once.
Cells: tokens/s (`*`: contended steps only) and peak resident GiB, or OOM and why."""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A context sweep at one width and a width sweep at one context, every kernel."""

    contexts: tuple[int, ...]
    width: int  # of the context sweep
    widths: tuple[int, ...]
    context: int  # of the width sweep
    layers: int = 4
    batch_size: int = 1
    repeats: int = 3  # timed steps per case (fewer when steps are slow)
    budget_s: float = 60.0  # stop timing a case after this long (it still gets one step)


SWEEPS = {
    "quick": Sweep((256, 2048, 4096, 16384), 128, (128, 512), 256, repeats=2, budget_s=15.0),
    "full": Sweep(tuple(256 * 2**i for i in range(8)), 128, (128, 256, 512, 1024), 1024),
    "smoke": Sweep((16,), 32, (), 16, layers=1, repeats=1, budget_s=1.0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-limit-gib", type=float, default=2.5,
                        help="resident memory a training step may use, whole process")  # fmt: skip
    parser.add_argument("--contexts", default=None, help="comma-separated context lengths")
    parser.add_argument("--widths", default=None, help="comma-separated widths")
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per case")


def cases(args: argparse.Namespace, rows: list[Row]) -> Iterator[Row]:
    """One case per shape, run in the driver: it spawns the workers of each kernel."""
    s, kernels = SWEEPS[args.mode], args.kernels.split(",")
    if not set(kernels) <= set(KERNELS):
        raise SystemExit(f"--kernels must be a subset of {','.join(KERNELS)}, got {args.kernels}")
    contexts = tuple(int(x) for x in args.contexts.split(",")) if args.contexts else s.contexts
    widths = tuple(int(x) for x in args.widths.split(",")) if args.widths else s.widths
    shapes = [(t, s.width) for t in contexts]
    for T, D in shapes + [(s.context, d) for d in widths if (s.context, d) not in shapes]:
        skip = {}
        for k in kernels:  # memory only grows with the context and the width
            failed = [r["case"] for r in rows if r["case"]["kernel"] == k and r["status"] in OOM]
            if longer := [c["context"] for c in failed if c["width"] == D and c["context"] < T]:
                skip[k] = f"out of memory (not run: T={min(longer):,} did not fit)"
            elif wider := [c["width"] for c in failed if c["context"] == T and c["width"] < D]:
                skip[k] = f"out of memory (not run: D={min(wider):,} did not fit)"
        yield {"name": f"T{T}_D{D}_L{s.layers}_B{s.batch_size}", "in_process": True,
               "kernels": kernels, "skip": skip, "context": T, "width": D, "layers": s.layers,
               "batch_size": s.batch_size, "budget_gib": args.memory_limit_gib,
               "repeats": args.repeats or s.repeats, "budget_s": s.budget_s,
               "sweep": {"width": s.width, "context": s.context}}  # fmt: skip


def _timeout(cases: list[Row]) -> float:
    """Pessimistic, for a worker's timeout only: 20 GFLOP/s, the reference 5x slower."""
    seconds = 0.0
    for c in cases:
        D, T, L = c["width"], c["context"], c["layers"]
        flops = c["batch_size"] * T * (6 * 12 * L * D * D + 12 * L * D * T)
        seconds += flops / 20e9 * (5 if c["kernel"] == "reference" else 1)
    return 900 + 3 * (cases[0]["repeats"] + 2) * seconds


def measure(shape: Row) -> list[Row]:
    """Every kernel at one shape: memory in a fresh process per kernel, then the kernels that
    fit timed interleaved in one more."""
    common = {k: v for k, v in shape.items() if k not in ("in_process", "kernels", "skip")}
    rows = []
    for kernel in shape["kernels"]:
        case = {**common, "name": f"{shape['name']}_{kernel}", "kernel": kernel}
        if kernel in shape["skip"]:
            rows.append({"case": case, "status": shape["skip"][kernel]})
        else:
            found = harness.spawn(f"{__name__}:memory", case, timeout=_timeout([case]))
            rows.append({"case": case, "status": "error", **found})
    fit = [r for r in rows if r["status"] == "ok"]
    if fit:
        cases = [r["case"] for r in fit]
        timed = harness.spawn(f"{__name__}:timing", cases, timeout=_timeout(cases))
        for row in fit:
            if (facts := timed.get(row["case"]["kernel"])) is None:
                row["timing_error"] = timed.get("error", "no result")
            else:  # the memory process's facts stand: its compile and first step too
                row |= {k: v for k, v in facts.items() if k not in row}
                row["interleaved_with"] = [c["kernel"] for c in cases]
    return rows


# --------------------------------------------------------------------------------------
# Inside the fresh processes.


def compiled_step(case: Row) -> tuple[Any, Row]:
    """(a call running one training step and waiting for it, what it is: parameters, FLOPs
    per token, compile seconds, XLA's memory plan)."""
    import jax
    import numpy as np
    from flax import nnx

    from benchmarks.train_steps import VOCAB, ZooStep, lm_config, lm_flops_per_token
    from experiments.tasks import lm
    from zoo.models.transformer import TransformerLM, count_parameters

    tiny, train, _ = lm_config("tiny", case["kernel"])
    D, T = case["width"], case["context"]
    config = dataclasses.replace(tiny, model_dim=D, ff_dim=4 * D, num_heads=max(D // HEAD_DIM, 1),
                                 num_layers=case["layers"], max_length=T)  # fmt: skip
    model = TransformerLM(config, rngs=nnx.Rngs(train.seed))
    facts = {
        "parameters": count_parameters(model),
        "flops_per_token": lm_flops_per_token(config, T),
    }
    # Ids 0-3 are special in every tokenizer of the zoo (0 = PAD, masked out of the loss).
    tokens = np.random.default_rng(0).integers(4, VOCAB, (case["batch_size"], T + 1))
    step = ZooStep(model, lm.loss_fn, train, {"tokens": tokens.astype(np.int32)})
    del model  # the step holds the parameters (and donates them)
    rng = jax.random.fold_in(step.key, 0)
    start = time.perf_counter()
    compiled = step.fn.lower(step.params, step.opt_state, step.batch, rng).compile()
    facts["compile_s"] = time.perf_counter() - start
    if (plan := compiled.memory_analysis()) is not None:
        facts["xla_temp_bytes"] = int(plan.temp_size_in_bytes)
        # What a step allocates afresh: temporaries, and outputs not written over donated inputs.
        fresh = int(plan.output_size_in_bytes) - int(plan.alias_size_in_bytes)
        facts["xla_fresh_bytes"] = facts["xla_temp_bytes"] + max(0, fresh)

    def run() -> float:
        step.params, step.opt_state, metrics = compiled(
            step.params, step.opt_state, step.batch, rng
        )
        return float(metrics["loss"])  # waits for the step

    return run, facts


def memory(case: Row) -> Row:
    """Compile, check XLA's plan against the budget, then measure one step's peak resident
    memory (not run when the plan is over the budget)."""
    run, result = compiled_step(case)
    budget = case["budget_gib"] * 2**30
    harness.release_free_heap()
    # Before the step: parameters, optimizer state, program, runtime.
    result["resident_bytes"] = resident = harness.rss_bytes()
    if "xla_fresh_bytes" in result:
        result["planned_peak_bytes"] = resident + result["xla_fresh_bytes"]
        if result["planned_peak_bytes"] > budget:
            return {**result, "status": OOM[0]}

    def first_step() -> None:
        result["first_step_s"] = harness.time_call(lambda: result.update(first_loss=run()))[0]

    result["peak_bytes"] = resident + harness.peak_rss_during(first_step)
    return {**result, "status": OOM[1] if result["peak_bytes"] > budget else "ok"}


def timing(cases: list[Row]) -> dict[str, Row]:
    """kernel -> its step's facts and speed: the steps of ``cases`` (one shape, several
    kernels) timed interleaved, after a first call each."""
    runs, result = {}, {}
    for c in cases:
        runs[c["kernel"]], result[c["kernel"]] = compiled_step(c)
        result[c["kernel"]]["first_call_s"] = harness.time_call(runs[c["kernel"]])[0]
    # A step longer than budget_s is timed once: XLA allocates its temporaries afresh on
    # every call, so one step pays what every step pays.
    timed = harness.race(runs, repeats=cases[0]["repeats"], budget_s=cases[0]["budget_s"])
    for c in cases:
        summary = timed[c["kernel"]].summary()
        tokens_per_s = c["batch_size"] * c["context"] / summary["median_s"]
        result[c["kernel"]] |= {**summary, "tokens_per_s": tokens_per_s}
    return result


# --------------------------------------------------------------------------------------
# Reading the rows.


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The longest context that fit, blockwise over reference, at the context sweep's width:
    not measured when a kernel never fit or the reference never ran out of memory."""
    if not rows:
        return [TARGET.check(None)]
    width, budget = rows[0]["case"]["sweep"]["width"], rows[0]["case"]["budget_gib"]
    at = [r for r in rows if r["case"]["width"] == width]
    ok = [r["case"] for r in at if r["status"] == "ok"]
    fits = {k: max((c["context"] for c in ok if c["kernel"] == k), default=None) for k in KERNELS}
    reference, blockwise = fits["reference"], fits["blockwise"]
    fit = ", ".join(f"{k} {n:,}" if n else f"{k} none" for k, n in fits.items())
    where = f"width {width}, {budget:g} GiB: longest {fit}"
    ran_out = any(r["case"]["kernel"] == "reference" and "out of memory" in r["status"] for r in at)
    if not (reference and blockwise and ran_out):
        why = "not decided: a kernel never fit, or the reference never ran out of memory"
        return [TARGET.check(None, case=where, note=why)]
    note = ""
    if blockwise == max(r["case"]["context"] for r in at):
        note = "blockwise fit the longest context tried: the ratio is at least this"
    return [TARGET.check(blockwise / reference, case=where, note=note)]


def _cell(kernel: str) -> Any:
    def text(shape: Row) -> str:
        if (r := shape.get(kernel)) is None:
            return ""
        gib = r.get("peak_bytes", r.get("planned_peak_bytes"))
        memory = "" if gib is None else f"{gib / 2**30:.2f} GiB"
        if r["status"] == "ok":
            speed = f"timing failed: {r.get('timing_error', '?')[:40]}"
            if "tokens_per_s" in r:
                speed = f"{r['tokens_per_s']:,.0f}{harness.star(r)} tok/s"
            return f"{speed}<br>{memory}"
        if r["status"] in OOM:
            return f"OOM: {memory} {'planned' if r['status'] == OOM[0] else 'measured'}"
        if r["status"].startswith("out of memory"):
            return "OOM " + r["status"].split("(", 1)[1].rstrip(")")
        return "error: " + r.get("error", "?")[:60]

    return text


def _ratio(shape: Row) -> str:
    ref, blk = (shape.get(k, {}).get("tokens_per_s") for k in KERNELS)
    return f"{blk / ref:.2f}x" if ref and blk else ""


def _table(along: str) -> Table:
    """Rows -> one per shape of the sweep along the context or the width, by kernel."""
    fixed = "width" if along == "context" else "context"

    def shapes(rows: list[Row]) -> list[Row]:
        by: dict[int, Row] = {}
        for r in rows:
            if (c := r["case"])[fixed] == c["sweep"][fixed]:
                by.setdefault(c[along], {"context": c["context"], "width": c["width"]})
                by[c[along]][c["kernel"]] = r
        return [by[x] for x in sorted(by)]

    columns = [Column("context T", lambda s: s["context"], "{:,}"),
               Column("width D", lambda s: s["width"], "{:,}"),
               *(Column(k, _cell(k)) for k in KERNELS),
               Column("blockwise / reference", _ratio)]  # fmt: skip
    return Table(f"Against the {along}", columns, shapes)


TABLES = (_table("context"), _table("width"))


def _points(what: str) -> Any:
    def points(r: Row) -> Iterator[tuple[str, str, float, float]]:
        c = r["case"]
        for along, fixed in (("context", "width"), ("width", "context")):
            if c[fixed] != c["sweep"][fixed]:
                continue
            panel, x = f"against the {along}, {fixed} {c[fixed]:,}", c[along]
            if what == "speed" and "tokens_per_s" in r:
                yield panel, c["kernel"], x, r["tokens_per_s"]
            elif what == "memory" and ("peak_bytes" in r or "planned_peak_bytes" in r):
                planned = "" if "peak_bytes" in r else " (XLA's plan, not run)"
                gib = (r.get("peak_bytes") or r["planned_peak_bytes"]) / 2**30
                yield panel, c["kernel"] + planned, x, gib
                yield panel, f"budget {c['budget_gib']:g} GiB", x, c["budget_gib"]

    return points


PLOTS = (
    Plot("speed.png", _points("speed"), "context T or width D", "training tokens / s"),
    Plot("memory.png", _points("memory"), "context T or width D", "peak resident GiB"),
)


if __name__ == "__main__":
    harness.main("benchmarks.scaling")
