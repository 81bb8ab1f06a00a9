"""The accelerator check: attention kernels, the Pallas additive kernel and an LM step on one GPU.

bash benchmarks/gpu_check.sh              # on the GPU machine: the device tests, then this
python -m benchmarks.gpu                  # this alone: the check's tables
python -m benchmarks.gpu --mode dry-run   # every part at tiny sizes on any backend, seconds
"""

import argparse
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks import harness, kernels
from benchmarks.harness import Column, Plot, Row, Table

NAME, TITLE = "gpu", "Accelerator (GPU) check"
MODES = {
    "quick": "bfloat16 attention B=2 N=16 H=128 at T = 1,024 ... 16,384, additive attention at "
    "T = 256 and 1,024, nanoGPT's shakespeare-char train step; minutes on one GPU",
    "dry-run": "every part at tiny sizes on whatever JAX has (CPU), in seconds",
}
# The dense matmul roofline at a size and dtype that can fill a GPU (the default is a CPU's).
ROOFLINE = {"quick": {"n": 8192, "dtype": "bfloat16"}}
SIZES: dict[str, dict[str, Row]] = {
    "quick": {"attention": {"T": (1024, 4096, 16384), "B": 2, "N": 16, "K": 16, "H": 128},
              "additive": {"T": (256, 1024), "B": 16, "A": 512, "D": 1024},  # RNNsearch-sized
              "lm": {"layers": 6, "heads": 6, "width": 384, "T": 256, "B": 64}},  # nanoGPT's
    "dry-run": {"attention": {"T": (64,), "B": 1, "N": 2, "K": 2, "H": 16},
                "additive": {"T": (16,), "B": 2, "A": 16, "D": 8},
                "lm": {"layers": 1, "heads": 2, "width": 32, "T": 16, "B": 2}},
}  # fmt: skip
# name: (which call, its implementation); each only where it can run
PEERS = {"zoo dispatch": ("zoo", None), "zoo blockwise": ("zoo", "blockwise"),
         "tokamax mosaic": ("zoo", "tokamax.mosaic"), "tokamax triton": ("zoo", "tokamax.triton"),
         "tokamax cudnn": ("zoo", "tokamax.cudnn"),
         "jax.nn cudnn": ("jax.nn", "cudnn"), "jax.nn xla": ("jax.nn", "xla"),
         "torch sdpa": ("torch", None)}  # fmt: skip
ADDITIVE = ("pallas", "blockwise (lax)")
PEAK_TFLOPS = 989.0  # H200 dense bfloat16 (NVIDIA's datasheet, without sparsity): the MFU's
EVERY = math.inf  # no one else runs on the GPU machine: every timed sample counts
NOTE = (
    "Everything is bfloat16 unless it says otherwise. Per cell: median ms / TFLOP/s of useful "
    "work (forward 4·B·N·T²·H, forward+backward 3x, halved when causal, as `benchmarks.kernels` "
    "counts) / the largest error of the forward output against the same call in float32 at "
    "`highest` matmul precision. Each case runs in a fresh process; its peers are timed "
    "interleaved after compiling, each only where it can run (why not, below). The LM step's "
    f"MFU is against the H200's {PEAK_TFLOPS:.0f} TFLOP/s dense bfloat16 peak."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per peer")


def cases(args: argparse.Namespace, rows: list[Row]) -> Iterator[Row]:
    # A bounded case: a hung kernel must not eat the machine's few minutes.
    sizes, common = SIZES[args.mode], {"repeats": 2 if args.mode == "dry-run" else args.repeats,
                                       "timeout_s": 300}  # fmt: skip
    for part in ("attention", "additive"):
        for T in sizes[part]["T"]:
            yield {"name": f"{part} T{T}", "part": part, **sizes[part], "T": T, **common}
    yield {"name": "lm train step", "part": "lm", **sizes["lm"], **common}


def measure(case: Row) -> list[Row]:
    return {"attention": attention, "additive": additive, "lm": lm_step}[case["part"]](case)


def _torch_sdpa(arrays: tuple, causal: bool, backward: bool) -> Callable[[], Any]:
    """PyTorch's SDPA on the same inputs (its flash kernel on a GPU)."""
    import numpy as np
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.tensor(np.asarray(x, np.float32), device=device).to(torch.bfloat16)
               .transpose(1, 2).requires_grad_(backward) for x in arrays)  # fmt: skip

    def run() -> None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if backward:
            out.float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    run()
    return run


def _time_peers(row: Row, peers: dict[str, Any], args: tuple, want: Any, repeats: int) -> Row:
    """Every peer ``f(*args)`` (torch's: a maker of a ready call) compiled, or its gradient,
    and warmed up; its forward error against ``want``; then all timed interleaved. A peer
    that cannot run says why."""
    import jax
    import jax.numpy as jnp

    backward, runs, row["impls"] = row["pass"] == "fwd+bwd", {}, {}
    for name, f in peers.items():
        try:
            if name.startswith("torch"):
                runs[name], row["impls"][name] = f(backward), {}
                continue
            loss = lambda *a, f=f: jnp.sum(f(*a).astype(jnp.float32))  # noqa: E731
            fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)) if backward else f)
            compiled = fn.lower(*args).compile()
            out = jax.block_until_ready(compiled(*args)).astype(jnp.float32)
            runs[name] = lambda compiled=compiled: jax.block_until_ready(compiled(*args))
            error = float(jnp.max(jnp.abs(out - want))) if not backward else None
            row["impls"][name] = {} if error is None else {"max_error": error}
        except Exception as e:
            row["impls"][name] = {"skipped": f"{type(e).__name__}: {e}"[:300]}
    for name, s in harness.race(runs, repeats=repeats, budget_s=60, threshold=EVERY).items():
        row["impls"][name].update(summary := s.summary(EVERY))
        if "flops" in row:
            row["impls"][name]["tflops"] = row["flops"] / summary["median_s"] / 1e12
    return row


def attention(c: Row) -> list[Row]:
    """Every peer on one length, masks full and causal, forward and forward+backward."""
    import jax
    import jax.numpy as jnp

    from zoo import kernels as zoo

    calls: dict[str, Callable[..., Any]] = {
        "zoo": zoo.dot_product_attention,
        "jax.nn": jax.nn.dot_product_attention,
    }
    keys = jax.random.split(jax.random.key(c["T"]), 3)
    f32 = tuple(jax.random.normal(k, (c["B"], c["T"], c["N"], c["H"]), jnp.float32) for k in keys)
    bf16 = tuple(x.astype(jnp.bfloat16) for x in f32)
    rows = []
    for causal in (False, True):
        peers: dict[str, Any] = {
            name: functools.partial(calls[where], is_causal=causal, implementation=implementation)
            for name, (where, implementation) in PEERS.items() if where != "torch"
        }  # fmt: skip
        peers["torch sdpa"] = functools.partial(_torch_sdpa, bf16, causal)
        with jax.default_matmul_precision("highest"):
            want = jax.jit(peers["zoo blockwise"])(*f32)
        for pass_ in ("fwd", "fwd+bwd"):
            row = {"part": "attention", "T": c["T"], "causal": causal, "pass": pass_}
            row["flops"] = kernels.flops({**c, **row})
            rows.append(_time_peers(row, peers, bf16, want, c["repeats"]))
    return rows


def additive(c: Row) -> list[Row]:
    """The zoo's Pallas additive kernel against the lax blockwise one (Bahdanau et al. 2014,
    eq. (6))."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from zoo import kernels as zoo

    B, T, A, D = c["B"], c["T"], c["A"], c["D"]
    rng = np.random.default_rng(T)
    shapes = {"query": (B, T, D), "projected_keys": (B, T, A), "values": (B, T, D)}
    f32 = {n: jnp.asarray(rng.standard_normal(s), jnp.float32) for n, s in shapes.items()}
    f32["w_query"] = jnp.asarray(rng.standard_normal((D, A)) / math.sqrt(D), jnp.float32)
    f32["v"] = jnp.asarray(rng.standard_normal(A) / math.sqrt(A), jnp.float32)
    bf16 = {n: x.astype(jnp.bfloat16) for n, x in f32.items()}
    kernels_ = (zoo.pallas_additive_attention, zoo.blockwise_additive_attention)
    peers = {name: functools.partial(kernel, w_query=bf16["w_query"], v=bf16["v"])
             for name, kernel in zip(ADDITIVE, kernels_, strict=True)}  # fmt: skip
    with jax.default_matmul_precision("highest"):
        want = kernels_[1](*(f32[n] for n in shapes), w_query=f32["w_query"], v=f32["v"])
    args = tuple(bf16[n] for n in shapes)
    return [_time_peers({"part": "additive", "T": T, "pass": p}, peers, args, want, c["repeats"])
            for p in ("fwd", "fwd+bwd")]  # fmt: skip


def lm_step(c: Row) -> list[Row]:
    """An AdamW step of a pre-LN GPT, bfloat16 compute over float32 parameters."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from zoo.models.transformer import TransformerConfig, TransformerLM, count_parameters

    L, width, T, B = c["layers"], c["width"], c["T"], c["B"]
    config = TransformerConfig(
        vocab_size=65, model_dim=width, ff_dim=4 * width, num_heads=c["heads"], num_layers=L,
        dropout_rate=0.0, pre_norm=True, positions="learned", max_length=T, activation="gelu",
        dtype="bfloat16", param_dtype="float32", kernel="auto",
    )  # fmt: skip
    model = TransformerLM(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adamw(3e-4)
    state = [params, optimizer.init(params)]
    tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, 65)

    @jax.jit
    def step(params: Any, opt_state: Any, tokens: Any) -> Any:
        def loss(params: Any) -> Any:
            logits = nnx.merge(graphdef, params)(tokens[:, :-1])
            assert isinstance(logits, jax.Array)  # return_weights=False: just the logits
            labels = tokens[:, 1:]
            return optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels
            ).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def run() -> None:
        state[0], state[1], value = step(*state, tokens)
        jax.block_until_ready(value)

    compile_s, _ = harness.time_call(run)
    summary = harness.race({"step": run}, repeats=c["repeats"], budget_s=60, threshold=EVERY)
    summary = summary["step"].summary(EVERY)
    n = count_parameters(model)
    # PaLM's accounting (Chowdhery et al. 2022, app. B): 6 N per token, plus attention.
    flops = (6 * n + 12 * L * width * T) * B * T
    seconds = summary["median_s"]
    return [{"part": "lm", "parameters": n, "batch": B, "context": T, "compile_s": compile_s,
             **summary, "tokens_per_s": B * T / seconds,
             "mfu": flops / seconds / (PEAK_TFLOPS * 1e12)}]  # fmt: skip


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    return []  # a first look at a GPU: what runs, how fast, how close; nothing promised yet


# --------------------------------------------------------------------------------------
# Reading the rows.


def _cell(name: str) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        r = row["impls"].get(name, {})
        if "skipped" in r:
            return "skipped"
        parts = [f"{1e3 * r['median_s']:.3f}"] if "median_s" in r else []
        parts += [f"{r['tflops']:.1f}"] if "tflops" in r else []
        parts += [f"{r['max_error']:.1e}"] if "max_error" in r else []
        return " / ".join(parts)

    return cell


def _failed(rows: list[Row]) -> list[Row]:
    """Each case that failed, and each peer that could not run and why (where first)."""
    out = {r["case"]["name"]: {"what": r["case"]["name"], "why": r["error"]} for r in rows
           if "error" in r}  # fmt: skip
    for row in rows:
        for name, r in row.get("impls", {}).items():
            if "skipped" in r:
                where = f"{name}, from {row['part']} T={row['T']} on"
                out.setdefault(name, {"what": where, "why": r["skipped"]})
    return list(out.values())


_MASK = Column("mask", lambda r: "causal" if r["causal"] else "full")
TABLES = (
    Table(
        "Attention: ms / TFLOP/s / max error",
        [Column("T", lambda r: r["T"]), _MASK, Column("pass", lambda r: r["pass"]),
         *(Column(p, _cell(p)) for p in PEERS)],
        lambda rows: [r for r in rows if r.get("part") == "attention"],
    ),
    Table(
        "Additive attention (Pallas against lax): ms / max error",
        [Column("T", lambda r: r["T"]), Column("pass", lambda r: r["pass"]),
         *(Column(p, _cell(p)) for p in ADDITIVE)],
        lambda rows: [r for r in rows if r.get("part") == "additive"],
    ),
    Table(
        "LM train step",
        [Column("parameters", lambda r: r["parameters"], "{:,}"),
         Column("batch x T", lambda r: f"{r['batch']} x {r['context']}"),
         Column("ms", lambda r: 1e3 * r["median_s"], "{:.2f}"),
         Column("tokens/s", lambda r: r["tokens_per_s"], "{:,.0f}"),
         Column("MFU", lambda r: r["mfu"], "{:.1%}"),
         Column("compile s", lambda r: r["compile_s"], "{:.1f}")],
        lambda rows: [r for r in rows if r.get("part") == "lm"],
    ),
    Table("What could not run", [Column("case or peer", lambda r: r["what"]),
                                 Column("why", lambda r: r["why"])], _failed),
)  # fmt: skip


def _points(row: Row) -> Iterator[tuple[str, str, float, float]]:
    if row.get("part") == "attention":
        panel = f"{row['pass']} {'causal' if row['causal'] else 'full'}"
        for name, r in row["impls"].items():
            if "tflops" in r:
                yield panel, name, row["T"], r["tflops"]


PLOTS = (Plot("attention.png", _points, "T = S", "TFLOP/s (bfloat16)"),)


if __name__ == "__main__":
    harness.main("benchmarks.gpu")
