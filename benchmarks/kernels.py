"""Attention kernels: the zoo's dispatch and kernels against tokamax, jax.nn, flax and torch SDPA.

python -m benchmarks.kernels                  # make bench: T = 1,024 and 4,096, minutes
python -m benchmarks.kernels --mode targets   # T = 1,024 ... 16,384; memory to 65,536
python -m benchmarks.kernels --mode full --only T4096   # a subset of any sweep
"""

import argparse
import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column, Plot, Row, Table, Target

NAME, TITLE = "kernels", "Attention kernels"
MODES = {
    "quick": "float32 B=1 N=8 H=64, T = 1,024 and 4,096, the targets' peers; memory to 16,384",
    "targets": "the targets' cases: T = 1,024 ... 16,384; blockwise memory at 32,768 and 65,536",
    "full": "T = 256 ... 65,536, bfloat16, batch, heads, head width, grouped-query",
}
IMPLEMENTATIONS = (
    "zoo.auto",  # zoo.kernels.dot_product_attention as users call it: dispatch picks
    "zoo.blockwise",
    "zoo.reference",
    "tokamax.xla_chunked",
    "tokamax.xla",
    "jax.nn",
    "flax.nnx",
    "torch.sdpa",
)
# make bench's: the zoo as users call it and the peers its targets name (--impls: any others).
QUICK = ("zoo.auto", "tokamax.xla_chunked", "jax.nn", "torch.sdpa")
# These materialize the [B, N, T, S] scores (with gradients, several arrays of that size).
MATERIALIZING = ("zoo.reference", "tokamax.xla", "jax.nn", "flax.nnx")
ZOO, SHAPE = "zoo.auto", {"B": 1, "N": 8, "K": 8, "H": 64, "dtype": "float32"}
NOTE = (
    "Per cell: median ms / useful GFLOP/s (forward 4·B·N·T·S·H, forward+backward 3x, halved "
    "when causal) / its fraction of the **block GEMM**: XLA's batched matmul at the zoo "
    "kernel's own block shape (Q·Kᵀ then P·V of one query block against one key block), "
    "timed alone in the same process: one block's rate, which a kernel running independent "
    "blocks side by side on the cores can exceed (a fraction above 1); torch's `bmm` at the "
    "same shape is beside it. Then the peak MiB above the inputs "
    "of one call in a fresh process, where measured. Each case's implementations are timed "
    "interleaved in one fresh process after compiling; `*` marks a median of contended samples."
)


def case(T: int, *, causal: bool, pass_: str, dtype: str = "float32", **shape: int) -> Row:
    c = {**SHAPE, **shape, "T": T, "causal": causal, "dtype": dtype, "pass": pass_}
    heads = f"N{c['N']}" + (f"K{c['K']}" if c["K"] != c["N"] else "")
    mask = "causal" if causal else "full"
    c["name"] = f"T{T}_B{c['B']}_{heads}_H{c['H']}_{mask}_{dtype}_{pass_}"
    return c


def flops(c: Row) -> float:
    f = 4.0 * c["B"] * c["N"] * c["T"] ** 2 * c["H"] * (3 if c["pass"] == "fwd+bwd" else 1)
    return f / 2 if c["causal"] else f


def add_arguments(parser: argparse.ArgumentParser) -> None:
    every = f"default: in quick mode {','.join(QUICK)}, else all of {','.join(IMPLEMENTATIONS)}"
    parser.add_argument("--impls", default=None, help=f"comma-separated ({every})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per peer (default: quick 3, else 5)")  # fmt: skip
    parser.add_argument("--memory-limit-gib", type=float, default=6.0,
                        help="skip materializing implementations that would need more")  # fmt: skip


def sweep(mode: str) -> tuple[list[Row], list[tuple[Row, tuple[str, ...]]]]:
    """(timed cases, memory-only cases with their implementations) of a mode."""
    masks_passes = [(c, p) for c in (False, True) for p in ("fwd", "fwd+bwd")]
    if mode in ("quick", "targets"):
        lengths = (1024, 4096) if mode == "quick" else (1024, 2048, 4096, 8192, 16384)
        timed = [case(t, causal=c, pass_=p) for t in lengths for c, p in masks_passes]
        extra: tuple[list[tuple[int, bool]], tuple[str, ...]]
        if mode == "quick":
            extra = [(8192, True), (16384, True)], ("zoo.auto", "torch.sdpa")
        else:
            extra = [(t, c) for t in (32768, 65536) for c in (True, False)], ("zoo.auto",)
        memory: list[tuple[Row, tuple[str, ...]]] = [
            (case(t, causal=c, pass_="fwd+bwd"), extra[1]) for t, c in extra[0]
        ]
        return timed, memory
    timed = [
        case(t, causal=c, pass_=p, dtype=d)
        for d in ("float32", "bfloat16")
        for t in (256 * 2**i for i in range(9))
        for c, p in masks_passes
        if d == "float32" or t <= 16384
    ]
    for t in (1024, 4096):
        for p in ("fwd", "fwd+bwd"):
            timed += [
                case(t, causal=False, pass_=p, B=4),
                case(t, causal=False, pass_=p, N=16, K=16),
                case(t, causal=False, pass_=p, H=128),
                case(t, causal=True, pass_=p, K=2),
            ]
    return timed, []


def skipped(c: Row, impl: str, limit_gib: float) -> str | None:
    gib = (7 if c["pass"] == "fwd+bwd" else 3) * 4 * c["B"] * c["N"] * c["T"] ** 2 / 2**30
    if impl in MATERIALIZING and (gib > limit_gib or c["T"] > 16384):
        return f"skipped: would materialize ~{gib:.0f} GiB"
    if impl == "flax.nnx" and c["K"] != c["N"]:
        return "skipped: no grouped-query attention"
    return None


def cases(args: argparse.Namespace, rows: list[Row]) -> Iterator[Row]:
    timed, extra = sweep(args.mode)
    every = QUICK if args.mode == "quick" else IMPLEMENTATIONS
    wanted = args.impls.split(",") if args.impls else list(every)
    unknown = sorted(set(wanted) - set(IMPLEMENTATIONS))
    if unknown:
        raise ValueError(f"--impls: unknown {unknown}; choose from {','.join(IMPLEMENTATIONS)}")
    repeats = args.repeats or (3 if args.mode == "quick" else 5)
    memory: list[tuple[Row, tuple[str, ...]]] = []
    for c in timed:
        skip = {i: why for i in wanted if (why := skipped(c, i, args.memory_limit_gib))}
        impls = [i for i in wanted if i not in skip]
        yield {**c, "impls": impls, "skipped": skip, "repeats": repeats,
               "timeout_s": 600 + 20 * flops(c) / 20e9 * len(impls)}  # fmt: skip
        if c["pass"] == "fwd+bwd" or args.mode == "full":
            memory += [(c, tuple(impls))]
    for c, chosen in memory + extra:
        for impl in (i for i in chosen if i in wanted):
            yield {**c, "name": f"{c['name']} memory {impl}", "memory": impl,
                   "timeout_s": 600 + 5 * flops(c) / 20e9}  # fmt: skip


# --------------------------------------------------------------------------------------
# Inside the fresh process.


def _inputs(c: Row, torch_layout: bool) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)  # unit-variance logits after scaling, as at initialization
    shapes = [(c["B"], c["T"], n, c["H"]) for n in (c["N"], c["K"], c["K"], c["N"])]
    arrays = [rng.standard_normal(s, np.float32) for s in shapes]
    if torch_layout:
        import torch

        dtype = getattr(torch, c["dtype"])
        return [torch.from_numpy(x.transpose(0, 2, 1, 3).copy()).to(dtype) for x in arrays]
    import jax.numpy as jnp

    return [jnp.asarray(x, c["dtype"]) for x in arrays]


def attention(impl: str, causal: bool) -> Callable[..., Any]:
    """``f(q, k, v)`` of a JAX implementation, ``[B, T, N, H]`` in and out."""
    import jax
    from flax import nnx

    import zoo.kernels

    if impl.startswith("tokamax."):
        import tokamax
        from absl import flags

        flags.FLAGS.mark_as_parsed()  # tokamax 0.0.12 would parse this worker's argv as flags
        backend = impl.split(".", 1)[1]
        return lambda q, k, v: tokamax.dot_product_attention(
            q, k, v, is_causal=causal, implementation=backend
        )
    calls = {
        "zoo.auto": lambda q, k, v: zoo.kernels.dot_product_attention(q, k, v, is_causal=causal),
        "zoo.blockwise": lambda q, k, v: zoo.kernels.blockwise_attention(q, k, v, is_causal=causal),
        "zoo.reference": lambda q, k, v: zoo.kernels.dot_product_attention(
            q, k, v, is_causal=causal, implementation="reference"
        ),
        "jax.nn": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="xla"
        ),
        "flax.nnx": lambda q, k, v: nnx.dot_product_attention(q, k, v, is_causal=causal),
    }
    return calls[impl]


def build(c: Row, impl: str) -> tuple[Callable[[], Any], dict[str, Any]]:
    """(a call that blocks until done, its compile seconds and XLA temp bytes)."""
    q, k, v, d_out = _inputs(c, impl == "torch.sdpa")
    if impl == "torch.sdpa":
        return _torch(c, q, k, v, d_out), {}
    import jax

    f = attention(impl, c["causal"])
    args: tuple[Any, ...]
    if c["pass"] == "fwd":
        fn, args = jax.jit(f), (q, k, v)
    else:
        fn, args = jax.jit(lambda q, k, v, d: jax.vjp(f, q, k, v)[1](d)), (q, k, v, d_out)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else int(analysis.temp_size_in_bytes)
    return (lambda: jax.block_until_ready(compiled(*args))), {
        "compile_s": seconds,
        "xla_temp_bytes": temp,
    }


def _torch(c: Row, q: Any, k: Any, v: Any, d_out: Any) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as F

    gqa = c["K"] != c["N"]
    if c["pass"] == "fwd":

        def forward() -> Any:
            with torch.no_grad():
                return F.scaled_dot_product_attention(
                    q, k, v, is_causal=c["causal"], enable_gqa=gqa
                )

        return forward
    leaves = [x.requires_grad_() for x in (q, k, v)]

    def forward_backward() -> Any:
        out = F.scaled_dot_product_attention(*leaves, is_causal=c["causal"], enable_gqa=gqa)
        out.backward(d_out)
        grads = [x.grad for x in leaves]
        for x in leaves:
            x.grad = None
        return grads

    return forward_backward


def block_gemm(c: Row) -> dict[str, Any]:
    """GFLOP/s of one block's two matmuls (Q·Kᵀ, then P·V) at the zoo kernel's block shape,
    as XLA runs them and as torch's ``bmm`` does."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from zoo.kernels.blockwise import default_block_sizes

    bq, bk = default_block_sizes(c["T"], c["T"], banded=c["causal"])
    Z, H = c["B"] * c["N"], c["H"]
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((Z, n, H), np.float32) for n in (bq, bk, bk))
    jq, jk, jv = (jnp.asarray(x, c["dtype"]) for x in (q, k, v))
    pair = jax.jit(lambda q, k, v: jnp.einsum("zqk,zkh->zqh", jnp.einsum("zqh,zkh->zqk", q, k), v))
    compiled = pair.lower(jq, jk, jv).compile()
    runs = {"xla": lambda: jax.block_until_ready(compiled(jq, jk, jv))}
    try:
        import torch

        tq, tk, tv = (torch.from_numpy(x).to(getattr(torch, c["dtype"])) for x in (q, k, v))
        runs["torch"] = lambda: torch.bmm(torch.bmm(tq, tk.transpose(1, 2)), tv)
    except ImportError:
        pass
    for run in runs.values():
        run()
    timed = harness.race(runs, repeats=20, budget_s=5.0)
    rates = {name: 4 * Z * bq * bk * H / s.summary()["median_s"] / 1e9 for name, s in timed.items()}
    return {"block": [bq, bk], "gflops": rates}


def measure(c: Row) -> Row:
    if "memory" in c:
        run, facts = build(c, c["memory"])
        return {"peak_bytes": harness.peak_rss_during(run), **facts}
    m = harness.machine_info()
    cpu = f"{m['processor']} ({m['isa']})"
    row: Row = {"flops": flops(c), "cpu": cpu, "block_gemm": block_gemm(c), "impls": {}}
    runs = {}
    for impl in c["impls"]:
        runs[impl], facts = build(c, impl)
        row["impls"][impl] = {**facts, "first_call_s": harness.time_call(runs[impl])[0]}
    slowest = max(flops(c) / (20e9 if i in MATERIALIZING else 60e9) for i in c["impls"])
    repeats = c["repeats"] if slowest < 20 else max(1, min(c["repeats"], int(120 / slowest)))
    timed = harness.race(runs, repeats=repeats, budget_s=max(60.0, 3 * repeats * slowest))
    for impl, samples in timed.items():
        row["impls"][impl].update(samples.summary())
    return row


# --------------------------------------------------------------------------------------
# Reading the rows.


def _key(c: Row) -> tuple:
    return tuple(c[k] for k in ("T", "B", "N", "K", "H", "causal", "dtype", "pass"))


def merged(rows: list[Row]) -> list[Row]:
    """Timing rows with each implementation's peak memory beside its time; memory-only
    cases as rows of their own."""
    timing = {_key(r["case"]): {**r, "memory": {}} for r in rows if "memory" not in r["case"]}
    for r in rows:
        if "memory" in r["case"]:
            base = timing.setdefault(
                _key(r["case"]), {"case": r["case"], "impls": {}, "memory": {}}
            )
            base["memory"][r["case"]["memory"]] = r
    return list(timing.values())


def rate(row: Row, impl: str) -> float | None:
    r = row.get("impls", {}).get(impl, {})
    return row["flops"] / r["median_s"] / 1e9 if "median_s" in r else None


def cell(row: Row, impl: str) -> str:
    parts, r = [], row.get("impls", {}).get(impl, {})
    if "median_s" in r:
        gemm = row["block_gemm"]["gflops"]["xla"]
        rt = rate(row, impl) or 0.0
        parts.append(f"{r['median_s'] * 1e3:.1f}{harness.star(r)} / {rt:.0f} / {rt / gemm:.2f}")
    if impl in row["case"].get("skipped", {}):
        parts.append("skip: " + row["case"]["skipped"][impl].split(": ", 1)[1])
    if impl in row["memory"]:
        m = row["memory"][impl]
        parts.append(f"{m['peak_bytes'] / 2**20:.0f} MiB" if "peak_bytes" in m else m["error"][:40])
    return "<br>".join(parts + ([r["error"][:40]] if "error" in r else []))


def _ratio(peer: str) -> Callable[[Row], str]:
    def text(row: Row) -> str:
        ours, theirs = rate(row, ZOO), rate(row, peer)
        return f"{ours / theirs:.2f}x" if ours and theirs else ""

    return text


def _gemm(side: str) -> Callable[[Row], str]:
    def text(row: Row) -> str:
        g = row.get("block_gemm", {})
        return f"{g['gflops'][side]:.0f}" if side in g.get("gflops", {}) else ""

    return text


TABLES = (
    Table(
        "Time, rate and memory per case",
        [
            Column("case", lambda r: r["case"]["name"].split(" ")[0]),
            Column("block", lambda r: "x".join(map(str, r.get("block_gemm", {}).get("block", [])))),
            Column("block GEMM GFLOP/s: XLA", _gemm("xla")),
            Column("torch", _gemm("torch")),
            *(Column(i, functools.partial(cell, impl=i)) for i in IMPLEMENTATIONS),
            Column("zoo / torch", _ratio("torch.sdpa")),
            Column("zoo / tokamax xla_chunked", _ratio("tokamax.xla_chunked")),
        ],
        merged,
    ),
)


def _points(what: str) -> Callable[[Row], Iterator[tuple[str, str, float, float]]]:
    def points(row: Row) -> Iterator[tuple[str, str, float, float]]:
        c = row["case"]
        if any(c[k] != v for k, v in SHAPE.items()):
            return
        panel = f"{c['pass']} {'causal' if c['causal'] else 'full'}"
        if what == "time":
            for impl, r in row.get("impls", {}).items():
                if "median_s" in r:
                    yield panel, impl, c["T"], r["median_s"]
        elif "peak_bytes" in row and row["peak_bytes"] > 0:
            yield panel, c["memory"], c["T"], row["peak_bytes"] / 2**20

    return points


PLOTS = (
    Plot("time.png", _points("time"), "T = S", "median seconds"),
    Plot("memory.png", _points("memory"), "T = S", "peak MiB above inputs"),
)


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The zoo's kernel (as dispatched) against its peers, float32 B=1 N=8 H=64; a verdict
    holds for the CPU kind it was measured on, which the name says."""
    checks = []
    for row in merged(rows):
        c = row["case"]
        if any(c[k] != v for k, v in SHAPE.items()) or "flops" not in row:
            continue
        gemm = row["block_gemm"]["gflops"]
        why = ", ".join(f"{k} {v:.0f}" for k, v in gemm.items())
        for peer, bound, applies in (
            ("torch.sdpa", 1.0, 1024 <= c["T"] <= 16384),
            ("tokamax.xla_chunked", 1.5, 1024 <= c["T"] <= 16384),
            ("jax.nn", 2.5, c["T"] >= 4096),
        ):
            ours, theirs = rate(row, ZOO), rate(row, peer)
            if applies and ours and theirs:
                contended = any(harness.star(row["impls"][i]) for i in (ZOO, peer))
                check = Target(f"zoo GFLOP/s / {peer}'s on {row['cpu']}", bound)
                note = "" if ours >= bound * theirs else f"block GEMM GFLOP/s: {why}; " + (
                    "torch's is faster" if gemm.get("torch", 0) > gemm["xla"] else
                    f"the zoo runs at {ours / gemm['xla']:.0%} of XLA's: the time is outside "
                    "its matmuls")  # fmt: skip
                checks.append(check.check(ours / theirs, case=c["name"], contended=contended,
                                          note=note))  # fmt: skip
    memory = {(r["case"]["T"], r["case"]["causal"]): r["peak_bytes"]
              for r in rows if r["case"].get("memory") == ZOO and "peak_bytes" in r}  # fmt: skip
    for (t, causal), peak in sorted(memory.items()):
        if t == 32768:
            name = case(t, causal=causal, pass_="fwd+bwd")["name"]
            limit = Target("zoo fwd+bwd peak memory above the inputs at T = 32,768", 1024, "MiB",
                           at_least=False)  # fmt: skip
            checks.append(limit.check(peak / 2**20, case=name))
    for causal in (False, True):
        points = sorted((t, p) for (t, c), p in memory.items() if c == causal and p > 0)
        if len(points) >= 2:
            (t0, p0), (t1, p1) = points[0], points[-1]
            slope = Target("exponent of T in the zoo's fwd+bwd peak memory (linear: 1)", 1.2, "",
                           at_least=False)  # fmt: skip
            where = f"T = {t0:,} ... {t1:,}, {'causal' if causal else 'full'}"
            checks.append(slope.check(math.log(p1 / p0) / math.log(t1 / t0), case=where))
    return checks


if __name__ == "__main__":
    harness.main("benchmarks.kernels")
