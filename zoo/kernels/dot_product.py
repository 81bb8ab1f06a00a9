"""Scaled dot-product attention (Vaswani et al. 2017, sec. 3.2.1, eq. (1)), the reference kernel.

``softmax(Q K^T / sqrt(H) + bias) V``, multi-head (sec. 3.2.2) with grouped-query and
multi-query attention (Ainslie et al. 2023; Shazeer 2019) when K < N key/value heads serve
N query heads. Takes the same call as ``jax.nn.dot_product_attention`` and gives the same
numbers, plus segment ids, attention dropout with an explicit key, and the weights on request.

This kernel materializes the ``[B, N, T, S]`` weights: simple and the numerical reference for
every faster kernel in the zoo.
"""

from typing import Any

import jax
import jax.numpy as jnp

from zoo.kernels import masks as masks_lib
from zoo.kernels.softmax import masked_softmax
from zoo.shapes import Array, PRNGKey

__all__ = ["dot_product_attention"]

_IMPLEMENTATIONS = (None, "xla", "reference", "blockwise")


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

    Shapes (alphabet in ``zoo.shapes``); the leading ``B`` may be absent on every argument::

        query  [B, T, N, H]      key, value  [B, S, K, H]      K divides N, G = N // K
        bias   broadcastable to [B, N, T, S] (float)
        mask   broadcastable to [B, N, T, S] (bool, True = attend)
        query_seq_lengths [B], key_value_seq_lengths [B] (int): real tokens at the start
        query_segment_ids [B, T], key_value_segment_ids [B, S] (int): packed sequences

    Args:
      query, key, value: the inputs, all of one floating dtype.
      bias: added to the scaled logits before masking (e.g. ALiBi, relative positions).
      mask: bool, True = attend. Combined (AND) with every other masking option.
      scale: logit scale; ``1 / sqrt(H)`` by default (eq. (1)).
      is_causal: query ``t`` attends keys ``s <= t`` (upper-left aligned, as jax.nn).
      query_seq_lengths, key_value_seq_lengths: padding given as lengths.
      local_window_size: ``w`` or ``(left, right)``: keys ``t - left <= s <= t + right``.
      query_segment_ids, key_value_segment_ids: attend only within equal ids.
      dropout_rate: attention dropout on the weights (sec. 5.4 applies dropout elsewhere;
        attention dropout is the common variant), active unless ``deterministic``.
      dropout_rng: PRNG key, required when dropout is active.
      broadcast_dropout: one dropout pattern shared across batch and heads (as flax).
      deterministic: disable dropout.
      return_weights: also return the float32 weights ``[B, N, T, S]`` (before dropout).
      return_residual: also return the float32 log-sum-exp of the logits ``[B, T, N]``.
      implementation: ``None``, ``"xla"`` or ``"reference"`` (all this kernel), or
        ``"blockwise"``: :func:`zoo.kernels.blockwise_attention`, the same numbers in memory
        linear in T and S (no ``return_weights``; its own dropout pattern).
      dtype: optional compute dtype; inputs are cast to it (``flax.nnx`` passes this).
      precision: einsum precision (``flax.nnx`` passes this).
      module: ``flax.nnx`` passes its module to sow weights; only ``None`` is supported,
        use ``return_weights=True`` to get the weights.

    Returns:
      ``[B, T, N, H]`` in the input dtype; with ``return_weights`` and/or
      ``return_residual`` a tuple ``(out, weights?, lse?)`` in that order. A query row
      with no key to attend returns zeros (and zero gradients).
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}"
        )
    if module is not None:
        raise ValueError(
            "module= (flax weight sowing) is not supported by zoo kernels; "
            "call with return_weights=True to get the attention weights"
        )
    if implementation == "blockwise":
        # Imported here because zoo.kernels.chunked builds on this module's input checks.
        from zoo.kernels.chunked import blockwise_attention

        return blockwise_attention(
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
        )
    if dtype is not None:
        query, key, value = (jnp.asarray(x, dtype) for x in (query, key, value))
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    unbatched = query.ndim == 3
    args = _check_and_batch(
        query,
        key,
        value,
        bias=bias,
        mask=mask,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        query_segment_ids=query_segment_ids,
        key_value_segment_ids=key_value_segment_ids,
    )
    window = masks_lib.normalize_window(local_window_size)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    use_dropout = dropout_rate > 0.0 and not deterministic
    if use_dropout and dropout_rng is None:
        raise ValueError("dropout_rng is required when dropout_rate > 0 and not deterministic")

    out, weights, lse = _attend(
        **args,
        scale=scale,
        is_causal=is_causal,
        local_window_size=window,
        dropout_rate=dropout_rate if use_dropout else 0.0,
        dropout_rng=dropout_rng,
        broadcast_dropout=broadcast_dropout,
        precision=precision,
    )
    if unbatched:
        out, weights, lse = out[0], weights[0], lse[0]
    extras = ([weights] if return_weights else []) + ([lse] if return_residual else [])
    return (out, *extras) if extras else out


def _attend(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None,
    mask: Array | None,
    query_seq_lengths: Array | None,
    key_value_seq_lengths: Array | None,
    query_segment_ids: Array | None,
    key_value_segment_ids: Array | None,
    *,
    scale: float | None,
    is_causal: bool,
    local_window_size: tuple[int, int] | None,
    dropout_rate: float,
    dropout_rng: PRNGKey | None,
    broadcast_dropout: bool,
    precision: Any,
) -> tuple[Array, Array, Array]:
    """Batched core on validated 4-D inputs; returns (out, weights [B,N,T,S], lse [B,T,N])."""
    B, T, N, H = query.shape
    _, S, K, _ = key.shape
    G = N // K
    scale = H**-0.5 if scale is None else scale

    # Group the N query heads as [K, G] so each key/value head serves G query heads
    # without copying keys and values N / K times.
    query = query.reshape(B, T, K, G, H)
    logits = jnp.einsum(
        "BTKGH,BSKH->BKGTS",
        query,
        key,
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    logits = logits * jnp.asarray(scale, logits.dtype)
    if bias is not None:
        logits = logits + _grouped(bias, K, G).astype(logits.dtype)

    positional = masks_lib.positional_mask(
        jnp.arange(T), jnp.arange(S), is_causal=is_causal, local_window_size=local_window_size
    )
    padding = (
        masks_lib.padding_mask(query_seq_lengths, key_value_seq_lengths, T, S)
        if query_seq_lengths is not None or key_value_seq_lengths is not None
        else None
    )
    segments = (
        masks_lib.segment_mask(query_segment_ids, key_value_segment_ids)
        if query_segment_ids is not None and key_value_segment_ids is not None
        else None
    )
    combined = masks_lib.combine_masks(
        None if mask is None else _grouped(mask, K, G),
        positional,
        None if padding is None else padding[:, :, None],
        None if segments is None else segments[:, :, None],
    )
    weights = masked_softmax(logits, combined)
    if combined is None:
        lse = jax.nn.logsumexp(logits, axis=-1)
    else:
        lse = jax.nn.logsumexp(jnp.where(combined, logits, -jnp.inf), axis=-1)

    kept = weights
    if dropout_rate > 0.0:
        assert dropout_rng is not None
        shape = (1, 1, 1, T, S) if broadcast_dropout else weights.shape
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, shape)
        kept = weights * keep.astype(weights.dtype) / (1.0 - dropout_rate)

    out = jnp.einsum(
        "BKGTS,BSKH->BTKGH", kept.astype(value.dtype), value, precision=precision
    ).reshape(B, T, N, H)
    weights = weights.reshape(B, N, T, S)
    lse = jnp.moveaxis(lse.reshape(B, N, T), 1, 2)
    return out, weights, jax.lax.stop_gradient(lse)


def _grouped(x: Array, K: int, G: int) -> Array:
    """A ``[b, n, t, s]`` bias or mask (n in {1, N}) as ``[b, k, g, t, s]`` for grouped heads."""
    x = jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)
    b, n, t, s = x.shape
    if n == 1:
        return x[:, :, None]
    return x.reshape(b, K, G, t, s)


def _check_and_batch(
    query: Array,
    key: Array,
    value: Array,
    **optional: Array | None,
) -> dict[str, Any]:
    """Validate shapes/dtypes at trace time; return every argument with a leading batch axis."""
    if query.ndim not in (3, 4):
        raise ValueError(f"query must be [B, T, N, H] or [T, N, H], got shape {query.shape}")
    batched = query.ndim == 4
    layout = "[B, S, K, H]" if batched else "[S, K, H]"
    if key.ndim != query.ndim:
        raise ValueError(f"key must be {layout} like query, got shape {key.shape}")
    if value.shape != key.shape:
        raise ValueError(f"value must have key's shape {key.shape} {layout}, got {value.shape}")
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(
            "query, key and value must share one dtype, got "
            f"{query.dtype}, {key.dtype}, {value.dtype}"
        )
    if not batched:
        query, key, value = query[None], key[None], value[None]
    B, T, N, H = query.shape
    _, S, K, Hk = key.shape
    if key.shape[0] != B:
        raise ValueError(f"key batch must equal query batch B={B}, got key shape {key.shape}")
    if Hk != H:
        raise ValueError(f"key head dim must equal query head dim H={H}, got key shape {key.shape}")
    if N % K:
        raise ValueError(
            f"key/value heads K={K} must divide query heads N={N} (query shape "
            f"{query.shape}, key shape {key.shape})"
        )

    out: dict[str, Any] = {"query": query, "key": key, "value": value}
    weights_shape = (B, N, T, S)
    for name in ("bias", "mask"):
        given = optional[name]
        if given is None:
            out[name] = None
            continue
        x = jnp.asarray(given)
        if name == "mask" and x.dtype != jnp.bool_:
            raise TypeError(f"mask must be bool (True = attend), got dtype {x.dtype}")
        if name == "bias" and not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"bias must be floating point, got dtype {x.dtype}")
        out[name] = _check_broadcast(name, x, weights_shape, batched)
    for name in ("query_seq_lengths", "key_value_seq_lengths"):
        out[name] = _check_ids(name, optional[name], (B,) if batched else (), batched, ())
    q_ids, kv_ids = optional["query_segment_ids"], optional["key_value_segment_ids"]
    if (q_ids is None) != (kv_ids is None):
        raise ValueError("query_segment_ids and key_value_segment_ids must be given together")
    out["query_segment_ids"] = _check_ids(
        "query_segment_ids", q_ids, (B, T) if batched else (T,), batched, ("T",)
    )
    out["key_value_segment_ids"] = _check_ids(
        "key_value_segment_ids", kv_ids, (B, S) if batched else (S,), batched, ("S",)
    )
    return out


def _check_broadcast(name: str, x: Array, shape: tuple[int, ...], batched: bool) -> Array:
    """Check ``x`` broadcasts to ``shape`` [B, N, T, S] without help; add the batch axis."""
    target = shape if batched else shape[1:]
    letters = "[B, N, T, S]" if batched else "[N, T, S]"
    fits = x.ndim <= len(target) and all(
        d in (1, t) for d, t in zip(x.shape[::-1], target[::-1], strict=False)
    )
    if not fits:
        raise ValueError(
            f"{name} must broadcast to {letters} = {list(target)}, got shape {x.shape}"
        )
    x = x.reshape((1,) * (len(target) - x.ndim) + x.shape)
    return x if batched else x[None]


def _check_ids(
    name: str, x: Array | None, shape: tuple[int, ...], batched: bool, letters: tuple[str, ...]
) -> Array | None:
    """Check an int array of exactly ``shape``; add the batch axis."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
    if x.shape != shape:
        expected = "[" + ", ".join((("B",) if batched else ()) + letters) + "]"
        raise ValueError(f"{name} must be {expected} = {list(shape)}, got shape {x.shape}")
    return x if batched else x[None]
