"""Decoding speed: incremental decoding with the KV cache against full recomputation, and
the cost of beam search against the beam size.

    python -m benchmarks.decoding --mode quick   # the tiny LM, 128 ... 1,024 tokens: minutes
    python -m benchmarks.decoding --mode full    # nanoGPT's shakespeare_char LM, 128 ... 2,048

The LM is one of the configurations of ``benchmarks/train_steps.py`` (the lm experiment's
tiny preset, or nanoGPT's shakespeare_char), untrained, its learned position table made long
enough for the longest run. Each run generates ``N`` tokens greedily after a random prompt of
16 tokens; the end token's logit is masked out, so that every run generates exactly ``N``.

* **KV cache**: ``TransformerLM.init_decode_state`` (the cache filled with all but the last
  prompt token), then ``zoo.decoding.greedy_search`` over ``TransformerLM.step``, one jitted
  function (the steps run in a ``lax.while_loop``): one new query per step, attending over
  the cache.
* **Full recomputation**: every step re-runs the model's forward pass over the whole prefix
  and takes the argmax of the last position's logits. The cheapest honest way to do that
  under ``jit``: the token buffer is padded to the next multiple of ``--bucket`` tokens (64)
  and each bucket length is compiled once, its steps in a ``lax.fori_loop``; causal masking
  keeps the padding out of the real positions' logits. Padding wastes at most ``bucket - 1``
  positions per step (about 3% at 1,024), against one compilation per exact length. The
  forward pass uses ``--recompute-kernel``: by default the blockwise kernel, which skips
  the causal mask's empty blocks; for the tiny LM's forward pass it took 0.6x the reference
  kernel's time at 512 positions and 0.2x at 1,024 (1.2x at 128), on this machine.

Both produce the same tokens (checked, and reported as ``tokens_agree``). Both are timed
with the prompt included, interleaved (``benchmarks/timing.py``), after compiling every
shape they use; tokens/s = generated tokens (B x N) / median seconds.

Beam search: ``zoo.decoding.beam_search`` over the same cached step, for each beam size W,
and greedy search, at one length; "per token" is the median time divided by N (one output
sequence per example). Each step gathers every beam's cache from its parent's rows, so
beam search also copies ``W x`` the cache per step.

Results: ``<out>/results.json``, ``<out>/results.md`` (tables and the target verdict: the
KV cache at least 10x full recomputation at 1,024 generated tokens) and ``<out>/decoding.png``.
The machine is shared and noisy: compare ratios from one run, not absolute times across runs.
"""

import argparse
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from benchmarks.timing import machine_info, race, save_results, time_call
from zoo import decoding
from zoo.models.transformer import TransformerConfig, TransformerLM, count_parameters

# Token ids of every tokenizer of the zoo (experiments.data): 0 = PAD, 2 = EOS; 0-3 special.
PAD_ID, EOS_ID, FIRST_REAL_ID = 0, 2, 4
TARGET_LENGTH, TARGET_SPEEDUP = 1024, 10.0  # issue 7


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one ``--mode`` measures."""

    preset: str  # an LM configuration of benchmarks/train_steps.py, or "smoke" (tests)
    lengths: tuple[int, ...]  # N, generated tokens, for the KV cache vs recomputation
    beam_length: int  # N of the beam search runs
    beam_sizes: tuple[int, ...]  # W
    prompt_length: int = 16
    batch_size: int = 1
    bucket: int = 64  # recomputation pads the prefix to a multiple of this
    repeats: int = 3  # timed calls per run (fewer when a call is slow)
    budget_s: float = 60.0  # stop timing a length after this long (each run gets one call)


SETTINGS = {
    "smoke": Setting("smoke", lengths=(12,), beam_length=12, beam_sizes=(2,), prompt_length=3,
                     bucket=8, repeats=1, budget_s=1.0),
    "quick": Setting("tiny", lengths=(128, 512, 1024), beam_length=128, beam_sizes=(1, 2, 4, 8),
                     repeats=2, budget_s=20.0),
    "full": Setting("shakespeare_char", lengths=(128, 256, 512, 1024, 2048), beam_length=512,
                    beam_sizes=(1, 2, 4, 8), repeats=3, budget_s=120.0),
}  # fmt: skip


def model_config(preset: str, max_length: int) -> TransformerConfig:
    """The LM configuration ``preset`` with room for ``max_length`` positions."""
    from benchmarks.train_steps import VOCAB, lm_config

    if preset == "smoke":
        model, _, _ = lm_config("tiny")
        model = dataclasses.replace(model, model_dim=16, ff_dim=32, num_heads=2, num_layers=2)
    else:
        model, _, _ = lm_config(preset)
    return dataclasses.replace(model, vocab_size=VOCAB, max_length=max_length)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _without_end(logits: jax.Array) -> jax.Array:
    """Mask the end token out, so that every run generates the same number of tokens."""
    return logits.at[..., EOS_ID].set(decoding.NEG)


class Decoders:
    """The jitted decoders of one model: cached greedy and beam search, and recomputation."""

    def __init__(self, model: TransformerLM, *, bucket: int):
        self.config = model.config
        self.parameters = count_parameters(model)
        self.graphdef, self.state = nnx.split(model)
        self.bucket = bucket
        self._segment = jax.jit(self._segment_fn)

    # KV cache --------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnums=(0, 3, 4))
    def cached(
        self, state: nnx.State, prompt: jax.Array, length: int, beam_size: int | None
    ) -> jax.Array:
        """``length`` tokens after ``prompt [B, P]``: greedy ``[B, N]`` or beams ``[B, W, N]``."""
        model = nnx.merge(self.graphdef, state)
        P = prompt.shape[1]
        cache = model.init_decode_state(model.encode(prompt), P - 1 + length)

        def step(tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
            logits, cache = model.step(tokens, cache)
            return _without_end(logits), cache

        common: dict[str, Any] = dict(
            bos_id=prompt[:, -1], eos_id=EOS_ID, pad_id=PAD_ID, max_length=length
        )
        if beam_size is None:
            return decoding.greedy_search(step, cache, **common)
        return decoding.beam_search(step, cache, beam_size=beam_size, **common).tokens

    # Full recomputation ----------------------------------------------------------------

    def _segment_fn(
        self, state: nnx.State, buffer: jax.Array, start: jax.Array, stop: jax.Array
    ) -> jax.Array:
        """Fill positions ``start .. stop - 1`` of ``buffer [B, L]``, one forward pass each."""
        model = nnx.merge(self.graphdef, state)

        def body(t: jax.Array, buffer: jax.Array) -> jax.Array:
            # Causal: the logits at t - 1 see positions < t only, never the padding after.
            logits = model(buffer)  # [B, L, V]
            last = lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False)
            token = jnp.argmax(_without_end(last), axis=-1).astype(buffer.dtype)
            return buffer.at[:, t].set(token)

        return lax.fori_loop(start, stop, body, buffer)

    def _segments(self, prompt_length: int, length: int) -> list[tuple[int, int, int]]:
        """``(padded length, start, stop)`` per bucket: steps ``start .. stop - 1`` forward
        the first ``padded length`` positions of the buffer."""
        segments, t, end = [], prompt_length, prompt_length + length
        while t < end:
            padded = _round_up(t + 1, self.bucket)
            segments.append((padded, t, min(padded, end)))
            t = min(padded, end)
        return segments

    def compile_recompute(self, prompt: jax.Array, length: int) -> None:
        """Compile every shape :meth:`recompute` uses (each bucket run with no steps)."""
        jax.block_until_ready(self._recompute(prompt, length, steps=False))

    def recompute(self, prompt: jax.Array, length: int) -> jax.Array:
        """``length`` greedy tokens after ``prompt [B, P]``, re-running the model every step."""
        return self._recompute(prompt, length, steps=True)

    def _recompute(self, prompt: jax.Array, length: int, *, steps: bool) -> jax.Array:
        B, P = prompt.shape
        buffer = jnp.zeros((B, _round_up(P + length, self.bucket)), jnp.int32)
        buffer = buffer.at[:, :P].set(prompt)
        for padded, start, stop in self._segments(P, length):
            filled = self._segment(self.state, buffer[:, :padded], start, stop if steps else start)
            buffer = buffer.at[:, :padded].set(filled)
        return buffer[:, P : P + length]


def _model(setting: Setting, kernel: str) -> TransformerLM:
    longest = max(*setting.lengths, setting.beam_length)
    config = model_config(
        setting.preset, _round_up(setting.prompt_length + longest, setting.bucket)
    )
    return TransformerLM(dataclasses.replace(config, kernel=kernel), rngs=nnx.Rngs(0))


def _prompt(setting: Setting, vocab: int) -> jax.Array:
    rng = np.random.default_rng(0)
    shape = (setting.batch_size, setting.prompt_length)
    return jnp.asarray(rng.integers(FIRST_REAL_ID, vocab, shape), jnp.int32)


def measure_length(
    cached: Decoders, recompute: Decoders, prompt: jax.Array, setting: Setting, length: int
) -> dict[str, Any]:
    """KV cache against full recomputation, generating ``length`` tokens."""
    outputs: dict[str, jax.Array] = {}

    def kv_cache() -> None:
        outputs["kv_cache"] = jax.block_until_ready(
            cached.cached(cached.state, prompt, length, None)
        )

    def recomputed() -> None:
        outputs["recompute"] = jax.block_until_ready(recompute.recompute(prompt, length))

    cached_first_s = time_call(kv_cache)[0]  # compiles
    start = time.perf_counter()
    recompute.compile_recompute(prompt, length)
    recompute_compile_s = time.perf_counter() - start
    # Every shape is compiled now: recomputation's first call is timed like the others.
    samples = race(
        {"kv_cache": kv_cache, "recompute": recomputed},
        repeats=setting.repeats,
        budget_s=setting.budget_s,
    )
    same = np.asarray(outputs["kv_cache"]) == np.asarray(outputs["recompute"])
    row: dict[str, Any] = {
        "generated": length,
        "tokens_agree": bool(same.all()),
        "first_difference": None if same.all() else int(np.argmin(same.all(axis=0))),
        "kv_cache": {"first_call_s": cached_first_s},
        "recompute": {"compile_s": recompute_compile_s},
    }
    for name, s in samples.items():
        row[name].update(s.summary(0.1))
        row[name]["tokens_per_s"] = setting.batch_size * length / row[name]["median_s"]
    row["speedup"] = row["recompute"]["median_s"] / row["kv_cache"]["median_s"]
    _print_length(row)
    return row


def measure_beams(cached: Decoders, prompt: jax.Array, setting: Setting) -> dict[str, Any]:
    """Greedy and beam search (each beam size) over the KV cache, at ``beam_length``."""
    length = setting.beam_length
    searches: dict[str, int | None] = {"greedy": None}
    searches |= {f"beam {w}": w for w in setting.beam_sizes}
    runs, first = {}, {}
    for name, w in searches.items():

        def run(w: int | None = w) -> Any:
            return jax.block_until_ready(cached.cached(cached.state, prompt, length, w))

        first[name] = time_call(run)[0]  # compiles
        runs[name] = run
    samples = race(runs, repeats=setting.repeats, budget_s=setting.budget_s)
    greedy = samples["greedy"].summary(0.1)["median_s"]
    rows = []
    for name, w in searches.items():
        summary = samples[name].summary(0.1)
        rows.append({
            "search": "greedy" if w is None else "beam",
            "beam_size": w,
            "first_call_s": first[name],
            **summary,
            "per_token_ms": summary["median_s"] / length * 1e3,
            "relative_to_greedy": summary["median_s"] / greedy,
        })  # fmt: skip
        print(f"   {name:8s} {rows[-1]['per_token_ms']:8.3f} ms/token "
              f"({rows[-1]['relative_to_greedy']:.2f}x greedy)", flush=True)  # fmt: skip
    return {"generated": length, "runs": rows}


def build(setting: Setting, recompute_kernel: str) -> tuple[Decoders, Decoders, jax.Array]:
    """(KV-cache decoders, recomputation decoders, prompt ``[B, P]``) of ``setting``."""
    cached_model = _model(setting, "reference")
    recompute_model = _model(setting, recompute_kernel)
    # The same parameters: both models come from the same seed, checked here.
    for a, b in zip(
        jax.tree.leaves(nnx.state(cached_model)),
        jax.tree.leaves(nnx.state(recompute_model)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    prompt = _prompt(setting, cached_model.config.vocab_size)
    return (
        Decoders(cached_model, bucket=setting.bucket),
        Decoders(recompute_model, bucket=setting.bucket),
        prompt,
    )


def run(
    setting: Setting,
    cached: Decoders,
    recompute: Decoders,
    prompt: jax.Array,
    *,
    out: Path,
    mode: str,
) -> dict[str, Any]:
    """Measure everything ``setting`` asks for; write ``out``'s files; return the results."""
    recompute_kernel = recompute.config.kernel
    results: dict[str, Any] = {
        "machine": machine_info(),
        "mode": mode,
        "setting": dataclasses.asdict(setting),
        "model": {**dataclasses.asdict(cached.config), "parameters": cached.parameters},
        "kv_cache_kernel": cached.config.kernel,
        "recompute_kernel": recompute_kernel,
        "recompute": f"forward over the prefix padded to a multiple of {setting.bucket}, one "
        "compilation per padded length, steps in a lax.fori_loop",
    }
    started = time.time()
    print(f"KV cache vs recomputation ({setting.preset}, {recompute_kernel} recompute)", flush=True)
    results["lengths"] = []
    for length in setting.lengths:
        results["lengths"].append(measure_length(cached, recompute, prompt, setting, length))
        _save(results, out, with_plot=False)
    print(f"beam search, N={setting.beam_length}", flush=True)
    results["beams"] = measure_beams(cached, prompt, setting)
    results["target"] = target(results)
    results["elapsed_s"] = time.time() - started
    _save(results, out)
    print(f"wrote {out}/results.json, results.md, decoding.png", flush=True)
    return results


def _print_length(row: dict[str, Any]) -> None:
    c, r = row["kv_cache"], row["recompute"]
    print(
        f"   N={row['generated']:5d}  KV cache {c['tokens_per_s']:9.1f} tok/s  recompute "
        f"{r['tokens_per_s']:8.1f} tok/s  {row['speedup']:6.1f}x  "
        f"{'same tokens' if row['tokens_agree'] else 'TOKENS DIFFER'}",
        flush=True,
    )


# --------------------------------------------------------------------------------------
# Reports.


def target(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 7: KV-cache decoding at least 10x full recomputation at 1,024 tokens."""
    rows = [r for r in results.get("lengths", []) if r["generated"] == TARGET_LENGTH]
    if not rows:
        return {"generated": TARGET_LENGTH, "speedup": None, "met": None}
    speedup = rows[0]["speedup"]
    return {"generated": TARGET_LENGTH, "speedup": speedup, "met": speedup >= TARGET_SPEEDUP}


def markdown(results: dict[str, Any]) -> str:
    m, model = results["machine"], results["model"]
    lines = [
        f"# Decoding benchmark ({results['mode']})",
        "",
        f"{m['processor']}, {m['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"LM: {model['num_layers']} layers, {model['model_dim']} wide, {model['num_heads']} heads, "
        f"vocabulary {model['vocab_size']}, {model['parameters']:,} parameters; batch "
        f"{results['setting']['batch_size']}, prompt {results['setting']['prompt_length']} tokens. "
        f"KV cache: `greedy_search` over `TransformerLM.step` ({results['kv_cache_kernel']} "
        f"kernel). Recomputation: {results['recompute']} ({results['recompute_kernel']} kernel). "
        "Medians of interleaved calls, prompt included; `*` marks a median over calls during "
        "which other processes used >10% of the machine.",
        "",
        "| generated N | KV cache tok/s | recompute tok/s | speedup | same tokens |",
        "|---|---|---|---|---|",
    ]
    for row in results.get("lengths", []):
        c, r = row["kv_cache"], row["recompute"]
        lines.append(
            f"| {row['generated']:,} | {c['tokens_per_s']:,.1f}{_star(c)} | "
            f"{r['tokens_per_s']:,.1f}{_star(r)} | {row['speedup']:.1f}x | "
            f"{'yes' if row['tokens_agree'] else 'no, from ' + str(row['first_difference'])} |"
        )
    beams = results.get("beams")
    if beams:
        lines += [
            "",
            f"Beam search over the KV cache, N = {beams['generated']:,} generated tokens "
            "(the end token masked out, so no hypothesis ends early):",
            "",
            "| search | ms per generated token | relative to greedy |",
            "|---|---|---|",
        ]
        for row in beams["runs"]:
            name = "greedy" if row["search"] == "greedy" else f"beam, W = {row['beam_size']}"
            lines.append(
                f"| {name} | {row['per_token_ms']:.3f}{_star(row)} | "
                f"{row['relative_to_greedy']:.2f}x |"
            )
    t = results.get("target") or target(results)
    lines += ["", "## Target (issue 7)", ""]
    if t["speedup"] is None:
        lines.append(f"- KV cache vs recomputation at N = {TARGET_LENGTH:,}: not measured")
    else:
        verdict = "met" if t["met"] else "MISSED"
        lines.append(
            f"- KV cache vs full recomputation at N = {TARGET_LENGTH:,}: {t['speedup']:.1f}x "
            f"({verdict}, target >= {TARGET_SPEEDUP:.0f}x)"
        )
    return "\n".join(lines) + "\n"


def _star(summary: dict[str, Any]) -> str:
    return "*" if summary.get("clean_samples", 1) == 0 else ""


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    rows = results.get("lengths", [])
    for name, label in (("kv_cache", "KV cache"), ("recompute", "full recomputation")):
        xs = [r["generated"] for r in rows]
        left.plot(xs, [r[name]["tokens_per_s"] for r in rows], marker="o", label=label)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("generated tokens N")
    left.set_ylabel("tokens / s")
    left.set_title("greedy decoding", fontsize=9)
    beams = results.get("beams")
    if beams:
        runs = [r for r in beams["runs"] if r["search"] == "beam"]
        right.plot(
            [r["beam_size"] for r in runs],
            [r["per_token_ms"] for r in runs],
            marker="o",
            label="beam search",
        )
        greedy = [r for r in beams["runs"] if r["search"] == "greedy"]
        if greedy:
            right.axhline(greedy[0]["per_token_ms"], color="grey", ls="--", label="greedy")
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.set_xlabel("beam size W")
        right.set_ylabel("ms per generated token")
        right.set_title(f"beam search over the KV cache, N={beams['generated']}", fontsize=9)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    m = results["model"]
    fig.suptitle(
        f"LM {m['num_layers']}x{m['model_dim']}, {results['machine']['processor']}, "
        f"{results['machine']['cores']} cores",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "decoding.png", dpi=110)
    plt.close(fig)


def _save(results: dict[str, Any], out: Path, *, with_plot: bool = True) -> None:
    draw = (lambda: plot(results, out)) if with_plot else None
    save_results(out, results, markdown(results), draw)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=tuple(SETTINGS), default="quick")
    parser.add_argument(
        "--out", default=None, help="directory (default benchmarks/results/decoding/<mode>)"
    )
    parser.add_argument(
        "--lengths", default=None, help="comma-separated generated lengths (default: the mode's)"
    )
    parser.add_argument("--bucket", type=int, default=None, help="recomputation's padding step")
    parser.add_argument(
        "--recompute-kernel",
        choices=("blockwise", "reference"),
        default="blockwise",
        help="attention kernel of the recomputed forward passes",
    )
    args = parser.parse_args(argv)
    setting = SETTINGS[args.mode]
    if args.lengths:
        setting = dataclasses.replace(
            setting, lengths=tuple(int(n) for n in args.lengths.split(","))
        )
    if args.bucket:
        setting = dataclasses.replace(setting, bucket=args.bucket)
    out = Path(args.out or f"benchmarks/results/decoding/{args.mode}")
    cached, recompute, prompt = build(setting, args.recompute_kernel)
    return run(setting, cached, recompute, prompt, out=out, mode=args.mode)


if __name__ == "__main__":
    main()
