"""Scaled dot-product attention (Vaswani et al. 2017, sec. 3.2.1, eq. (1)), the reference kernel.

``softmax(Q K^T / sqrt(H) + bias) V``, multi-head (sec. 3.2.2) with grouped-query and
multi-query attention (Ainslie et al. 2023; Shazeer 2019) when K < N key/value heads serve
N query heads. Takes the same call as ``jax.nn.dot_product_attention`` and gives the same
numbers, plus segment ids, attention dropout with an explicit key, and the weights on request.

This kernel materializes the ``[B, N, T, S]`` weights: simple and the numerical reference for
every faster kernel in the zoo. :func:`dot_product_attention` is also the zoo's front door:
by default it runs each call on the fastest kernel that supports it (:mod:`zoo.kernels.
dispatch`), and ``implementation=`` forces one.
"""

from typing import Any

import jax
import jax.numpy as jnp

from zoo.kernels import _call, blockwise, dispatch
from zoo.kernels import masks as masks_lib
from zoo.kernels.softmax import masked_logits
from zoo.shapes import Array, PRNGKey

__all__ = ["dot_product_attention", "reference_core"]


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: Array | None = None,
    key_value_seq_lengths: Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_segment_ids: Array | None = None,
    key_value_segment_ids: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: PRNGKey | None = None,
    broadcast_dropout: bool = True,
    deterministic: bool = False,
    return_weights: bool = False,
    return_residual: bool = False,
    implementation: str | None = None,
    dtype: Any = None,
    precision: Any = None,
    module: Any = None,
) -> Array | tuple[Array, ...]:
    """Multi-head scaled dot-product attention.

    Shapes (alphabet in ``zoo.shapes``), with any number of leading batch dims (none, one
    ``B``, or several, as ``flax.nnx.MultiHeadAttention`` passes)::

        query  [*batch, T, N, H]      key, value  [*batch, S, K, H]      K divides N, G = N // K
        bias   broadcastable to [*batch, N, T, S] (float)
        mask   broadcastable to [*batch, N, T, S]: bool, True = attend; or any number,
               nonzero = attend (flax's float masks)
        query_seq_lengths, key_value_seq_lengths [*batch] (int): real tokens at the start
        query_segment_ids [*batch, T], key_value_segment_ids [*batch, S] (int): packing

    Args:
      query, key, value: the inputs, all of one floating dtype.
      bias: added to the scaled logits before masking (e.g. ALiBi, relative positions).
      mask: combined (AND) with every other masking option.
      scale: logit scale; ``1 / sqrt(H)`` by default (eq. (1)).
      is_causal: query ``t`` attends keys ``s <= t`` (upper-left aligned, as jax.nn).
      query_seq_lengths, key_value_seq_lengths: padding given as lengths, in ``[0, T]`` and
        ``[0, S]``.
      local_window_size: ``w`` or ``(left, right)``: keys ``t - left <= s <= t + right``.
      query_segment_ids, key_value_segment_ids: attend only within equal ids.
      dropout_rate: attention dropout on the weights (sec. 5.4 applies dropout elsewhere;
        attention dropout is the common variant), active unless ``deterministic``.
      dropout_rng: PRNG key, required when dropout is active.
      broadcast_dropout: one dropout pattern shared across batch and heads (as flax).
      deterministic: disable dropout.
      return_weights: also return the float32 weights ``[*batch, N, T, S]`` (before dropout).
      return_residual: also return the log-sum-exp of the logits ``[*batch, T, N]`` in the
        input dtype, as jax.nn does.
      implementation: which kernel runs the call (:mod:`zoo.kernels.dispatch`). ``None``:
        the fastest that supports the call on its platform (tokamax's flash kernels or
        cuDNN on GPU, tokamax on TPU, on CPU this kernel for short sequences and the
        blockwise one for long); :func:`zoo.kernels.explain` says which and why. A name
        forces one: ``"reference"`` (or ``"xla"``) this kernel, ``"blockwise"``
        :func:`zoo.kernels.blockwise_attention` (the same numbers in memory linear in T and
        S; no weights; its own dropout pattern), ``"cudnn"`` (jax.nn's cuDNN kernel),
        ``"tokamax"`` or ``"tokamax.<mosaic|triton|cudnn|xla_chunked|xla>"``; a sequence is
        tried in order. ``NotImplementedError`` names each kernel that cannot run the call
        and why.
      dtype: optional compute dtype; inputs are cast to it (``flax.nnx`` passes this).
      precision: einsum precision (``flax.nnx`` passes this).
      module: a flax module to sow the weights into (its ``nnx.Intermediate`` collection,
        ``attention_weights``), as flax's own attention function does for ``sow_weights``.

    Returns:
      ``[*batch, T, N, H]`` in the input dtype; with ``return_weights`` and/or
      ``return_residual`` a tuple ``(out, weights?, lse?)`` in that order. Where jax.nn
      differs: a query row with nothing to attend (every key masked, or a ``-inf`` bias row)
      returns zeros and zero gradients, not the mean of the values, and its log-sum-exp is
      the dtype's large negative number, never ``-inf``.
    """
    core = dispatch.dispatching_core(implementation, _CORES, residual=return_residual)
    return _call.attend(
        core,
        query,
        key,
        value,
        bias,
        mask,
        scale=scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        query_segment_ids=query_segment_ids,
        key_value_segment_ids=key_value_segment_ids,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
        broadcast_dropout=broadcast_dropout,
        deterministic=deterministic,
        return_weights=return_weights,
        return_residual=return_residual,
        dtype=dtype,
        precision=precision,
        module=module,
        forms_weights=True,
        kernel_name="dot_product_attention",
    )


def reference_core(call: _call.Call, want_weights: bool) -> tuple[Array, Array | None, Array]:
    """The kernel on a normalized call (see :mod:`zoo.kernels._call`)."""
    B, T, S, K, G, H = call.shape
    o = call.options
    acc = jnp.promote_types(call.query.dtype, jnp.float32)

    # Group the N query heads as [K, G] so each key/value head serves G query heads
    # without copying keys and values N / K times.
    query = call.query.reshape(B, T, K, G, H)
    logits = jnp.einsum(
        "BTKGH,BSKH->BKGTS", query, call.key, precision=o.precision, preferred_element_type=acc
    )
    logits = logits * jnp.asarray(o.scale, acc)
    if call.bias is not None:
        logits = logits + call.bias.astype(acc)
    positions = masks_lib.position_mask(
        jnp.arange(T, dtype=jnp.int32),
        jnp.arange(S, dtype=jnp.int32),
        is_causal=o.is_causal,
        local_window_size=o.window,
        query_lengths=call.query_lengths,
        key_lengths=call.key_lengths,
        query_segment_ids=call.query_segments,
        key_segment_ids=call.key_segments,
    )
    mask = masks_lib.combine_masks(
        call.mask, None if positions is None else positions[:, None, None]
    )
    logits = masked_logits(logits, mask)
    lse = jax.nn.logsumexp(logits, axis=-1)
    live = jnp.max(logits, axis=-1, keepdims=True) > masks_lib.MASK_VALUE
    # Multiplying (not `where`) keeps the gradient of an empty row exactly zero too.
    weights = jax.nn.softmax(logits, axis=-1) * live.astype(acc)
    lse = jnp.where(live[..., 0], lse, masks_lib.MASK_VALUE)

    kept = weights
    if o.dropout_rate > 0.0:
        shape = (1, 1, 1, T, S) if o.broadcast_dropout else weights.shape
        assert call.dropout_rng is not None
        keep = jax.random.bernoulli(call.dropout_rng, 1.0 - o.dropout_rate, shape)
        kept = weights * (keep.astype(acc) / jnp.asarray(1.0 - o.dropout_rate, acc))

    out = jnp.einsum(
        "BKGTS,BSKH->BTKGH", kept.astype(call.value.dtype), call.value, precision=o.precision
    ).reshape(B, T, K * G, H)
    lse = jnp.moveaxis(lse.reshape(B, K * G, T), 1, 2)
    return (
        out,
        weights.reshape(B, K * G, T, S) if want_weights else None,
        jax.lax.stop_gradient(lse),
    )


# The zoo's own kernels of this call, by the names dispatch knows them by.
_CORES: dict[str, _call.Core] = {"reference": reference_core, "blockwise": blockwise.blockwise_core}
