"""Multiplicative attention: Luong, Pham & Manning 2015 (arXiv:1508.04025), sec. 3.1.

The ``dot`` and ``general`` scores of eq. (8) compare the target state ``h_t`` (a query row)
with each source state ``h̄_s`` (a key row)::

    dot      score(h_t, h̄_s) = h_t^T h̄_s
    general  score(h_t, h̄_s) = h_t^T W_a h̄_s

then ``a_t = softmax_s(score)`` (eq. (7)) and the context ``c_t = sum_s a_t(s) h̄_s``. Unlike
Vaswani et al. 2017 the scores are not scaled by ``1 / sqrt(D)``. Luong's third score,
``concat`` (``v_a^T tanh(W_a [h_t; h̄_s])``), is Bahdanau's additive score: use
``zoo.kernels.additive`` with ``W_a`` split into its query and key halves.

Shapes (alphabet in ``zoo.shapes``; ``D_k``, ``D_v`` are the key and value widths, spelled
``D`` in einsum strings). Drop the leading ``B`` from every argument (and from ``mask``) for
a single example: the rank of ``keys`` decides::

    query    [B, T, D]      target states h_t
    keys     [B, S, D_k]    source states h̄_s (D_k = D for 'dot')
    values   [B, S, D_v]    what the weights average (the source states in the paper)
    weight   [D, D_k]       W_a for 'general'; None selects 'dot'
    mask     bool, broadcastable to [B, T, S] by NumPy rules; True = attend
    weights  [B, T, S] float32
"""

from typing import Literal, overload

import jax.numpy as jnp

from zoo.kernels._checks import check_dtypes as _check_dtypes
from zoo.kernels._checks import check_mask as _check_mask
from zoo.kernels._checks import check_shape as _check_shape
from zoo.kernels.softmax import masked_softmax
from zoo.shapes import Array

__all__ = ["multiplicative_attention", "multiplicative_scores"]


def multiplicative_scores(query: Array, keys: Array, *, weight: Array | None = None) -> Array:
    """Luong scores ``[B, T, S]`` (float32): ``dot`` if ``weight`` is None, else ``general``."""
    query, keys, _, weight, _, batched = _prepare(query, keys, None, weight, None)
    scores = _scores(query, keys, weight)
    return scores if batched else scores[0]


@overload
def multiplicative_attention(
    query: Array,
    keys: Array,
    values: Array,
    *,
    weight: Array | None = None,
    mask: Array | None = None,
    return_weights: Literal[False] = False,
) -> Array: ...
@overload
def multiplicative_attention(
    query: Array,
    keys: Array,
    values: Array,
    *,
    weight: Array | None = None,
    mask: Array | None = None,
    return_weights: Literal[True],
) -> tuple[Array, Array]: ...
@overload
def multiplicative_attention(
    query: Array,
    keys: Array,
    values: Array,
    *,
    weight: Array | None = None,
    mask: Array | None = None,
    return_weights: bool,
) -> Array | tuple[Array, Array]: ...
def multiplicative_attention(
    query: Array,
    keys: Array,
    values: Array,
    *,
    weight: Array | None = None,
    mask: Array | None = None,
    return_weights: bool = False,
) -> Array | tuple[Array, Array]:
    """Luong global attention: context ``[B, T, D_v]`` in the values' dtype.

    Args:
      query: ``[B, T, D]`` target states ``h_t``.
      keys: ``[B, S, D_k]`` source states ``h̄_s``.
      values: ``[B, S, D_v]``, usually the keys themselves.
      weight: ``[D, D_k]``, ``W_a`` of the ``general`` score; None for ``dot`` (needs
        ``D_k = D``).
      mask: bool broadcastable to ``[B, T, S]`` (True = attend): ``[B, 1, S]`` for source
        padding, ``[T, S]`` for a mask shared by the batch, ``[B, T, S]`` in general.
        A ``[B, S]`` mask is read as ``[T, S]``, as NumPy broadcasting would.
      return_weights: also return the float32 weights ``a_t [B, T, S]``.

    Returns:
      The context ``[B, T, D_v]``, and the weights if asked. A query row with no key to
      attend gets zero context and zero gradients.
    """
    query, keys, values_, weight, mask, batched = _prepare(query, keys, values, weight, mask)
    assert values_ is not None
    weights = masked_softmax(_scores(query, keys, weight), mask)
    context = jnp.einsum("BTS,BSD->BTD", weights.astype(values_.dtype), values_)
    if not batched:
        context, weights = context[0], weights[0]
    return (context, weights) if return_weights else context


def _scores(query: Array, keys: Array, weight: Array | None) -> Array:
    """``[B, T, S]`` float32 scores from validated, batched inputs."""
    if weight is not None:
        # h_t^T W_a first: [B, T, D_k] costs T * D * D_k, which is small when decoding (T = 1).
        query = query @ weight
    # Accumulate in float32 so bf16/fp16 scores cannot overflow.
    return jnp.einsum("BTD,BSD->BTS", query, keys, preferred_element_type=jnp.float32)


def _prepare(
    query: Array,
    keys: Array,
    values: Array | None,
    weight: Array | None,
    mask: Array | None,
) -> tuple[Array, Array, Array | None, Array | None, Array | None, bool]:
    """Check shapes and dtypes at trace time; return the arrays with a leading batch axis."""
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    if keys.ndim not in (2, 3):
        raise ValueError(f"keys must be [B, S, D_k] or [S, D_k], got shape {keys.shape}")
    batched = keys.ndim == 3
    lead = ("B",) if batched else ()
    sizes: dict[str, int] = {}
    _check_shape("keys", keys, (*lead, "S", "D_k"), sizes)
    _check_shape("query", query, (*lead, "T", "D"), sizes)
    arrays = {"query": query, "keys": keys}
    if weight is None:
        if sizes["D"] != sizes["D_k"]:
            raise ValueError(
                f"the 'dot' score (weight=None) needs keys [{', '.join((*lead, 'S', 'D_k'))}] "
                f"with D_k = D = {sizes['D']}, got keys shape {keys.shape}; "
                "pass weight [D, D_k] for the 'general' score"
            )
    else:
        weight = jnp.asarray(weight)
        _check_shape("weight", weight, ("D", "D_k"), sizes)
        arrays["weight"] = weight
    if values is not None:
        values = jnp.asarray(values)
        _check_shape("values", values, (*lead, "S", "D_v"), sizes)
        arrays["values"] = values
    _check_dtypes(query.dtype, **arrays)
    if mask is not None:
        mask = _check_mask(mask, tuple(sizes[a] for a in (*lead, "T", "S")), (*lead, "T", "S"))
    if not batched:
        query, keys = query[None], keys[None]
        values = None if values is None else values[None]
        mask = None if mask is None else mask[None]
    return query, keys, values, weight, mask, batched
