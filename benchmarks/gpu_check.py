"""The accelerator check: kernels, the Pallas additive kernel and an LM train step on one GPU.

Run by ``benchmarks/gpu_check.sh`` (which first runs the kernel, layer and model tests there);
``--dry-run`` runs every part at tiny sizes on whatever JAX has (CPU in CI), in seconds.
Every table is bfloat16 unless it says otherwise; FLOPs count the useful work only
(``4 B N T S H`` forward, 2.5x that forward+backward, halved when causal) and errors are
against the same call in float32 at ``highest`` matmul precision.

Peers, each only where it can run: the zoo's dispatch (``implementation=None``) and its
blockwise kernel; tokamax's Mosaic GPU and Triton kernels; jax.nn's cuDNN and XLA kernels;
PyTorch's SDPA (its flash kernel on GPU). Results go to ``--out`` as ``results.json`` (the
benchmarks' schema: ``machine`` and ``cases``) and ``results.md``.
"""

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import machine_info, race, save_results
from zoo import kernels
from zoo.models.transformer import TransformerConfig, TransformerLM, count_parameters

# H200 dense bfloat16 peak (NVIDIA's datasheet: 989 TFLOP/s without sparsity); the MFU of
# the train step is against it.
_PEAK_TFLOPS = 989.0
_ATTENTION = {"T": (1024, 4096, 16384), "B": 2, "N": 16, "H": 128}
_DRY_ATTENTION = {"T": (64,), "B": 1, "N": 2, "H": 16}


def _attention_peers(causal: bool) -> dict[str, Callable[..., Any]]:
    """name -> f(q, k, v) for every implementation that may run here."""

    def zoo(implementation: Any) -> Callable[..., Any]:
        def f(q, k, v):
            return kernels.dot_product_attention(
                q, k, v, is_causal=causal, implementation=implementation
            )

        return f

    def jax_nn(implementation: Literal["xla", "cudnn"]) -> Callable[..., Any]:
        def f(q, k, v):
            return jax.nn.dot_product_attention(
                q, k, v, is_causal=causal, implementation=implementation
            )

        return f

    peers = {
        "zoo dispatch": zoo(None),
        "zoo blockwise": zoo("blockwise"),
        "tokamax mosaic": zoo("tokamax.mosaic"),
        "tokamax triton": zoo("tokamax.triton"),
        "jax.nn xla": jax_nn("xla"),
    }
    if jax.default_backend() == "gpu":
        peers["jax.nn cudnn"] = jax_nn("cudnn")
    return peers


def _flops(B: int, N: int, T: int, H: int, causal: bool, backward: bool) -> float:
    flops = 4.0 * B * N * T * T * H * (2.5 if backward else 1.0)
    return flops / 2 if causal else flops


def _compiled(f: Callable[..., Any], args: tuple, backward: bool) -> Callable[[], Any]:
    """A warmed-up call of ``f(*args)`` (or of its gradient), blocking until done."""
    if backward:
        loss = lambda *a: jnp.sum(f(*a).astype(jnp.float32))  # noqa: E731
        fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    else:
        fn = jax.jit(f)
    compiled = fn.lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    return lambda: jax.block_until_ready(compiled(*args))


def attention_table(sizes: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    B, N, H = sizes["B"], sizes["N"], sizes["H"]
    rows = []
    for T in sizes["T"]:
        keys = jax.random.split(jax.random.key(T), 3)
        f32 = [jax.random.normal(k, (B, T, N, H), jnp.float32) for k in keys]
        bf16 = tuple(x.astype(jnp.bfloat16) for x in f32)
        for causal in (False, True):
            peers = _attention_peers(causal)
            with jax.default_matmul_precision("highest"):
                want = jax.jit(peers["zoo blockwise"])(*f32)
            for backward in (False, True):
                runs, errors, skipped = {}, {}, {}
                for name, f in peers.items():
                    try:
                        runs[name] = _compiled(f, bf16, backward)
                        out = jax.jit(f)(*bf16).astype(jnp.float32)
                        errors[name] = float(jnp.max(jnp.abs(out - want)))
                    except Exception as e:  # a peer that cannot run here is reported
                        skipped[name] = f"{type(e).__name__}: {str(e)[:160]}"
                torch_run = _torch_sdpa(bf16, causal, backward)
                if isinstance(torch_run, str):
                    skipped["torch sdpa"] = torch_run
                else:
                    runs["torch sdpa"] = torch_run
                samples = race(runs, repeats=repeats, budget_s=60.0, threshold=1.0)
                flops = _flops(B, N, T, H, causal, backward)
                for name, s in samples.items():
                    ms = s.summary(1.0)["median_s"] * 1e3
                    rows.append(
                        {
                            "case": "attention",
                            "T": T,
                            "causal": causal,
                            "pass": "fwd+bwd" if backward else "fwd",
                            "implementation": name,
                            "ms": ms,
                            "tflops": flops / (ms * 1e-3) / 1e12,
                            "max_error": errors.get(name),
                        }
                    )
                rows += [
                    {
                        "case": "attention",
                        "T": T,
                        "causal": causal,
                        "pass": "fwd+bwd" if backward else "fwd",
                        "implementation": name,
                        "skipped": why,
                    }
                    for name, why in skipped.items()
                ]
                print(f"attention T={T} causal={causal} backward={backward}: done", flush=True)
    return rows


def _torch_sdpa(args: tuple, causal: bool, backward: bool) -> Callable[[], Any] | str:
    """PyTorch's SDPA on the same inputs (flash on GPU), or why it cannot run."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (
        torch.tensor(np.asarray(x, np.float32), device=device)
        .to(torch.bfloat16)
        .transpose(1, 2)
        .requires_grad_(backward)
        for x in args
    )

    def run() -> None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if backward:
            out.float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    run()
    return run


def additive_table(dry: bool, repeats: int) -> list[dict[str, Any]]:
    """The zoo's Pallas additive kernel against the lax blockwise one (Bahdanau et al. 2014,
    eq. (6)): RNNsearch-sized hidden layer, long sources."""
    B, A, D = (2, 16, 8) if dry else (16, 512, 1024)
    rows = []
    for T in (16,) if dry else (256, 1024):
        rng = np.random.default_rng(T)
        host = dict(
            query=rng.standard_normal((B, T, D)),
            projected_keys=rng.standard_normal((B, T, A)),
            values=rng.standard_normal((B, T, D)),
            w_query=rng.standard_normal((D, A)) / math.sqrt(D),
            v=rng.standard_normal(A) / math.sqrt(A),
        )
        f32 = {n: jnp.asarray(x, jnp.float32) for n, x in host.items()}
        bf16 = {n: x.astype(jnp.bfloat16) for n, x in f32.items()}
        peers = {
            "pallas": kernels.pallas_additive_attention,
            "blockwise (lax)": kernels.blockwise_additive_attention,
        }
        with jax.default_matmul_precision("highest"):
            want = kernels.blockwise_additive_attention(
                f32["query"],
                f32["projected_keys"],
                f32["values"],
                w_query=f32["w_query"],
                v=f32["v"],
            )
        for backward in (False, True):
            runs, errors = {}, {}
            for name, kernel in peers.items():

                def f(q, pk, vals, kernel=kernel, rest=bf16):
                    return kernel(q, pk, vals, w_query=rest["w_query"], v=rest["v"])

                args = (bf16["query"], bf16["projected_keys"], bf16["values"])
                runs[name] = _compiled(f, args, backward)
                errors[name] = float(jnp.max(jnp.abs(jax.jit(f)(*args).astype(jnp.float32) - want)))
            for name, s in race(runs, repeats=repeats, budget_s=60.0, threshold=1.0).items():
                rows.append(
                    {
                        "case": "additive",
                        "T": T,
                        "pass": "fwd+bwd" if backward else "fwd",
                        "implementation": name,
                        "ms": s.summary(1.0)["median_s"] * 1e3,
                        "max_error": errors[name],
                    }
                )
    return rows


def train_step_table(dry: bool, repeats: int) -> list[dict[str, Any]]:
    """An AdamW step of nanoGPT's shakespeare-char model (6 layers, 6 heads, 384 wide,
    context 256, batch 64), bfloat16 compute over float32 parameters: tokens/s and MFU."""
    import optax
    from flax import nnx

    layers, heads, width, T, B = (1, 2, 32, 16, 2) if dry else (6, 6, 384, 256, 64)
    config = TransformerConfig(
        vocab_size=65, model_dim=width, ff_dim=4 * width, num_heads=heads, num_layers=layers,
        dropout_rate=0.0, pre_norm=True, positions="learned", max_length=T,
        activation="gelu", dtype="bfloat16", param_dtype="float32", kernel="auto",
    )  # fmt: skip
    model = TransformerLM(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adamw(3e-4)
    opt_state = optimizer.init(params)
    tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, 65)

    @jax.jit
    def step(params, opt_state, tokens):
        def loss(params):
            logits = nnx.merge(graphdef, params)(tokens[:, :-1])
            assert isinstance(logits, jax.Array)  # return_weights=False: just the logits
            logits = logits.astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    state = [params, opt_state]

    def run() -> None:
        state[0], state[1], value = step(state[0], state[1], tokens)
        jax.block_until_ready(value)

    start = time.perf_counter()
    run()
    compile_s = time.perf_counter() - start
    seconds = race({"step": run}, repeats=repeats, budget_s=60.0, threshold=1.0)["step"]
    s = seconds.summary(1.0)["median_s"]
    n_params = count_parameters(model)
    # PaLM's accounting (Chowdhery et al. 2022, app. B): 6 N per token, plus attention.
    flops = (6 * n_params + 12 * layers * width * T) * B * T
    return [
        {
            "case": "lm_train_step",
            "parameters": n_params,
            "batch": B,
            "context": T,
            "ms": s * 1e3,
            "tokens_per_s": B * T / s,
            "mfu": flops / s / (_PEAK_TFLOPS * 1e12),
            "compile_s": compile_s,
        }
    ]


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# GPU check",
        "",
        f"{m['date']}, {m.get('device', '?')}, jax {m['versions'].get('jax')}; bfloat16.",
        "",
        "| case | T | mask | pass | implementation | ms | TFLOP/s | max error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["cases"]:
        if r["case"] not in ("attention", "additive"):
            continue
        mask = ("causal" if r.get("causal") else "full") if r["case"] == "attention" else "-"
        if "skipped" in r:
            cells = ["-", "-", f"skipped: {r['skipped'][:80]}"]
        else:
            tflops = f"{r['tflops']:.1f}" if "tflops" in r else "-"
            error = "-" if r.get("max_error") is None else f"{r['max_error']:.2e}"
            cells = [f"{r['ms']:.3f}", tflops, error]
        lines.append(
            f"| {r['case']} | {r['T']} | {mask} | {r['pass']} | {r['implementation']} | "
            + " | ".join(cells)
            + " |"
        )
    for r in results["cases"]:
        if r["case"] == "lm_train_step":
            lines += [
                "",
                f"LM train step ({r['parameters']:,} parameters, batch {r['batch']}, context "
                f"{r['context']}): {r['ms']:.1f} ms, {r['tokens_per_s']:,.0f} tokens/s, "
                f"MFU {100 * r['mfu']:.1f}% (compile {r['compile_s']:.1f} s).",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any backend")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    repeats = 2 if args.dry_run else args.repeats
    machine = machine_info()
    machine["device"] = str(jax.devices()[0].device_kind)
    machine["versions"]["tokamax"] = _version("tokamax")
    machine["versions"]["triton"] = _version("triton")
    results: dict[str, Any] = {"benchmark": "gpu_check", "machine": machine, "cases": []}
    parts = (
        lambda: attention_table(_DRY_ATTENTION if args.dry_run else _ATTENTION, repeats),
        lambda: additive_table(args.dry_run, repeats),
        lambda: train_step_table(args.dry_run, repeats),
    )
    for part in parts:
        results["cases"] += part()
        save_results(args.out, results, report(results))  # nothing lost if a later part fails
    print(report(results))


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
