"""Model training steps: the zoo's runner steps against an identical PyTorch model.

python -m benchmarks.models                # quick: LMs at B = 12, RNNsearch, Show-Attend-Tell
python -m benchmarks.models --mode full    # adds shakespeare_char at B = 64, 10 timed steps
python -m benchmarks.models --only lm/tiny --repeats 3
"""

import argparse
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column, Plot, Row, Table, Target

NAME, TITLE = "models", "Model training steps"
MODES = {
    "quick": "lm/tiny, lm/shakespeare_char at B = 12 against their PyTorch twins; RNNsearch, "
    "Show-Attend-Tell; 5 timed steps",
    "full": "adds lm/shakespeare_char at B = 64; 10 timed steps",
    "smoke": "the smoke LM and RNNsearch at B = 3, the eager twin only: seconds, for the tests",
}
KERNELS = ("reference", "blockwise")  # the LM's attention kernels
TWINS = ("eager", "compile")  # the PyTorch twin eager and under torch.compile
ZOO_NONE, TORCH_NONE = "zoo.none", "torch.eager.none"  # the steps with attention skipped
SPEED = Target("zoo LM training tokens/s / the faster PyTorch twin's", 1.0)
RECOMPILE = Target("XLA compilations by second same-shape calls of the zoo train steps", 0, "",
                   at_least=False)  # fmt: skip
NOTE = """\
One optimizer step of each model's preset as the runner takes it (`benchmarks/train_steps.py`:
the task's loss, `train_step`, `make_optimizer`'s AdamW and clipping, state donated) on a
fixed synthetic batch, rows at the longest length; tokens = predicted target tokens. The LM's
PyTorch twin (`benchmarks/torch_lm.py`: the same layers, parameters and optimizer; SDPA),
eager and under `torch.compile`, starts from the zoo model's weights: `first loss` should
agree. Each case runs in a fresh process, its steps timed interleaved after two warm-up steps
each: `ms/step` is the median, `best ms` the fastest, `busy` the share of the machine others
used meanwhile. Model FLOPs (LM): 6 x (parameters - learned positions) + 12 L D T per token
(PaLM, appendix B); `of matmul` divides by the best dense float32 2048^2 matmul rate measured
in the same process (`matmul GFLOP/s`). RNNsearch and Show-Attend-Tell: additive attention only."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (5, full 10)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")


def case(model: str, batch_size: int, kernels: tuple[str, ...] = (),
         torch: tuple[str, ...] = (), attention_cost: bool = False) -> Row:  # fmt: skip
    """``model`` (``<name>/<preset>`` of ``train_steps.make_zoo_step``) at ``batch_size``: the
    zoo ``kernels`` to time (none: no kernel choice), its PyTorch ``torch`` twins, and with
    ``attention_cost`` the zoo step and the eager twin again with attention skipped."""
    if (torch or attention_cost) and not model.startswith("lm/"):
        raise ValueError(f"only the LM has a PyTorch twin and a kernel to skip, not {model}")
    if not (set(kernels) <= set(KERNELS) and set(torch) <= set(TWINS)):
        raise ValueError(f"kernels must be among {KERNELS}, twins {TWINS}: {kernels}, {torch}")
    return {"name": f"{model} B={batch_size}", "model": model, "batch_size": batch_size,
            "kernels": list(kernels), "torch": list(torch),
            "attention_cost": attention_cost}  # fmt: skip


def cases(args: argparse.Namespace, rows: list[Row]) -> Iterator[Row]:
    if args.mode == "smoke":  # torch.compile takes a minute; without torch, the zoo alone
        twins = ("eager",) if importlib.util.find_spec("torch") else ()
        chosen = [case("lm/smoke", 3, ("reference",), twins, True), case("rnnsearch/smoke", 3)]
    else:
        chosen = [case(f"lm/{p}", 12, KERNELS, TWINS, True) for p in ("tiny", "shakespeare_char")]
        if args.mode == "full":
            chosen.append(case("lm/shakespeare_char", 64, KERNELS, TWINS))
        chosen += [case("rnnsearch/tiny", 64), case("sat/tiny", 48)]  # their presets' B
    repeats = args.repeats or (10 if args.mode == "full" else 5)
    yield from ({**c, "repeats": repeats, "timeout_s": args.timeout} for c in chosen)


def measure(c: Row, warmup: int = 2) -> Row:
    """Every step of a case built and its first calls checked, then all timed interleaved."""
    from benchmarks import train_steps  # experiments/: not an import of benchmarks.report

    row: Row = {"matmul_gflops": harness.dense_matmul({}), "impls": {}}
    runs: dict[str, Callable[[], Any]] = {}
    kernels = c["kernels"] or ["reference"]
    for i, kernel in enumerate(kernels + [train_steps.NO_ATTENTION] * c["attention_cost"]):
        built = train_steps.make_zoo_step(c["model"], batch_size=c["batch_size"], kernel=kernel)
        row |= {"parameters": built["parameters"], "tokens_per_step": built["tokens"],
                "flops_per_step": built["flops"]}  # fmt: skip
        if i == 0 and c["torch"]:  # before the zoo's first step: it donates the weights
            from benchmarks import torch_lm  # torch: not an import of benchmarks.report

            twins = [(f"torch.{m}", m == "compile", True) for m in c["torch"]]
            twins += [(TORCH_NONE, False, False)] * c["attention_cost"]
            for name, compiled, attention in twins:
                run, row["impls"][name] = torch_lm.twin_step(built, compiled, attention)
                if not row["impls"][name]["compile_error"]:  # else torch.eager measures it
                    runs[name] = run
        name = f"zoo.{kernel}" if c["kernels"] else "zoo"
        facts = train_steps.compile_report(built["step"])
        kind = kernel if c["kernels"] else None
        row["impls"][name] = {"kernel": kind, "parameters": built["parameters"], **facts}
        runs[name] = built["step"]
    runs = dict(sorted(runs.items(), key=lambda item: not item[0].startswith("zoo")))
    warm = {name: [harness.time_call(run)[0] for _ in range(warmup)] for name, run in runs.items()}
    budget_s = max(30.0, 2 * c["repeats"] * sum(min(times) for times in warm.values()))
    matmul = max(row["matmul_gflops"].values())
    for name, s in harness.race(runs, repeats=c["repeats"], budget_s=budget_s).items():
        median = (summary := s.summary())["median_s"]
        summary |= {"warmup_s": warm[name], "steps_per_s": 1 / median,
                    "tokens_per_s": row["tokens_per_step"] / median}  # fmt: skip
        if row["flops_per_step"]:
            gflops = row["flops_per_step"] / median / 1e9
            summary |= {"model_gflops": gflops, "of_matmul": gflops / matmul}
        row["impls"][name] |= summary
    return row


# --------------------------------------------------------------------------------------
# Reading the rows.


def against_twin(row: Row) -> dict[str, tuple[float, str, Row]]:
    """zoo LM step -> (its tokens/s over the faster twin's, that twin, the twin's timing)."""
    impls = row.get("impls", {})
    twins = [(n, r) for n, r in impls.items() if n in ("torch.eager", "torch.compile")
             and "tokens_per_s" in r]  # fmt: skip
    if not twins:
        return {}
    peer, theirs = max(twins, key=lambda t: t[1]["tokens_per_s"])
    return {impl: (r["tokens_per_s"] / theirs["tokens_per_s"], peer, theirs)
            for impl, r in impls.items()
            if impl.startswith("zoo") and impl != ZOO_NONE and "tokens_per_s" in r}  # fmt: skip


def steps(rows: list[Row]) -> list[Row]:
    """One line per step of every case (a failed case: one line with its error)."""
    lines = []
    for row in rows:
        if "error" in row:
            lines.append({"case": row["case"], "impl": "", "error": row["error"]})
        vs = against_twin(row)
        for i, (impl, r) in enumerate(row.get("impls", {}).items()):
            matmul = max(row["matmul_gflops"].values()) if i == 0 else None
            lines.append({**r, "case": row["case"], "impl": impl, "matmul": matmul,
                          "vs": vs[impl][0] if impl in vs else None})  # fmt: skip
    return lines


def split(rows: list[Row]) -> list[Row]:
    """Where a step's time goes: with attention skipped on both sides (``zoo.none``,
    ``torch.eager.none``), ``rest`` is that step's median and ``attention`` the full step's
    less it; ``*_vs`` is the eager twin's time for the same part over the zoo's."""
    lines = []
    for row in rows:
        medians = {n: r["median_s"] for n, r in row.get("impls", {}).items() if "median_s" in r}
        if not {ZOO_NONE, TORCH_NONE, "torch.eager"} <= medians.keys():
            continue
        rest, twin_rest = medians[ZOO_NONE], medians[TORCH_NONE]
        twin = {"step": medians["torch.eager"], "attention": medians["torch.eager"] - twin_rest}
        for impl in against_twin(row):
            attention = medians[impl] - rest
            lines.append({"case": row["case"], "impl": impl, "step": medians[impl],
                          "attention": attention, "rest": rest, "rest_vs": twin_rest / rest,
                          "attention_vs": twin["attention"] / attention if attention > 0
                          else None})  # fmt: skip
        lines.append({"case": row["case"], "impl": "torch.eager", "rest": twin_rest, **twin})
    return lines


def _kernel(r: Row) -> str:
    if r["impl"] in (ZOO_NONE, TORCH_NONE):
        return "skipped (values only)"
    return "torch SDPA" if r["impl"].startswith("torch") else r["kernel"] or "none (additive)"


def _ms(r: Row) -> str:
    if "error" in r:
        return f"error: {r['error'][:120]}"
    if "median_s" not in r:
        return f"not timed: {(r.get('compile_error') or 'no samples')[:80]}"
    return f"{r['median_s'] * 1e3:.1f}{harness.star(r)}"


def _impl(r: Row) -> str:
    return (
        f"{r['impl']} (ran eagerly: {r['compile_error'][:60]})"
        if r.get("compile_error")
        else r["impl"]
    )


def _second_call(r: Row) -> Any:
    if "second_call_compiles" in r:  # the zoo's, from JAX's events; torch's, from its stance
        return r["second_call_compiles"]
    return "recompiled" if r["second_call_recompiled"] else "no recompile"


def _get(header: str, key: str, format: str = "{}", ms: bool = False) -> Column:
    return Column(header, lambda r: r[key] * 1e3 if ms and key in r else r.get(key), format)


CASE, IMPL = Column("case", lambda r: r["case"]["name"]), Column("impl", lambda r: r["impl"])
TABLES = (
    Table("Training steps", [
        CASE, _get("params", "parameters", "{:,}"), IMPL,
        Column("attention kernel", lambda r: r["impl"] and _kernel(r)),
        Column("ms/step", _ms),
        _get("best ms", "min_s", "{:.1f}", ms=True),
        _get("steps/s", "steps_per_s", "{:.2f}"),
        _get("tokens/s", "tokens_per_s", "{:,.0f}"),
        _get("model GFLOP/s", "model_gflops", "{:.1f}"),
        _get("of matmul", "of_matmul", "{:.2f}"),
        _get("matmul GFLOP/s", "matmul", "{:.0f}"),
        _get("vs faster torch", "vs", "{:.2f}x"),
        _get("busy", "mean_contention", "{:.0%}"),
        _get("first loss", "first_loss", "{:.5f}"),
    ], steps),
    Table("Compilation", [
        CASE, Column("impl", _impl),
        _get("trace s", "trace_s", "{:.2f}"),
        _get("lower s", "lower_s", "{:.2f}"),
        _get("XLA compile s", "compile_s", "{:.2f}"),
        _get("first step s", "first_call_s", "{:.2f}"),
        Column("2nd call compiles", _second_call),
        _get("cache", "cache_size"),
    ], lambda rows: [r for r in steps(rows) if "first_call_s" in r], note=(
        "Zoo: JAX's own events of the jitted step's first call; `2nd call compiles`: XLA "
        "compilations in a second same-shape call (0: the jit cache hit); `cache`: executables. "
        "PyTorch: the first step's time (`torch.compile` compiles then, maybe from inductor's "
        "disk cache), and whether a second step recompiled (stance `fail_on_recompile`).")),
    Table("Where the time goes: attention and the rest", [
        CASE, IMPL,
        _get("step ms", "step", "{:.1f}", ms=True),
        _get("attention ms", "attention", "{:.1f}", ms=True),
        _get("vs torch", "attention_vs", "{:.2f}x"),
        _get("rest ms", "rest", "{:.1f}", ms=True),
        _get("vs torch", "rest_vs", "{:.2f}x"),
    ], split, note=(
        "Each side timed once more with attention skipped (`zoo.none`, `torch.eager.none`: "
        "every query gets its own value vector; same projections, no T x S work). `rest` = "
        "that step, `attention` = full step - rest; `vs torch` = the PyTorch eager twin's "
        "time for the same part over the zoo's (above 1.00x the zoo is faster).")),
)  # fmt: skip


def _points(key: str) -> Callable[[Row], Iterator[tuple[str, str, float, float]]]:
    def points(row: Row) -> Iterator[tuple[str, str, float, float]]:
        c, lm = row["case"], row["case"]["model"].startswith("lm/")
        panel = f"LM, B = {c['batch_size']}" if lm else "additive attention (RNN decoders)"
        for impl, r in row.get("impls", {}).items():
            if key in r:
                yield panel, impl if lm else c["name"], row["parameters"], r[key]

    return points


PLOTS = (
    Plot("models.png", _points("tokens_per_s"), "parameters", "training tokens/s (median step)"),
    Plot("first_call.png", _points("first_call_s"), "parameters", "first step s (compiles)"),
)


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """Each zoo LM kernel's tokens/s over the faster twin's; no recompilation anywhere."""
    checks = []
    for row in rows:
        for impl, (ratio, peer, theirs) in against_twin(row).items():
            r = row["impls"][impl]
            contended = bool(harness.star(r) or harness.star(theirs))
            fastest = f"fastest steps {theirs['min_s'] / r['min_s']:.2f}x"
            where = f"{row['case']['name']}, {impl} vs {peer}"
            checks.append(SPEED.check(ratio, case=where, contended=contended, note=fastest))
    checks = checks or [SPEED.check(None, note="no zoo LM step timed beside a PyTorch twin")]
    zoo = [(f"{row['case']['name']}, {impl}", r) for row in rows
           for impl, r in row.get("impls", {}).items() if "second_call_compiles" in r]  # fmt: skip
    if zoo:
        bad = [name for name, r in zoo if r["second_call_compiles"] or r["cache_size"] != 1]
        note = f"recompiled or cached more than one executable: {'; '.join(bad)}" if bad else ""
        total = sum(r["second_call_compiles"] for _, r in zoo)
        checks.append(RECOMPILE.check(total, case=f"{len(zoo)} zoo steps", note=note))
    return checks


if __name__ == "__main__":
    harness.main("benchmarks.models")
