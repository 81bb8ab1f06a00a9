"""Additive (concat / MLP) attention: Bahdanau, Cho & Bengio 2014 (arXiv:1409.0473).

The alignment model of eq. (6), spelled out in appendix A.1.2, scores decoder state
``s_{i-1}`` (a query row) against annotation ``h_j`` (a key row) with a one-hidden-layer MLP::

    e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j)

then ``alpha_ij = softmax_j(e_ij)`` (eq. (6)) and the context ``c_i = sum_j alpha_ij h_j``
(eq. (5)). ``U_a h_j`` does not depend on the decoder step ``i``, so the paper computes it
once per source sentence (appendix A.1.2): call :func:`project_keys` once, then
:func:`additive_attention` at every decoder step with ``T = 1``.

Shapes (alphabet in ``zoo.shapes``; ``D_q``, ``D_k``, ``D_v`` are the query, key and value
widths, all spelled ``D`` in einsum strings). Drop the leading ``B`` from every argument
(and from ``mask``) for a single example: the rank of ``projected_keys`` decides::

    query           [B, T, D_q]   decoder states s_{i-1}
    keys            [B, S, D_k]   annotations h_j
    projected_keys  [B, S, A]     U_a h_j (+ bias), from project_keys
    values          [B, S, D_v]   what the weights average (the annotations in the paper)
    w_query [D_q, A] (W_a), w_key [D_k, A] (U_a), v [A] (v_a), bias [A]
    mask            bool, broadcastable to [B, T, S] by NumPy rules; True = attend
    weights         [B, T, S] float32
"""

from typing import Literal, overload

import jax.numpy as jnp

from zoo.kernels import _call
from zoo.kernels._checks import check_dtypes as _check_dtypes
from zoo.kernels._checks import check_shape as _check_shape
from zoo.kernels._checks import prepare_additive as _prepare
from zoo.kernels.blockwise_additive import blockwise_additive_attention
from zoo.kernels.pallas_additive import pallas_additive_attention
from zoo.kernels.softmax import masked_softmax
from zoo.shapes import Array

__all__ = ["additive_attention", "additive_scores", "project_keys"]

_IMPLEMENTATIONS = (None, "reference", "blockwise", "pallas")
# Up to this many query x key pairs (a decoding step's one query over a sentence, say) the
# whole hidden layer is small and one fused XLA computation beats a kernel launch per block.
_SHORT_POSITIONS = 128 * 128
_FAST = {"blockwise": blockwise_additive_attention, "pallas": pallas_additive_attention}


def project_keys(keys: Array, w_key: Array, bias: Array | None = None) -> Array:
    """``U_a h_j (+ bias)``: ``keys [B, S, D_k]`` -> ``[B, S, A]`` in the keys' dtype.

    Bahdanau et al. 2014 have no bias here; it is offered because most reimplementations
    (and ``flax.linen.Dense``) keep one.
    """
    keys, w_key = jnp.asarray(keys), jnp.asarray(w_key)
    if keys.ndim not in (2, 3):
        raise ValueError(f"keys must be [B, S, D_k] or [S, D_k], got shape {keys.shape}")
    _check_dtypes(keys.dtype, keys=keys, w_key=w_key)
    sizes = {"D_k": keys.shape[-1]}
    _check_shape("w_key", w_key, ("D_k", "A"), sizes)
    projected = jnp.einsum("...SD,DA->...SA", keys, w_key)
    if bias is not None:
        bias = jnp.asarray(bias)
        _check_dtypes(keys.dtype, bias=bias)
        _check_shape("bias", bias, ("A",), sizes)
        projected = projected + bias
    return projected


def additive_scores(query: Array, projected_keys: Array, *, w_query: Array, v: Array) -> Array:
    """Unnormalised alignment scores ``e [B, T, S]`` (float32), eq. (6) / appendix A.1.2."""
    query, projected_keys, _, w_query, v, _, batched = _prepare(
        query, projected_keys, None, w_query, v, None
    )
    scores = _scores(query, projected_keys, w_query, v)
    return scores if batched else scores[0]


@overload
def additive_attention(
    query: Array,
    projected_keys: Array,
    values: Array,
    *,
    w_query: Array,
    v: Array,
    mask: Array | None = None,
    return_weights: Literal[False] = False,
    implementation: str | None = None,
) -> Array: ...
@overload
def additive_attention(
    query: Array,
    projected_keys: Array,
    values: Array,
    *,
    w_query: Array,
    v: Array,
    mask: Array | None = None,
    return_weights: Literal[True],
    implementation: str | None = None,
) -> tuple[Array, Array]: ...
@overload
def additive_attention(
    query: Array,
    projected_keys: Array,
    values: Array,
    *,
    w_query: Array,
    v: Array,
    mask: Array | None = None,
    return_weights: bool,
    implementation: str | None = None,
) -> Array | tuple[Array, Array]: ...
def additive_attention(
    query: Array,
    projected_keys: Array,
    values: Array,
    *,
    w_query: Array,
    v: Array,
    mask: Array | None = None,
    return_weights: bool = False,
    implementation: str | None = None,
) -> Array | tuple[Array, Array]:
    """Bahdanau attention: context ``[B, T, D_v]`` in the values' dtype.

    Args:
      query: ``[B, T, D_q]`` decoder states ``s_{i-1}``; ``T = 1`` for one decoding step.
      projected_keys: ``[B, S, A]`` from :func:`project_keys`, computed once per source.
      values: ``[B, S, D_v]``, usually the keys (annotations) themselves.
      w_query: ``[D_q, A]``, ``W_a``.
      v: ``[A]``, ``v_a``.
      mask: bool broadcastable to ``[B, T, S]`` (True = attend): ``[B, 1, S]`` for source
        padding, ``[T, S]`` for a mask shared by the batch, ``[B, T, S]`` in general.
        A ``[B, S]`` mask is read as ``[T, S]``, as NumPy broadcasting would.
      return_weights: also return the float32 weights ``alpha [B, T, S]``.
      implementation: ``"reference"`` (this kernel: the whole ``[B, T, S, A]`` hidden
        layer at once), ``"blockwise"`` (:func:`zoo.kernels.blockwise_additive_attention`)
        or ``"pallas"`` (:func:`zoo.kernels.pallas_additive.pallas_additive_attention`,
        interpreted on CPU); the last two never form that tensor and give no weights.
        ``None``: the Pallas kernel on GPU and TPU for more than 128 x 128 query x key
        pairs, else (and whenever the weights are asked for) the reference.

    Returns:
      The context ``[B, T, D_v]`` (eq. (5)), and the weights if asked. A query row with no
      key to attend gets zero context and zero gradients.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}"
        )
    if implementation is None:
        query = jnp.asarray(query)
        short = query.shape[-2] * jnp.shape(projected_keys)[-2] <= _SHORT_POSITIONS
        on_cpu = _call.platform_of(query) == "cpu"
        implementation = "reference" if on_cpu or short or return_weights else "pallas"
    if implementation != "reference":
        if return_weights:
            raise ValueError(
                f"implementation={implementation!r} cannot return_weights: it never forms "
                "the [B, T, S] weights; use implementation='reference' for them"
            )
        kernel = _FAST[implementation]
        return kernel(query, projected_keys, values, w_query=w_query, v=v, mask=mask)
    query, projected_keys, values_, w_query, v, mask, batched = _prepare(
        query, projected_keys, values, w_query, v, mask
    )
    assert values_ is not None
    weights = masked_softmax(_scores(query, projected_keys, w_query, v), mask)
    context = jnp.einsum("BTS,BSD->BTD", weights.astype(values_.dtype), values_)
    if not batched:
        context, weights = context[0], weights[0]
    return (context, weights) if return_weights else context


def _scores(query: Array, projected_keys: Array, w_query: Array, v: Array) -> Array:
    """``e [B, T, S]`` float32 from validated, batched inputs."""
    projected_query = jnp.einsum("BTD,DA->BTA", query, w_query)
    # Appendix A.1.2: W_a s_{i-1} + U_a h_j for every (i, j) pair; B*T*S*A is the price of
    # additive attention, and why decoding runs it with T = 1.
    hidden = jnp.tanh(projected_query[:, :, None, :] + projected_keys[:, None, :, :])
    # Accumulate the v_a contraction in float32 so bf16/fp16 scores cannot overflow.
    return jnp.einsum("BTSA,A->BTS", hidden, v, preferred_element_type=jnp.float32)
