"""Boolean attention masks: True = attend.

Every builder returns an array broadcastable against the ``[B, N, T, S]`` weights: masks that
depend only on positions are ``[T, S]``; masks that depend on the example are ``[B, 1, T, S]``.
Combine any of them with :func:`combine_masks`.

Every kernel builds its mask from the same predicates through :func:`position_mask`: the
reference kernel once for all ``T x S`` pairs, the blockwise and ring kernels once per block
from that block's positions, so all of them mask exactly the same entries.

Masked logits are replaced by :data:`MASK_VALUE`, a large *finite* negative number, never
``-inf``: no ``-inf - -inf`` NaN can appear and ``jax.debug_infs`` stays quiet.
"""

import jax.numpy as jnp
import numpy as np

from zoo.shapes import Array

__all__ = [
    "MASK_VALUE",
    "causal_mask",
    "combine_masks",
    "local_window_mask",
    "mask_value",
    "normalize_window",
    "padding_mask",
    "position_mask",
    "positional_mask",
    "segment_mask",
]

# Finite stand-in for -inf in float32 logits: far below any real logit, far above float32's
# lowest value, so that adding a bias of either sign to it cannot overflow.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def mask_value(dtype: object) -> float:
    """The large finite negative number of ``dtype``, capped at float32's (as jax.nn's)."""
    return max(MASK_VALUE, -0.7 * float(jnp.finfo(dtype).max))


def normalize_window(local_window_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``w`` -> ``(w, w)``; ``(left, right)`` is kept. Raises on negative sizes."""
    if local_window_size is None:
        return None
    if isinstance(local_window_size, int):
        window = (local_window_size, local_window_size)
    else:
        window = tuple(local_window_size)  # type: ignore[assignment]
        if len(window) != 2:
            raise ValueError(
                "local_window_size must be an int or a (left, right) pair, "
                f"got {local_window_size!r}"
            )
    if window[0] < 0 or window[1] < 0:
        raise ValueError(f"local_window_size must be non-negative, got {local_window_size!r}")
    return (int(window[0]), int(window[1]))


def positional_mask(
    query_positions: Array,
    key_positions: Array,
    *,
    is_causal: bool = False,
    local_window_size: tuple[int, int] | None = None,
) -> Array | None:
    """The position-only part of a mask, ``[T, S]``, or None if nothing is masked.

    ``query_positions`` is int ``[T]``, ``key_positions`` int ``[S]``. Causal means key
    position <= query position (the upper-left-aligned triangle, as in
    ``jax.nn.dot_product_attention``); a ``(left, right)`` window keeps keys with
    ``q - left <= k <= q + right``.
    """
    q = query_positions[:, None]
    k = key_positions[None, :]
    mask = None
    if is_causal:
        mask = k <= q
    if local_window_size is not None:
        left, right = local_window_size
        window = (k >= q - left) & (k <= q + right)
        mask = window if mask is None else mask & window
    return mask


def position_mask(
    query_positions: Array,
    key_positions: Array,
    *,
    is_causal: bool = False,
    local_window_size: tuple[int, int] | None = None,
    query_lengths: Array | None = None,
    key_lengths: Array | None = None,
    query_segment_ids: Array | None = None,
    key_segment_ids: Array | None = None,
    key_limit: int | None = None,
) -> Array | None:
    """Every mask that positions decide, for queries at ``[t]`` and keys at ``[s]``: ``[b, t, s]``.

    ``b`` is ``B`` when lengths or segment ids are given, else 1. Lengths are int ``[B]``;
    segment ids are the block's own, int ``[B, t]`` and ``[B, s]``. Keys at ``key_limit`` or
    beyond are padding a kernel added. None when nothing is masked.
    """
    masks = []
    positional = positional_mask(
        query_positions, key_positions, is_causal=is_causal, local_window_size=local_window_size
    )
    if positional is not None:
        masks.append(positional[None])
    if key_limit is not None:
        masks.append((key_positions < key_limit)[None, None, :])
    if key_lengths is not None:
        masks.append(key_positions[None, None, :] < key_lengths[:, None, None])
    if query_lengths is not None:
        masks.append(query_positions[None, :, None] < query_lengths[:, None, None])
    if query_segment_ids is not None and key_segment_ids is not None:
        masks.append(query_segment_ids[:, :, None] == key_segment_ids[:, None, :])
    return combine_masks(*masks)


def causal_mask(query_length: int, key_length: int | None = None) -> Array:
    """``[T, S]`` lower-triangular mask: query ``t`` attends keys ``s <= t``."""
    key_length = query_length if key_length is None else key_length
    mask = positional_mask(jnp.arange(query_length), jnp.arange(key_length), is_causal=True)
    assert mask is not None
    return mask


def local_window_mask(
    query_length: int, key_length: int, local_window_size: int | tuple[int, int]
) -> Array:
    """``[T, S]`` band mask: query ``t`` attends keys ``t - left <= s <= t + right``."""
    mask = positional_mask(
        jnp.arange(query_length),
        jnp.arange(key_length),
        local_window_size=normalize_window(local_window_size),
    )
    assert mask is not None
    return mask


def padding_mask(
    query_lengths: Array | None,
    key_lengths: Array | None,
    query_length: int,
    key_length: int,
) -> Array:
    """``[B, 1, T, S]`` mask of real (non-padding) query and key positions.

    ``query_lengths`` and ``key_lengths`` are int ``[B]`` counts of real tokens at the
    start of each sequence; either may be None (that side is all real).
    """
    if query_lengths is None and key_lengths is None:
        raise ValueError("padding_mask needs query_lengths or key_lengths")
    mask = position_mask(
        jnp.arange(query_length),
        jnp.arange(key_length),
        query_lengths=None if query_lengths is None else jnp.asarray(query_lengths),
        key_lengths=None if key_lengths is None else jnp.asarray(key_lengths),
    )
    assert mask is not None
    return mask[:, None]


def segment_mask(query_segment_ids: Array, key_segment_ids: Array) -> Array:
    """``[B, 1, T, S]`` mask for packed sequences: attend only within the same segment.

    ``query_segment_ids`` is int ``[B, T]``, ``key_segment_ids`` int ``[B, S]``.
    """
    q = jnp.asarray(query_segment_ids)
    k = jnp.asarray(key_segment_ids)
    return q[:, None, :, None] == k[:, None, None, :]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given masks (None entries are skipped), broadcast together.

    Masks of lower rank get leading axes of size 1 first (NumPy's rule, spelled out so that
    it also holds under ``jax.numpy_rank_promotion("raise")``).
    """
    given = [jnp.asarray(m, bool) for m in masks if m is not None]
    if not given:
        return None
    rank = max(m.ndim for m in given)
    result = None
    for mask in given:
        mask = mask.reshape((1,) * (rank - mask.ndim) + mask.shape)
        result = mask if result is None else jnp.logical_and(result, mask)
    return result
