"""A short tour of the zoo's kernels: `make demo` runs it.

Runs the multi-head kernel with every masking option, checks it against
``jax.nn.dot_product_attention``, times both under ``jax.jit``, and draws the weights of a
causal, windowed, padded batch as heatmaps (``OUT/attention_masks.png``).
"""

import argparse
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from zoo import kernels


def _median_ms(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/kernel_demo"))
    parser.add_argument("--length", type=int, default=1024, help="sequence length to time")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    B, T, N, K, H = 2, args.length, 8, 2, 64  # 8 query heads share 2 key/value heads (GQA)
    rngs = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(rngs[0], (B, T, N, H))
    k = jax.random.normal(rngs[1], (B, T, K, H))
    v = jax.random.normal(rngs[2], (B, T, K, H))
    lengths = jnp.array([T, T // 2], jnp.int32)
    options: dict[str, Any] = dict(is_causal=True, key_value_seq_lengths=lengths)

    ours = jax.jit(lambda q, k, v: kernels.dot_product_attention(q, k, v, **options))
    theirs = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, **options))
    diff = float(jnp.abs(ours(q, k, v) - theirs(q, k, v)).max())
    print(f"GQA causal padded attention, B={B} T={T} N={N} K={K} H={H}")
    print(f"  max |zoo - jax.nn| = {diff:.2e}")
    chosen = kernels.explain(q, k, v, **options).implementation
    print(f"  zoo ({chosen + ')':<16} {_median_ms(ours, q, k, v):8.1f} ms")
    print(f"  jax.nn (xla)           {_median_ms(theirs, q, k, v):8.1f} ms")

    # The masks, drawn: first 24 positions, one head, both batch elements.
    t = 24
    _, weights = kernels.dot_product_attention(
        q[:, :t],
        k[:, :t],
        v[:, :t],
        is_causal=True,
        local_window_size=(6, 0),
        key_value_seq_lengths=jnp.array([t, 15], jnp.int32),
        return_weights=True,
    )
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), constrained_layout=True)
    for b, ax in enumerate(axes):
        ax.imshow(weights[b, 0], cmap="viridis")
        ax.set(
            title=f"example {b}: causal, window 6, length {[t, 15][b]}",
            xlabel="key position s",
            ylabel="query position t",
        )
    path = args.out / "attention_masks.png"
    fig.savefig(path, dpi=100)
    print(f"  weights heatmap -> {path}")


if __name__ == "__main__":
    main()
