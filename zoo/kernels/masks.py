"""Boolean attention masks: True = attend.

Every builder returns an array broadcastable against the ``[B, N, T, S]`` weights: masks that
depend only on positions are ``[T, S]``; masks that depend on the example are ``[B, 1, T, S]``.
Combine any of them with :func:`combine_masks`.

The builders are thin wrappers over position predicates (``query_positions`` against
``key_positions``), so a kernel that works block by block can build exactly the same mask
for one block from that block's positions; see :func:`positional_mask`.
"""

import jax.numpy as jnp

from zoo.shapes import Array

__all__ = [
    "causal_mask",
    "combine_masks",
    "local_window_mask",
    "normalize_window",
    "padding_mask",
    "positional_mask",
    "segment_mask",
]


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
    q_real = (
        jnp.ones((1, query_length), bool)
        if query_lengths is None
        else jnp.arange(query_length)[None, :] < jnp.asarray(query_lengths)[:, None]
    )
    k_real = (
        jnp.ones((1, key_length), bool)
        if key_lengths is None
        else jnp.arange(key_length)[None, :] < jnp.asarray(key_lengths)[:, None]
    )
    return (q_real[:, None, :, None] & k_real[:, None, None, :]).astype(bool)


def segment_mask(query_segment_ids: Array, key_segment_ids: Array) -> Array:
    """``[B, 1, T, S]`` mask for packed sequences: attend only within the same segment.

    ``query_segment_ids`` is int ``[B, T]``, ``key_segment_ids`` int ``[B, S]``.
    """
    q = jnp.asarray(query_segment_ids)
    k = jnp.asarray(key_segment_ids)
    return q[:, None, :, None] == k[:, None, None, :]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given masks (None entries are skipped), broadcast together."""
    result = None
    for mask in masks:
        if mask is None:
            continue
        mask = jnp.asarray(mask, bool)
        result = mask if result is None else jnp.logical_and(result, mask)
    return result
