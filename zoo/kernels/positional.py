"""Position information for attention: sinusoidal, rotary (RoPE) and ALiBi.

* :func:`sinusoidal_positions` — Vaswani et al. 2017 (arXiv:1706.03762), sec. 3.5: a fixed
  encoding added to the token embeddings.
* :func:`apply_rotary` — Su et al. 2021, RoFormer (arXiv:2104.09864): rotate queries and
  keys so that their dot product depends on positions only through ``m - n``.
* :func:`alibi_slopes`, :func:`alibi_bias` — Press et al. 2022, ALiBi (arXiv:2108.12409),
  sec. 3: a per-head linear distance penalty added to the attention logits.

A learned absolute embedding is just a parameter table, so it lives with the modules.
Angles are computed in float32 whatever the input dtype.
"""

import math

import jax.numpy as jnp
import numpy as np

from zoo.shapes import Array

__all__ = ["alibi_bias", "alibi_slopes", "apply_rotary", "sinusoidal_positions"]


def sinusoidal_positions(positions: Array, dim: int, *, base: float = 10000.0) -> Array:
    """Sinusoidal encodings of ``positions`` (int ``[T]`` or ``[B, T]``): float32 ``[..., D]``.

    Vaswani et al. 2017, sec. 3.5, with the paper's interleaving (not the concatenated
    halves of tensor2tensor)::

        PE[pos, 2i]     = sin(pos / base^(2i / D))
        PE[pos, 2i + 1] = cos(pos / base^(2i / D))

    ``dim`` is ``D`` and must be even.
    """
    positions = _check_positions(positions)
    _check_even("dim", dim, "D")
    angles = positions.astype(jnp.float32)[..., None] * _inverse_frequencies(dim, base)
    # Channel 2i holds sin and 2i + 1 holds cos of the same frequency, as in the paper.
    interleaved = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return interleaved.reshape(*positions.shape, dim)


def apply_rotary(x: Array, positions: Array, *, base: float = 10000.0) -> Array:
    """Rotary position embedding of queries or keys; same shape and dtype as ``x``.

    ``x`` is ``[B, T, N, H]`` (or keys ``[B, S, K, H]``; or unbatched ``[T, N, H]``) with
    ``H`` even; ``positions`` is int ``[B, T]`` or ``[T]`` (shared by the batch).

    RoFormer, sec. 3.4.2, eq. (34), computes ``R_m x = x * cos(m theta) + x' * sin(m theta)``
    with ``theta_i = base^(-2i / H)`` (sec. 3.2.2). The paper rotates adjacent channel pairs
    ``(x_2i, x_2i+1)``; we use the rotate-half convention of GPT-NeoX and LLaMA, which pairs
    channel ``i`` with ``i + H/2``: ``x' = concat(-x[H/2:], x[:H/2])``. The two differ only
    by a fixed permutation of the ``H`` channels, which the learned query/key projections
    absorb, so ``<R_m q, R_n k>`` still depends only on ``m - n``; checkpoints trained with
    one convention need the permutation to load into the other.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point, got dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise ValueError(f"x must be [B, T, N, H] or [T, N, H], got shape {x.shape}")
    H = x.shape[-1]
    _check_even("the head dim of x", H, "H")
    positions = _check_positions(positions)
    T = x.shape[-3]
    allowed = [(T,)] + ([(x.shape[0], T)] if x.ndim == 4 else [])
    if positions.shape not in allowed:
        expected = " or ".join(
            f"[{letters}] = {list(shape)}"
            for letters, shape in zip(("T", "B, T"), allowed, strict=False)
        )
        raise ValueError(f"positions must be {expected} for x {x.shape}, got {positions.shape}")

    angles = positions.astype(jnp.float32)[..., None, None] * _inverse_frequencies(H, base)
    cos, sin = jnp.cos(angles), jnp.sin(angles)  # [B, T, 1, H/2] or [T, 1, H/2]
    compute = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    first, second = compute[..., : H // 2], compute[..., H // 2 :]
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int) -> Array:
    """ALiBi head slopes ``m`` (float32 ``[N]``), Press et al. 2022, sec. 3.

    For ``N`` a power of two, the geometric sequence ``2^(-8/N), 2^(-16/N), ..., 2^-8``
    (``1/2, 1/4, ..., 1/256`` for 8 heads). Otherwise, as in the paper's reference code
    (``get_slopes`` in ofirpress/attention_with_linear_biases): the slopes of the largest
    power of two ``P < N``, then every other slope of ``2P`` heads, up to ``N`` in all.
    """
    _check_positive("num_heads", num_heads)
    return jnp.asarray(_slopes(int(num_heads)), jnp.float32)


def alibi_bias(
    num_heads: int, query_length: int, key_length: int, *, query_offset: int | Array = 0
) -> Array:
    """ALiBi bias ``[1, N, T, S]`` (float32), to add to the logits (``bias=`` of a kernel).

    Query ``t`` sits at position ``i = query_offset + t`` (e.g. the cache length while
    decoding), key ``s`` at ``j = s``; the bias is ``-m_n * |i - j|``. For keys at or
    before the query this is the paper's ``-m (i - j)`` (sec. 3, fig. 3); ALiBi is defined
    for causal models, which mask later keys, so their value only matters for non-causal
    use, where we take the symmetric ``-m |i - j|`` rather than rewarding future keys.
    ``query_offset`` may be a traced int scalar.
    """
    _check_positive("query_length", query_length)
    _check_positive("key_length", key_length)
    query_offset = jnp.asarray(query_offset)
    if query_offset.ndim != 0 or not jnp.issubdtype(query_offset.dtype, jnp.integer):
        raise TypeError(
            f"query_offset must be an int scalar, got shape {query_offset.shape} "
            f"dtype {query_offset.dtype}"
        )
    query_positions = jnp.arange(query_length) + query_offset
    distance = jnp.abs(query_positions[:, None] - jnp.arange(key_length)[None, :])  # [T, S]
    slopes = alibi_slopes(num_heads)
    return (slopes[:, None, None] * (-distance).astype(jnp.float32))[None]


def _slopes(n: int) -> list[float]:
    if n & (n - 1) == 0:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return _slopes(closest) + _slopes(2 * closest)[0::2][: n - closest]


def _inverse_frequencies(dim: int, base: float) -> Array:
    """``base^(-2i / dim)`` for ``i < dim / 2``, float32, computed in float64 on the host."""
    return jnp.asarray(np.power(float(base), -np.arange(0, dim, 2) / dim), jnp.float32)


def _check_positions(positions: Array) -> Array:
    positions = jnp.asarray(positions)
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise TypeError(f"positions must be an integer array, got dtype {positions.dtype}")
    if positions.ndim not in (1, 2):
        raise ValueError(f"positions must be [T] or [B, T], got shape {positions.shape}")
    return positions


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")


def _check_even(name: str, value: int, letter: str) -> None:
    _check_positive(name, value)
    if value % 2:
        raise ValueError(f"{name} ({letter}) must be even, got {value}")
