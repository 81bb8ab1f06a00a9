"""Batch- and head-parallel attention over the devices of a ``jax.sharding.Mesh``.

Exact (the same numbers as the single-device kernel, to float32 rounding) and written with
``jax.shard_map`` so the same code runs on emulated CPU devices, GPUs, TPUs and across hosts:

Attention is independent per example
  and per head, so each device runs any zoo kernel on its slice of ``B`` and ``N`` with no
  communication at all (the usual data- and tensor-parallel layout of Shoeybi et al. 2019,
  Megatron-LM, sec. 3).

Sequence-parallel attention, which does communicate, is :func:`zoo.kernels.ring_attention`
(:mod:`zoo.kernels.ring`).

Shapes follow ``zoo.shapes``: query ``[B, T, N, H]``, key and value ``[B, S, K, H]``.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P

from zoo.kernels import _call, _mesh
from zoo.kernels.dot_product import dot_product_attention
from zoo.shapes import Array

__all__ = ["sharded_attention"]

# Keyword arguments of the dot-product call that are per-example arrays, split with the batch.
_PER_EXAMPLE = (
    "query_seq_lengths",
    "key_value_seq_lengths",
    "query_segment_ids",
    "key_value_segment_ids",
)


def sharded_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    *,
    mesh: Mesh | AbstractMesh,
    batch_axis: str | None = "data",
    head_axis: str | None = "model",
    attention_fn: Callable[..., Any] = dot_product_attention,
    **kwargs: Any,
) -> Array | tuple[Array, ...]:
    """Any zoo attention kernel, run batch- and head-parallel across ``mesh``.

    Shapes (alphabet in ``zoo.shapes``)::

        query  [B, T, N, H]      key, value  [B, S, K, H]
        bias, mask             broadcastable to [B, N, T, S]
        *_seq_lengths [B]      query_segment_ids [B, T], key_value_segment_ids [B, S]

    ``B`` is split over the devices of ``batch_axis`` and the heads over ``head_axis``; each
    device calls ``attention_fn`` on its ``[B / db, T, N / dh, H]`` slice, and the outputs come
    back sharded the same way (``NamedSharding(mesh, P(batch_axis, None, head_axis, None))``).
    No communication is needed: examples and heads do not interact.

    Grouped-query heads stay with their key/value head: query head ``n`` reads key/value head
    ``n // G``, and contiguous blocks of ``N / dh`` query heads line up with blocks of
    ``K / dh`` key/value heads when ``dh`` divides ``K``. When instead ``K`` divides ``dh``
    (e.g. multi-query attention, ``K = 1``), each key/value head is repeated ``dh / K`` times
    first so that every device holds the one key/value head its query heads read.

    Args:
      query, key, value, bias, mask: as ``zoo.kernels.dot_product_attention``.
      mesh: the devices, a ``jax.sharding.Mesh`` (an ``AbstractMesh`` inside ``jit``).
      batch_axis: mesh axis to split ``B`` over, or None to replicate over batch.
      head_axis: mesh axis to split the heads over, or None to replicate over heads.
      attention_fn: a kernel with the ``dot_product_attention`` call (any zoo kernel, or
        ``jax.nn.dot_product_attention``).
      **kwargs: passed to ``attention_fn``. The per-example arrays (``*_seq_lengths``,
        ``*_segment_ids``) are split with the batch; a ``dropout_rng`` is folded with the
        device's index so each device draws its own pattern (so dropout is not bit-equal to
        a single-device call, and ``broadcast_dropout`` shares a pattern within a device
        only). ``return_weights`` / ``return_residual`` outputs come back sharded too.

    Returns:
      What ``attention_fn`` returns: ``[B, T, N, H]``, plus weights ``[B, N, T, S]`` and/or
      log-sum-exp ``[B, T, N]`` when asked.
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    if query.ndim != 4:
        raise ValueError(
            f"sharded_attention needs batched inputs: query must be [B, T, N, H], "
            f"got shape {query.shape}"
        )
    _call.check_qkv(query, key, value)
    _mesh.check_axes(mesh, batch_axis=batch_axis, head_axis=head_axis)
    B, _, N, _ = query.shape
    _mesh.check_divides(B, "batch B", mesh, batch_axis, "batch_axis")
    repeats = _mesh.kv_repeats(key.shape[2], N, mesh, head_axis)

    qkv = P(batch_axis, None, head_axis, None)
    arrays: dict[str, Any] = {"query": query, "key": key, "value": value}
    specs: dict[str, Any] = {"query": qkv, "key": qkv, "value": qkv}
    for name, x in (("bias", bias), ("mask", mask)):
        if x is not None:
            x = jnp.asarray(x)
            x = x.reshape((1,) * (4 - x.ndim) + x.shape)
            arrays[name] = x
            # A broadcast (size-1) axis is replicated; a full one is split like the heads.
            specs[name] = P(
                batch_axis if x.shape[0] != 1 else None,
                head_axis if x.shape[1] != 1 else None,
            )
    static = dict(kwargs)
    for name in _PER_EXAMPLE:
        if static.get(name) is not None:
            arrays[name] = jnp.asarray(static.pop(name))
            specs[name] = P(batch_axis)
    rng = static.pop("dropout_rng", None)
    if rng is not None:
        arrays["dropout_rng"] = rng
        specs["dropout_rng"] = P()
    axes = tuple(a for a in (batch_axis, head_axis) if a is not None)

    def repeat_kv_heads(arrays: dict[str, Any]) -> dict[str, Any]:
        arrays = dict(arrays)
        for name in ("key", "value"):
            arrays[name] = jnp.repeat(arrays[name], repeats, axis=2)
        return arrays

    arrays = _mesh.arrange(repeat_kv_heads, mesh, specs, arrays)

    out_specs: list[Any] = [qkv]
    if static.get("return_weights"):
        out_specs.append(P(batch_axis, head_axis, None, None))
    if static.get("return_residual"):
        out_specs.append(P(batch_axis, None, head_axis))

    def per_device(arrays: dict[str, Any]) -> Any:
        arrays = dict(arrays)
        if "dropout_rng" in arrays and axes:
            arrays["dropout_rng"] = jax.random.fold_in(arrays["dropout_rng"], lax.axis_index(axes))
        result = attention_fn(**arrays, **static)
        return tuple(result) if isinstance(result, tuple | list) else (result,)

    # check_vma=False: the kernel is opaque here and may carry fresh constants through a
    # scan or cond (which would need `lax.pcast` under the check); it runs no collective,
    # so there is nothing for the check to protect.
    outs = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(specs,),
        out_specs=tuple(out_specs),
        check_vma=False,
    )(arrays)
    return outs if len(outs) > 1 else outs[0]
