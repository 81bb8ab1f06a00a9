"""Attention kernel benchmark: the zoo's kernels against jax.nn, flax.nnx, tokamax and torch SDPA.

    python -m benchmarks.kernels --mode quick   # `make bench`: a few minutes
    python -m benchmarks.kernels --mode full    # the whole sweep (about two hours)

For every case (sequence length T = S, batch B, heads N, key/value heads K, head dim H,
causal or not, float32 or bfloat16, forward or forward+backward) a fresh subprocess times
all implementations *interleaved*, after compiling (timed separately) and warming up, and
measures this machine's dense matmul rate (jnp.dot and torch.matmul) in the same process.
Peak memory is measured in another fresh subprocess per (case, implementation): resident
memory above the level with the inputs allocated and the program compiled, polled while
one call runs (see benchmarks/timing.py). Results go to ``<out>/results.json`` (rewritten
after every case, so an interrupted sweep keeps what it measured), ``<out>/results.md`` and
``<out>/time.png`` / ``<out>/memory.png`` (log-log, against T).

FLOP convention ("useful" FLOPs, as shared/BASELINES.md): forward 4*B*N*T*S*H (the two
matmuls Q K^T and P V), forward+backward 3x that (two forward matmuls and four backward
ones; the backward's recomputation of Q K^T is not counted), halved when causal. GFLOP/s
uses the median time; "of matmul" divides it by the best dense matmul rate measured in the
same process (float32 matmuls for float32 cases, bfloat16 for bfloat16).

The machine is shared and noisy: each sample records how much CPU other processes used
meanwhile; medians use the uncontended samples when there are any, and the contention is
reported. Compare ratios measured in the same run, never absolute times across runs.
"""

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.timing import machine_info, save_results, spawn

IMPLEMENTATIONS = (
    "zoo.blockwise",
    "zoo.reference",
    "jax.nn",
    "flax.nnx",
    "tokamax.xla_chunked",
    "torch.sdpa",
)
# Implementations that materialize the [B, N, T, S] scores (and, with gradients, several
# arrays of that size): skipped when that would not fit comfortably next to other work.
MATERIALIZING = ("zoo.reference", "jax.nn", "flax.nnx")
# Issue 6's targets (float32, B=1, N=8, H=64): blockwise GFLOP/s at least these times the
# peer's (torch SDPA at T = 1,024 ... 16,384, jax.nn at T >= 4,096), and its fwd+bwd peak
# memory above the inputs at T = 32,768 within 1 GiB.
TARGET_RATIOS = {"torch.sdpa": 1.0, "jax.nn": 2.5}
TARGET_MEMORY_T, TARGET_MEMORY_BYTES = 32768, 2**30


@dataclasses.dataclass(frozen=True)
class Case:
    T: int  # query length; S = T (self-attention)
    B: int = 1
    N: int = 8  # query heads
    K: int = 8  # key/value heads
    H: int = 64
    causal: bool = False
    dtype: str = "float32"
    mode: str = "fwd"  # "fwd" or "fwd+bwd"

    @property
    def flops(self) -> float:
        flops = 4.0 * self.B * self.N * self.T * self.T * self.H
        flops *= 3.0 if self.mode == "fwd+bwd" else 1.0
        return flops / 2.0 if self.causal else flops

    @property
    def name(self) -> str:
        heads = f"N{self.N}" + (f"K{self.K}" if self.K != self.N else "")
        return (
            f"T{self.T}_B{self.B}_{heads}_H{self.H}_{'causal' if self.causal else 'full'}"
            f"_{self.dtype}_{self.mode}"
        )

    def score_bytes(self) -> int:
        """Bytes of one float32 [B, N, T, S] array."""
        return 4 * self.B * self.N * self.T * self.T


def _materialized_gib(case: Case) -> float:
    # Logits, weights and (fwd+bwd) their cotangents and saved copies: ~3 and ~7 arrays.
    copies = 7 if case.mode == "fwd+bwd" else 3
    return copies * case.score_bytes() / 2**30


def sweep(mode: str) -> tuple[list[Case], list[tuple[Case, tuple[str, ...]]]]:
    """(timed cases, extra memory-only cases with their implementations) of a sweep."""
    if mode == "quick":
        timed = [
            Case(T=t, causal=c, mode=m)
            for t in (1024, 4096)
            for c in (False, True)
            for m in ("fwd", "fwd+bwd")
        ]
        memory_only: list[tuple[Case, tuple[str, ...]]] = [
            (Case(T=t, causal=True, mode="fwd+bwd"), ("zoo.blockwise", "torch.sdpa"))
            for t in (8192, 16384)
        ]
        return timed, memory_only
    if mode == "targets":  # issue 6's target cases only: float32, B=1, N=8, H=64
        timed = [
            Case(T=t, causal=c, mode=m)
            for t in (1024, 2048, 4096, 8192, 16384)
            for c in (False, True)
            for m in ("fwd", "fwd+bwd")
        ]
        memory_only = [
            (Case(T=t, causal=c, mode="fwd+bwd"), ("zoo.blockwise",))
            for t in (32768, 65536)
            for c in (True, False)
        ]
        return timed, memory_only
    lengths = [256 * 2**i for i in range(9)]  # 256 ... 65,536
    timed = [
        Case(T=t, causal=c, dtype=d, mode=m)
        for d in ("float32", "bfloat16")
        for t in lengths
        for c in (False, True)
        for m in ("fwd", "fwd+bwd")
        if d == "float32" or t <= 16384
    ]
    for t in (1024, 4096):
        for m in ("fwd", "fwd+bwd"):
            timed += [
                Case(T=t, B=4, mode=m),
                Case(T=t, N=16, K=16, mode=m),
                Case(T=t, H=128, mode=m),
                Case(T=t, N=8, K=2, causal=True, mode=m),
            ]
    return timed, []


# --------------------------------------------------------------------------------------
# Worker side: runs inside the fresh subprocess.


def _inputs(case: Case, impl: str, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    # Scaled so the logits have unit variance, like trained attention at initialization.
    q = rng.standard_normal((case.B, case.T, case.N, case.H), np.float32)
    k = rng.standard_normal((case.B, case.T, case.K, case.H), np.float32)
    v = rng.standard_normal((case.B, case.T, case.K, case.H), np.float32)
    d_out = rng.standard_normal((case.B, case.T, case.N, case.H), np.float32)
    if impl == "torch.sdpa":
        import torch

        dtype = getattr(torch, case.dtype)
        # torch's native layout is [B, heads, T, H].
        return [
            torch.from_numpy(x.transpose(0, 2, 1, 3).copy()).to(dtype) for x in (q, k, v, d_out)
        ]
    import jax.numpy as jnp

    return [jnp.asarray(x, getattr(jnp, case.dtype)) for x in (q, k, v, d_out)]


def _build(case: Case, impl: str) -> tuple[Any, float, int | None]:
    """(zero-argument call that blocks until done, compile seconds, XLA temp bytes)."""
    q, k, v, d_out = _inputs(case, impl)
    if impl == "torch.sdpa":
        return _build_torch(case, q, k, v, d_out)
    import jax

    attention = _jax_attention(case, impl)
    args: tuple[Any, ...]
    if case.mode == "fwd":
        fn = jax.jit(attention)
        args = (q, k, v)
    else:

        def fwd_bwd(q, k, v, d_out):
            _, vjp = jax.vjp(attention, q, k, v)
            return vjp(d_out)

        fn = jax.jit(fwd_bwd)
        args = (q, k, v, d_out)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else int(analysis.temp_size_in_bytes)
    return (lambda: jax.block_until_ready(compiled(*args))), compile_s, temp


def _jax_attention(case: Case, impl: str):
    import jax

    causal = case.causal
    if impl == "zoo.blockwise":
        from zoo.kernels.blockwise import blockwise_attention

        return lambda q, k, v: blockwise_attention(q, k, v, is_causal=causal)
    if impl == "zoo.reference":
        from zoo.kernels.dot_product import dot_product_attention

        return lambda q, k, v: dot_product_attention(
            q, k, v, is_causal=causal, implementation="reference"
        )
    if impl == "tokamax.xla_chunked":
        import tokamax
        from absl import flags

        # tokamax 0.0.12 (the release for jax 0.10) parses sys.argv as its own flags the
        # first time it reads one, and fails on this worker's; nothing here uses absl flags.
        flags.FLAGS.mark_as_parsed()
        return lambda q, k, v: tokamax.dot_product_attention(
            q, k, v, is_causal=causal, implementation="xla_chunked"
        )
    if impl == "jax.nn":
        return lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="xla"
        )
    if impl == "flax.nnx":
        from flax import nnx

        return lambda q, k, v: nnx.dot_product_attention(q, k, v, is_causal=causal)
    raise ValueError(f"unknown implementation {impl!r}")


def _build_torch(case: Case, q, k, v, d_out):
    import torch
    import torch.nn.functional as F

    gqa = case.K != case.N
    if case.mode == "fwd":

        def run():
            with torch.no_grad():
                return F.scaled_dot_product_attention(
                    q, k, v, is_causal=case.causal, enable_gqa=gqa
                )

        return run, 0.0, None
    leaves = [x.requires_grad_() for x in (q, k, v)]

    def run_bwd():
        q, k, v = leaves
        out = F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, enable_gqa=gqa)
        out.backward(d_out)
        grads = [x.grad for x in leaves]
        for x in leaves:
            x.grad = None
        return grads

    return run_bwd, 0.0, None


def _matmul_rates(dtype: str) -> dict[str, float]:
    """Dense [2048, 2048] matmul GFLOP/s of jnp.dot and torch.matmul, timed interleaved."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from benchmarks.timing import race

    n = 2048
    x = np.random.default_rng(0).standard_normal((n, n), np.float32)
    jx = jnp.asarray(x, getattr(jnp, dtype))
    tx = torch.from_numpy(x).to(getattr(torch, dtype))
    dot = jax.jit(jnp.dot).lower(jx, jx).compile()
    runs = {
        "jnp.dot": lambda: jax.block_until_ready(dot(jx, jx)),
        "torch.matmul": lambda: torch.matmul(tx, tx),
    }
    for run in runs.values():
        run()
    samples = race(runs, repeats=7, budget_s=10.0)
    return {name: 2 * n**3 / s.summary(0.1)["median_s"] / 1e9 for name, s in samples.items()}


def _estimate_s(case: Case, impl: str) -> float:
    rate = 20e9 if impl in MATERIALIZING else 60e9  # pessimistic, for budgets only
    return case.flops / rate


def worker_time(case: Case, impls: list[str], repeats: int) -> dict[str, Any]:
    from benchmarks.timing import race, time_call

    result: dict[str, Any] = {"matmul_gflops": _matmul_rates(case.dtype), "impls": {}}
    runs = {}
    for impl in impls:
        run, compile_s, temp = _build(case, impl)
        first_s, _ = time_call(run)  # the first call: page faults, torch's lazy init
        result["impls"][impl] = {
            "compile_s": compile_s,
            "first_call_s": first_s,
            "xla_temp_bytes": temp,
        }
        runs[impl] = run
    slowest = max(_estimate_s(case, i) for i in impls)
    reps = repeats if slowest < 20 else max(1, min(repeats, int(120 / slowest)))
    samples = race(runs, repeats=reps, budget_s=max(60.0, 3 * reps * slowest))
    for impl, s in samples.items():
        result["impls"][impl].update(s.summary(0.1))
    return result


def worker_memory(case: Case, impl: str) -> dict[str, Any]:
    from benchmarks.timing import peak_rss_during

    run, _, temp = _build(case, impl)
    return {"peak_bytes": peak_rss_during(run), "xla_temp_bytes": temp}


# --------------------------------------------------------------------------------------
# Driver side.


def _spawn(args: list[str], timeout: float) -> dict[str, Any]:
    return spawn("benchmarks.kernels", args, timeout)


def _impls_for(case: Case, wanted: tuple[str, ...], memory_limit_gib: float) -> tuple[list, dict]:
    run, skipped = [], {}
    for impl in wanted:
        if impl in MATERIALIZING and _materialized_gib(case) > memory_limit_gib:
            skipped[impl] = f"skipped: would materialize ~{_materialized_gib(case):.0f} GiB"
        elif impl == "flax.nnx" and case.K != case.N:
            skipped[impl] = "skipped: flax.nnx has no grouped-query attention"
        elif impl in MATERIALIZING and case.T > 16384:
            skipped[impl] = "skipped: quadratic implementation at T > 16,384"
        else:
            run.append(impl)
    return run, skipped


def run_sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timed, memory_only = sweep(args.mode)
    if args.lengths:
        keep = {int(t) for t in args.lengths.split(",")}
        timed = [c for c in timed if c.T in keep]
        memory_only = [(c, i) for c, i in memory_only if c.T in keep]
    wanted = tuple(args.impls.split(",")) if args.impls else IMPLEMENTATIONS
    results: dict[str, Any] = {
        "machine": machine_info(),
        "mode": args.mode,
        "cases": [],
    }
    started = time.time()
    for n, case in enumerate(timed):
        impls, skipped = _impls_for(case, wanted, args.memory_limit_gib)
        print(f"[{n + 1}/{len(timed)}] {case.name}: {', '.join(impls)}", flush=True)
        entry: dict[str, Any] = {"case": dataclasses.asdict(case), "flops": case.flops}
        if impls:
            budget = 600 + 20 * sum(_estimate_s(case, i) for i in impls)
            entry.update(
                _spawn(
                    [
                        "--worker-time",
                        json.dumps(dataclasses.asdict(case)),
                        "--impls",
                        ",".join(impls),
                        "--repeats",
                        str(args.repeats),
                    ],
                    timeout=budget,
                )
            )
        entry.setdefault("impls", {})
        for impl, why in skipped.items():
            entry["impls"][impl] = {"skipped": why}
        if case.mode == "fwd+bwd" or args.mode == "full":
            for impl in impls:
                entry["impls"].setdefault(impl, {})["memory"] = _measure_memory(case, impl)
        _print_case(entry)
        results["cases"].append(entry)
        _save(results, out)
    for case, memory_impls in memory_only:
        print(f"[memory] {case.name}: {', '.join(memory_impls)}", flush=True)
        entry = {"case": dataclasses.asdict(case), "flops": case.flops, "impls": {}}
        for impl in memory_impls:
            entry["impls"][impl] = {"memory": _measure_memory(case, impl)}
        _print_case(entry)
        results["cases"].append(entry)
        _save(results, out)
    results["elapsed_s"] = time.time() - started
    _save(results, out)
    print(f"wrote {out}/results.json, results.md, time.png, memory.png", flush=True)


def _measure_memory(case: Case, impl: str) -> dict[str, Any]:
    spec = json.dumps(dataclasses.asdict(case))
    timeout = 600 + 5 * _estimate_s(case, impl)
    return _spawn(["--worker-memory", spec, "--impls", impl], timeout=timeout)


def _print_case(entry: dict[str, Any]) -> None:
    if "error" in entry:
        print("   error:", entry["error"], flush=True)
    for impl, r in entry.get("impls", {}).items():
        parts = [f"   {impl:14s}"]
        if "median_s" in r:
            rate = entry["flops"] / r["median_s"] / 1e9
            parts.append(f"{r['median_s'] * 1e3:10.1f} ms {rate:6.0f} GFLOP/s")
        if "skipped" in r:
            parts.append(r["skipped"])
        if "memory" in r:
            m = r["memory"]
            parts.append(
                f"peak {m['peak_bytes'] / 2**20:8.0f} MiB"
                if "peak_bytes" in m
                else m.get("error", "")
            )
        print(" ".join(parts), flush=True)


def _save(results: dict[str, Any], out: Path) -> None:
    save_results(out, results, markdown(results), lambda: plot(results, out))


# --------------------------------------------------------------------------------------
# Reports.


def _rate(entry: dict[str, Any], impl: str) -> float | None:
    r = entry["impls"].get(impl, {})
    return entry["flops"] / r["median_s"] / 1e9 if "median_s" in r else None


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Attention kernel benchmark ({results['mode']})",
        "",
        f"{m['processor']}, {m['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + (f"; XLA_FLAGS={m['xla_flags']}" if m["xla_flags"] else ""),
        "",
        "Per cell: median ms / GFLOP/s / fraction of the dense matmul rate measured in the same "
        "process; then peak MiB above inputs (fresh process) where measured. FLOPs: 4*B*N*T*S*H "
        "forward, 3x forward+backward, halved when causal. `*` marks a median over samples "
        "taken while other processes used >10% of the machine.",
        "",
    ]
    wanted = [i for i in IMPLEMENTATIONS if any(i in e["impls"] for e in results["cases"])]
    lines.append(
        "| case | matmul GFLOP/s | "
        + " | ".join(wanted)
        + " | blockwise / torch | blockwise / tokamax |"
    )
    lines.append("|---" * (len(wanted) + 4) + "|")
    for entry in results["cases"]:
        case = Case(**entry["case"])
        matmul = entry.get("matmul_gflops", {})
        best = max(matmul.values()) if matmul else None
        cells = []
        for impl in wanted:
            r = entry["impls"].get(impl)
            if r is None:
                cells.append("")
                continue
            text = []
            if "median_s" in r:
                rate = entry["flops"] / r["median_s"] / 1e9
                star = "*" if r.get("clean_samples", 1) == 0 else ""
                frac = f" / {rate / best:.2f}" if best else ""
                text.append(f"{r['median_s'] * 1e3:.1f}{star} / {rate:.0f}{frac}")
            if "skipped" in r:
                text.append(r["skipped"].replace("skipped: ", "skip: "))
            if "memory" in r:
                mem = r["memory"]
                text.append(
                    f"{mem['peak_bytes'] / 2**20:.0f} MiB"
                    if "peak_bytes" in mem
                    else "mem: " + mem.get("error", "?")[:40]
                )
            if "error" in r:
                text.append(r["error"][:40])
            cells.append("<br>".join(text))
        ours = _rate(entry, "zoo.blockwise")
        ratios = [
            f"{ours / peer:.2f}x" if ours and peer else ""
            for peer in (_rate(entry, "torch.sdpa"), _rate(entry, "tokamax.xla_chunked"))
        ]
        matmul_text = f"{best:.0f}" if best else ""
        lines.append(
            f"| {case.name} | {matmul_text} | " + " | ".join(cells) + f" | {' | '.join(ratios)} |"
        )
    lines += ["", *targets(results)]
    return "\n".join(lines) + "\n"


def target_verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's targets measured in this run (float32, B=1, N=8, H=64), one dict per check.

    ``target``: "torch.sdpa" or "jax.nn" (``value`` = blockwise GFLOP/s over the peer's, at
    least ``bound``) or "memory" (``value`` = blockwise fwd+bwd peak bytes above the inputs
    at ``T`` = 32,768, at most ``bound``); ``case`` (its name), ``met``, and ``contended``
    (a median over contended samples only went into it).
    """
    main = _target_cases(results)
    verdicts: list[dict[str, Any]] = []
    for e in main:
        case = Case(**e["case"])
        ours, torch, xla = (_rate(e, i) for i in ("zoo.blockwise", "torch.sdpa", "jax.nn"))
        for peer, rate, applies in (
            ("torch.sdpa", torch, 1024 <= case.T <= 16384),
            ("jax.nn", xla, case.T >= 4096),
        ):
            bound = TARGET_RATIOS[peer]
            if ours and rate and applies:
                contended = any(
                    e["impls"][i].get("clean_samples", 1) == 0 for i in ("zoo.blockwise", peer)
                )
                met = ours >= bound * rate
                verdicts.append(
                    dict(
                        target=peer,
                        case=case.name,
                        value=ours / rate,
                        bound=bound,
                        met=met,
                        contended=contended,
                    )
                )
    for (t, causal), peak in sorted(_blockwise_memory(main).items()):
        if t == TARGET_MEMORY_T:
            name = Case(T=t, causal=causal, mode="fwd+bwd").name
            verdicts.append(
                dict(
                    target="memory",
                    case=name,
                    T=t,
                    causal=causal,
                    value=peak,
                    bound=TARGET_MEMORY_BYTES,
                    met=peak <= TARGET_MEMORY_BYTES,
                    contended=False,
                )
            )
    return verdicts


def _target_cases(results: dict[str, Any]) -> list[dict[str, Any]]:
    target = {"B": 1, "N": 8, "K": 8, "H": 64, "dtype": "float32"}
    return [e for e in results["cases"] if e["case"] == {**e["case"], **target}]


def _blockwise_memory(main: list[dict[str, Any]]) -> dict[tuple[int, bool], int]:
    """(T, causal) -> the blockwise kernel's fwd+bwd peak bytes above the inputs."""
    memory = {}
    for e in main:
        case = Case(**e["case"])
        mem = e["impls"].get("zoo.blockwise", {}).get("memory", {})
        if case.mode == "fwd+bwd" and "peak_bytes" in mem:
            memory[(case.T, case.causal)] = mem["peak_bytes"]
    return memory


def targets(results: dict[str, Any]) -> list[str]:
    """Issue 6's targets, read off this run (float32, B=1, N=8, H=64)."""
    lines = ["## Targets (issue 6)", ""]
    for v in target_verdicts(results):
        verdict = "met" if v["met"] else "MISSED"
        if v["target"] == "memory":
            kind = "causal" if v["causal"] else "full"
            lines.append(
                f"- fwd+bwd peak above inputs at T={v['T']:,} ({kind}): "
                f"{v['value'] / 2**20:.0f} MiB ({verdict}, target <= 1,024 MiB)"
            )
        else:
            peer = "torch SDPA" if v["target"] == "torch.sdpa" else "jax.nn"
            lines.append(
                f"- vs {peer}, {v['case']}: {v['value']:.2f}x ({verdict}, "
                f"target >= {v['bound']:.1f}x)"
            )
    memory = _blockwise_memory(_target_cases(results))
    for causal in (False, True):
        points = sorted((t, p) for (t, c), p in memory.items() if c == causal and p > 0)
        if len(points) >= 2:
            (t0, p0), (t1, p1) = points[0], points[-1]
            slope = math.log(p1 / p0) / math.log(t1 / t0)
            kind = "causal" if causal else "full"
            lines.append(
                f"- blockwise fwd+bwd peak memory, T={t0:,}..{t1:,} ({kind}): grows as "
                f"T^{slope:.2f} (linear = 1.0)"
            )
    return lines


def plot(results: dict[str, Any], out: Path, *, dpi: int = 110, prefix: str = "") -> list[Path]:
    """Write ``<out>/<prefix>time.png`` and ``<prefix>memory.png``: log-log against T, one
    panel per (dtype, mode, mask) that has numbers of that kind. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [
        e
        for e in results["cases"]
        if e["case"]["B"] == 1
        and e["case"]["N"] == 8
        and e["case"]["K"] == 8
        and e["case"]["H"] == 64
    ]
    panels = [
        (d, m, c)
        for d in ("float32", "bfloat16")
        for m in ("fwd", "fwd+bwd")
        for c in (False, True)
    ]
    panels = [
        p
        for p in panels
        if any((e["case"]["dtype"], e["case"]["mode"], e["case"]["causal"]) == p for e in main)
    ]
    measured = {
        "time": lambda r: "median_s" in r,
        "memory": lambda r: "peak_bytes" in r.get("memory", {}),
    }
    paths = []
    for what, filename in (("time", "time.png"), ("memory", "memory.png")):
        shown = [
            p
            for p in panels
            if any(
                (e["case"]["dtype"], e["case"]["mode"], e["case"]["causal"]) == p
                and any(measured[what](r) for r in e["impls"].values())
                for e in main
            )
        ]
        fig, axes = plt.subplots(
            1, max(len(shown), 1), figsize=(4.2 * max(len(shown), 1), 3.8), squeeze=False
        )
        for ax, (dtype, mode, causal) in zip(axes[0], shown, strict=False):
            for impl in IMPLEMENTATIONS:
                xs, ys = [], []
                for e in main:
                    c = e["case"]
                    if (c["dtype"], c["mode"], c["causal"]) != (dtype, mode, causal):
                        continue
                    r = e["impls"].get(impl, {})
                    if what == "time" and "median_s" in r:
                        xs.append(c["T"])
                        ys.append(r["median_s"])
                    if what == "memory" and "peak_bytes" in r.get("memory", {}):
                        xs.append(c["T"])
                        ys.append(max(r["memory"]["peak_bytes"], 2**20) / 2**20)
                if xs:
                    ax.plot(xs, ys, marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T = S")
            ax.set_ylabel("median seconds" if what == "time" else "peak MiB above inputs")
            ax.set_title(f"{dtype} {mode} {'causal' if causal else 'full'}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.suptitle(
            f"attention {what}, B=1 N=8 H=64 ({results['machine']['processor']}, "
            f"{results['machine']['cores']} cores)",
            fontsize=9,
        )
        fig.tight_layout()
        paths.append(out / f"{prefix}{filename}")
        fig.savefig(paths[-1], dpi=dpi)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("quick", "targets", "full"), default="quick")
    parser.add_argument("--out", default=None, help="directory (default benchmarks/results/<mode>)")
    parser.add_argument(
        "--impls", default=None, help="comma-separated subset of " + ",".join(IMPLEMENTATIONS)
    )
    parser.add_argument(
        "--lengths", default=None, help="comma-separated subset of sequence lengths"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per implementation")
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=6.0,
        help="skip quadratic implementations that would need more",
    )
    parser.add_argument("--worker-time", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_time or args.worker_memory:
        case = Case(**json.loads(args.worker_time or args.worker_memory))
        if args.worker_time:
            result = worker_time(case, args.impls.split(","), args.repeats)
        else:
            result = worker_memory(case, args.impls)
        print(json.dumps(result), flush=True)
        return
    args.out = args.out or f"benchmarks/results/{args.mode}"
    run_sweep(args)


if __name__ == "__main__":
    main()
