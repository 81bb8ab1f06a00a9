"""Decoding speed: the KV cache against full recomputation, and the cost of beam search.

python -m benchmarks.decoding               # the tiny LM, 128 ... 1,024 tokens: minutes
python -m benchmarks.decoding --mode full   # nanoGPT's shakespeare_char LM, 128 ... 2,048
"""

import argparse
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import harness
from benchmarks.harness import Column, Plot, Row, Table, Target

NAME, TITLE = "decoding", "Decoding: KV cache, recomputation, beam search"
MODES = {
    "quick": "the lm experiment's tiny LM, N = 128, 512, 1,024; beams W = 1 ... 8 at N = 128",
    "full": "nanoGPT's shakespeare_char LM, N = 128 ... 2,048; beams W = 1 ... 8 at N = 512",
    "smoke": "the smoke LM (2 layers, 16 wide), N = 12: seconds, for the tests",
}
# Special ids 0-3 as in experiments.data.tokenizer (not imported: the report reads this module
# without experiments): 0 = PAD; the weights are untrained, so the end token masked out of
# the logits is any special id, here 2; prompts draw from the ids after the special ones.
PAD_ID, EOS_ID, FIRST_REAL_ID = 0, 2, 4
TARGET = Target("KV-cache decoding speed / full recomputation at 1,024 generated tokens", 10.0)
NOTE = """\
An untrained LM of `benchmarks/train_steps.py` generates N tokens greedily after a random
prompt, the end token masked out (every run generates exactly N; no beam ends early).
**KV cache**: the cache filled with the prompt but its last token, then
`zoo.decoding.greedy_search` over `TransformerLM.step` (reference kernel), one jitted call.
**Full recomputation**: every step re-runs the forward pass over the whole prefix, padded to
the next multiple of `--bucket` (64) tokens, each padded length compiled once, its steps in a
`lax.fori_loop`; causal masking keeps the padding out (at most 63 wasted positions a step, 3%
at 1,024, against one compilation per length). Its `--recompute-kernel` is blockwise: it skips
the causal mask's empty blocks (the tiny LM's forward pass in 0.2x the reference's time at
1,024 positions, 0.6x at 512, 1.2x at 128, on a 2-core Xeon). Both must give the same tokens.
Each case runs in a fresh process, its decoders timed interleaved, prompt included, after
compiling every shape they use; tokens/s = B x N / median s. Beam search: greedy and
`zoo.decoding.beam_search` of each beam size W over the same cached step, at one N; per token
= median / N. Each beam step also gathers every beam's cache from its parent's rows."""


@dataclasses.dataclass(frozen=True)
class Setting:
    preset: str  # an LM configuration of benchmarks/train_steps.py
    lengths: tuple[int, ...]  # N, generated tokens, for the KV cache vs recomputation
    beam_length: int  # N of the beam search runs
    beam_sizes: tuple[int, ...]  # W
    prompt_length: int = 16
    batch_size: int = 1
    bucket: int = 64  # recomputation pads the prefix to a multiple of this
    repeats: int = 3  # timed calls per decoder (fewer when a call is slow)
    budget_s: float = 60.0  # stop timing a case after this long (each decoder gets one call)


SETTINGS = {
    "quick": Setting("tiny", (128, 512, 1024), 128, (1, 2, 4, 8), repeats=2, budget_s=20.0),
    "full": Setting(
        "shakespeare_char", (128, 256, 512, 1024, 2048), 512, (1, 2, 4, 8), budget_s=120.0
    ),
    "smoke": Setting("smoke", (12,), 12, (2,), prompt_length=3, bucket=8, repeats=1, budget_s=1),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default=None, help="comma-separated N (default: the mode's)")
    parser.add_argument("--bucket", type=int, default=None, help="recomputation's padding step")
    parser.add_argument(
        "--recompute-kernel", choices=("blockwise", "reference"), default="blockwise"
    )


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def cases(args: argparse.Namespace, rows: list[Row]) -> Iterator[Row]:
    s = SETTINGS[args.mode]
    lengths = tuple(int(n) for n in args.lengths.split(",")) if args.lengths else s.lengths
    bucket = args.bucket or s.bucket
    common = dataclasses.asdict(s) | {"bucket": bucket, "recompute_kernel": args.recompute_kernel}
    # One position table for every case: the same model, so the same tokens.
    common["max_length"] = round_up(s.prompt_length + max(*lengths, s.beam_length), bucket)
    del common["lengths"], common["beam_length"], common["beam_sizes"]
    for n in lengths:
        # Recomputation's time grows as N^2; the full mode's LM at N = 2,048 takes about
        # 1,000 s a call on 2 cores, and the case makes three or four calls.
        yield {"name": f"N{n} KV cache vs recomputation", "generated": n, **common,
               "timeout_s": 900 + n**2 / 200}  # fmt: skip
    beams = {"generated": s.beam_length, "beam_sizes": list(s.beam_sizes)}
    yield {"name": f"N{s.beam_length} beam search", **beams, **common}


# --------------------------------------------------------------------------------------
# Inside the fresh process.


def without_end(logits: jax.Array) -> jax.Array:
    """The end token masked out, so that every run generates the same number of tokens."""
    return logits.at[..., EOS_ID].set(-1.0e9)


def decoders(model: Any, *, bucket: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(cached, recompute)``, one model's jitted decoders. ``cached(prompt [B, P], N, W=None)``:
    greedy ``[B, N]`` or beam search ``[B, W, N]`` over the KV cache. ``recompute(prompt, N)``:
    greedy, re-running the model every step (``steps=False``: none; compiles every bucket)."""
    from flax import nnx

    from zoo import decoding

    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnums=(2, 3))
    def search(state: Any, prompt: jax.Array, N: int, W: int | None) -> jax.Array:
        model = nnx.merge(graphdef, state)
        cache = model.init_decode_state(model.encode(prompt), prompt.shape[1] - 1 + N)

        def step(tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
            logits, cache = model.step(tokens, cache)
            return without_end(logits), cache

        ids: dict[str, Any] = dict(bos_id=prompt[:, -1], eos_id=EOS_ID, pad_id=PAD_ID, max_length=N)
        if W is None:
            return decoding.greedy_search(step, cache, **ids)
        return decoding.beam_search(step, cache, beam_size=W, **ids).tokens

    @jax.jit
    def segment(state: Any, buffer: jax.Array, start: Any, stop: Any) -> jax.Array:
        """Fill positions ``start .. stop - 1`` of ``buffer [B, L]``, one forward pass each."""
        model = nnx.merge(graphdef, state)

        def body(t: jax.Array, buffer: jax.Array) -> jax.Array:
            # Causal: the logits at t - 1 see positions < t only, never the padding after.
            last = lax.dynamic_index_in_dim(model(buffer), t - 1, axis=1, keepdims=False)
            return buffer.at[:, t].set(jnp.argmax(without_end(last), -1).astype(buffer.dtype))

        return lax.fori_loop(start, stop, body, buffer)

    def recompute(prompt: jax.Array, N: int, *, steps: bool = True) -> jax.Array:
        (B, P), end = prompt.shape, prompt.shape[1] + N
        buffer = jnp.zeros((B, round_up(end, bucket)), jnp.int32).at[:, :P].set(prompt)
        t = P
        while t < end:  # one bucket: steps t .. stop - 1 forward the first `padded` positions
            padded = round_up(t + 1, bucket)
            stop = min(padded, end)
            filled = segment(state, buffer[:, :padded], t, stop if steps else t)
            buffer, t = buffer.at[:, :padded].set(filled), stop
        return buffer[:, P:end]

    return (lambda prompt, N, W=None: search(state, prompt, N, W)), recompute


def build(case: Row) -> tuple[list[Any], jax.Array]:
    """(the KV cache's model and recomputation's, their parameters the same), prompt ``[B, P]``."""
    from flax import nnx

    from benchmarks.train_steps import lm_config
    from zoo.models.transformer import TransformerLM

    models = []
    for kernel in ("reference", case["recompute_kernel"]):
        config = lm_config(case["preset"], kernel)[0]
        config = dataclasses.replace(config, max_length=case["max_length"])
        models.append(TransformerLM(config, rngs=nnx.Rngs(0)))
    for a, b in zip(*(jax.tree.leaves(nnx.state(m)) for m in models), strict=True):
        np.testing.assert_array_equal(a, b)  # the same seed: checked
    shape = (case["batch_size"], case["prompt_length"])
    prompt = np.random.default_rng(0).integers(FIRST_REAL_ID, config.vocab_size, shape)
    return models, jnp.asarray(prompt, jnp.int32)


def measure(case: Row) -> Row | list[Row]:
    from zoo.models.transformer import count_parameters

    (model, other), prompt = build(case)
    cached, _ = decoders(model, bucket=case["bucket"])
    N, timing = case["generated"], {"repeats": case["repeats"], "budget_s": case["budget_s"]}
    if "beam_sizes" in case:
        return beams(cached, prompt, case)
    recompute = decoders(other, bucket=case["bucket"])[1]
    out: dict[str, Any] = {}

    def kv_cache() -> None:
        out["kv_cache"] = jax.block_until_ready(cached(prompt, N))

    def recomputed() -> None:
        out["recompute"] = jax.block_until_ready(recompute(prompt, N))

    first_call_s = harness.time_call(kv_cache)[0]  # compiles
    compile_s = harness.time_call(lambda: recompute(prompt, N, steps=False))[0]
    # Every shape is compiled now: recomputation's first call is timed like the others.
    samples = harness.race({"kv_cache": kv_cache, "recompute": recomputed}, **timing)
    timed = {name: s.summary() for name, s in samples.items()}
    same = np.asarray(out["kv_cache"]) == np.asarray(out["recompute"])
    row: Row = {
        "generated": N,
        "tokens_agree": bool(same.all()),
        "first_difference": None if same.all() else int(np.argmin(same.all(axis=0))),
        "kv_cache": {"first_call_s": first_call_s, **timed["kv_cache"]},
        "recompute": {"compile_s": compile_s, **timed["recompute"]},
        "model": {**dataclasses.asdict(model.config), "parameters": count_parameters(model)},
    }
    for name in ("kv_cache", "recompute"):
        row[name]["tokens_per_s"] = case["batch_size"] * N / row[name]["median_s"]
    row["speedup"] = row["recompute"]["median_s"] / row["kv_cache"]["median_s"]
    return row


def beams(cached: Callable[..., Any], prompt: jax.Array, case: Row) -> list[Row]:
    """Greedy search and beam search of each size over the KV cache, timed interleaved."""
    N, sizes = case["generated"], case["beam_sizes"]
    searches: dict[str, int | None] = {"greedy": None, **{f"beam {w}": w for w in sizes}}
    runs = {
        name: functools.partial(lambda w: jax.block_until_ready(cached(prompt, N, w)), w)
        for name, w in searches.items()
    }
    first = {name: harness.time_call(run)[0] for name, run in runs.items()}  # compiles
    samples = harness.race(runs, repeats=case["repeats"], budget_s=case["budget_s"])
    timed = {name: s.summary() for name, s in samples.items()}
    rows = []
    for name, w in searches.items():
        median = timed[name]["median_s"]
        rows.append({"search": "greedy" if w is None else "beam", "beam_size": w, "generated": N,
                     "first_call_s": first[name], **timed[name], "per_token_ms": median / N * 1e3,
                     "relative_to_greedy": median / timed["greedy"]["median_s"]})  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------
# Reading the rows.


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    at = [r for r in rows if r.get("generated") == 1024 and "speedup" in r]
    if not at:
        return [TARGET.check(None)]
    r = at[0]
    contended = bool(harness.star(r["kv_cache"]) or harness.star(r["recompute"]))
    note = "" if r["tokens_agree"] else "the two decoders' tokens differ"
    return [TARGET.check(r["speedup"], case=r["case"]["name"], contended=contended, note=note)]


def _rate(name: str) -> Any:
    return lambda r: f"{r[name]['tokens_per_s']:,.1f}{harness.star(r[name])}" if name in r else ""


def _same(r: Row) -> str:
    if "error" in r:  # a case that failed
        return "error: " + r["error"][:80]
    return "yes" if r["tokens_agree"] else f"no, from {r['first_difference']}"


def _search(r: Row) -> str:
    if "error" in r:
        return "error: " + r["error"][:80]
    return "greedy" if r["beam_size"] is None else f"beam, W = {r['beam_size']}"


def _per_token(r: Row) -> str:
    return f"{r['per_token_ms']:.3f}{harness.star(r)}" if "per_token_ms" in r else ""


def _lm(r: Row) -> str:
    if (m := r.get("model")) is None:
        return ""
    return f"{m['num_layers']} x {m['model_dim']}, {m['parameters']:,} parameters"


TABLES = (
    Table(
        "KV cache against full recomputation",
        [
            Column("generated N", lambda r: r["case"]["generated"], "{:,}"),
            Column("KV cache tok/s", _rate("kv_cache")),
            Column("recompute tok/s", _rate("recompute")),
            Column("speedup", lambda r: r.get("speedup"), "{:.1f}x"),
            Column("same tokens", _same),
            Column("LM", _lm),
        ],
        lambda rows: [r for r in rows if "beam_sizes" not in r["case"]],
    ),
    Table(
        "Beam search over the KV cache",
        [
            Column("search", _search),
            Column("generated N", lambda r: r["case"]["generated"], "{:,}"),
            Column("ms per generated token", _per_token),
            Column("relative to greedy", lambda r: r.get("relative_to_greedy"), "{:.2f}x"),
        ],
        lambda rows: [r for r in rows if "beam_sizes" in r["case"]],
    ),
)


def _speed(r: Row) -> Iterator[tuple[str, str, float, float]]:
    for name, label in (("kv_cache", "KV cache"), ("recompute", "full recomputation")):
        if name in r:
            yield "greedy decoding", label, r["generated"], r[name]["tokens_per_s"]


def _beams(r: Row) -> Iterator[tuple[str, str, float, float]]:
    if "per_token_ms" in r:
        panel, series = f"over the KV cache, N = {r['generated']:,}", r["search"]
        # Greedy is a level line across the beam sizes.
        for w in r["case"]["beam_sizes"] if r["beam_size"] is None else [r["beam_size"]]:
            yield panel, series, w, r["per_token_ms"]


PLOTS = (
    Plot("decoding.png", _speed, "generated tokens N", "tokens / s"),
    Plot("beams.png", _beams, "beam size W", "ms per generated token"),
)


if __name__ == "__main__":
    harness.main("benchmarks.decoding")
