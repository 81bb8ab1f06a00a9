"""Attention spread over the devices of a ``jax.sharding.Mesh``.

Two ways to split one attention call, both exact (the same numbers as the single-device
``dot_product_attention``, to float32 rounding) and both written with ``jax.shard_map`` so the
same code runs on emulated CPU devices, GPUs, TPUs and across hosts:

* :func:`sharded_attention`, batch- and head-parallel. Attention is independent per example
  and per head, so each device runs any zoo kernel on its slice of ``B`` and ``N`` with no
  communication at all (the usual data- and tensor-parallel layout of Shoeybi et al. 2019,
  Megatron-LM, sec. 3).
* :func:`ring_attention`, sequence-parallel (Liu, Zaharia & Abbeel 2023, "Ring Attention with
  Blockwise Transformers", arXiv:2310.01889). Each device holds ``T / P`` queries and
  ``S / P`` keys and values; the key/value blocks travel around a ring of ``P`` devices with
  ``lax.ppermute``, and each device folds every visiting block into its queries' output with
  an online softmax (Milakov & Gimelshein 2018; Rabe & Staats 2021). No device ever holds
  more than two key/value blocks or a score matrix larger than ``T/P x S/P``.

Shapes follow ``zoo.shapes``: query ``[B, T, N, H]``, key and value ``[B, S, K, H]``.

Sequence layouts for ring attention (``layout=``): which tokens device ``p`` of ``P`` holds.

* ``"contiguous"``: tokens ``[p T/P, (p + 1) T/P)``. Under a causal mask device ``p`` has
  ``p + 1`` blocks of work (it skips the blocks from later devices) and device ``P - 1`` has
  ``P``, so the ring runs at the speed of the busiest device.
* ``"zigzag"``: the sequence cut into ``2P`` chunks; device ``p`` holds chunks ``p`` and
  ``2P - 1 - p``, an early and a late one. Under a causal mask, of the four (query chunk,
  key chunk) pairs of every block from another device exactly two are fully masked and
  skipped (one of the four on its own block), so every device computes ``2P + 1`` of its
  ``4P`` pairs: balanced, and about half the non-causal work. This is the load-balancing
  layout of Llama 3's context parallelism (Dubey et al. 2024, arXiv:2407.21783) and of the
  open "zigzag ring attention" implementations.
* ``"striped"``: token ``i`` on device ``i mod P`` (Brandon et al. 2023, "Striped Attention",
  arXiv:2311.09431). Balanced too, but no chunk pair is ever fully masked, so this kernel,
  which skips whole chunks only, does the full non-causal amount of work; offered for data
  already laid out this way.

The layouts are permutations of the sequence axis, given by :func:`ring_permutation`.
``ring_attention`` applies it and its inverse by itself (``permute=True``, which reshuffles
tokens across devices on every call); a model can instead permute tokens once after the
embedding and keep them permuted through every layer (``permute=False``: position-wise
layers do not care, and ``ring_attention`` builds its masks from the true positions).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, auto_axes
from jax.sharding import PartitionSpec as P

from zoo.kernels import masks as masks_lib
from zoo.kernels.dot_product import _check_and_batch, dot_product_attention
from zoo.kernels.softmax import MASK_VALUE
from zoo.shapes import Array, PRNGKey

__all__ = ["ring_attention", "ring_permutation", "sharded_attention"]

Layout = Literal["contiguous", "zigzag", "striped"]
_LAYOUTS = ("contiguous", "zigzag", "striped")
# Chunks per device that the causal skip works on: zigzag's two halves are where whole
# chunk pairs fall entirely above the diagonal.
_CHUNKS = {"contiguous": 1, "zigzag": 2, "striped": 1}

# Keyword arguments of the dot-product call that are per-example arrays, split with the batch.
_PER_EXAMPLE = (
    "query_seq_lengths",
    "key_value_seq_lengths",
    "query_segment_ids",
    "key_value_segment_ids",
)


# --------------------------------------------------------------------------------------------
# Batch- and head-parallel attention.


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
    _check_and_batch(
        query, key, value, bias=bias, mask=mask, **{n: kwargs.get(n) for n in _PER_EXAMPLE}
    )
    _check_axes(mesh, batch_axis=batch_axis, head_axis=head_axis)
    B, _, N, _ = query.shape
    _check_divides(B, "batch B", mesh, batch_axis, "batch_axis")
    repeats = _kv_repeats(key.shape[2], N, mesh, head_axis)

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

    arrays = _arrange(repeat_kv_heads, mesh, specs, arrays)

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


# --------------------------------------------------------------------------------------------
# Ring attention.


def ring_permutation(length: int, num_shards: int, layout: Layout) -> np.ndarray:
    """The order in which ``layout`` stores a sequence of ``length`` over ``num_shards``.

    Returns int ``[length]``: entry ``i`` is the natural position of the token at slot ``i``;
    device ``p`` holds slots ``[p length / P, (p + 1) length / P)``. Put a natural-order
    array in layout order with ``x[:, perm]``, back with ``x[:, np.argsort(perm)]``.

    ``"contiguous"`` is the identity; ``"zigzag"`` gives device ``p`` chunks ``p`` and
    ``2P - 1 - p`` of ``2P``; ``"striped"`` gives device ``p`` tokens ``p, p + P, ...``.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    multiple = num_shards * _CHUNKS[layout]
    if length % multiple:
        raise ValueError(
            f"sequence length {length} must be a multiple of {multiple} for layout "
            f"{layout!r} over {num_shards} devices; pad it (and mask the padding with "
            f"*_seq_lengths)"
        )
    positions = np.arange(length)
    if layout == "contiguous":
        return positions
    if layout == "striped":
        return positions.reshape(length // num_shards, num_shards).T.reshape(-1)
    chunks = positions.reshape(2 * num_shards, -1)
    order = [c for p in range(num_shards) for c in (p, 2 * num_shards - 1 - p)]
    return chunks[order].reshape(-1)


def ring_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    *,
    mesh: Mesh | AbstractMesh,
    axis_name: str,
    batch_axis: str | None = None,
    head_axis: str | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    query_seq_lengths: Array | None = None,
    key_value_seq_lengths: Array | None = None,
    query_segment_ids: Array | None = None,
    key_value_segment_ids: Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    layout: Layout = "contiguous",
    permute: bool = True,
    precision: Any = None,
    dropout_rate: float = 0.0,
    dropout_rng: PRNGKey | None = None,
    deterministic: bool = True,
    return_weights: bool = False,
) -> Array:
    """Sequence-parallel attention around a ring of devices (Liu et al. 2023, arXiv:2310.01889).

    Shapes (alphabet in ``zoo.shapes``); the leading ``B`` may be absent::

        query  [B, T, N, H]      key, value  [B, S, K, H]      K divides N
        query_seq_lengths [B], key_value_seq_lengths [B] (int)
        query_segment_ids [B, T], key_value_segment_ids [B, S] (int)

    ``T`` and ``S`` are split over the ``P`` devices of mesh axis ``axis_name``; each device
    computes its queries against the ``P`` key/value blocks as they visit it, the transfer of
    the next block overlapping the computation on the current one. Optionally ``B`` is split
    over ``batch_axis`` and heads over ``head_axis`` as well (see :func:`sharded_attention`
    for how grouped heads are kept together).

    Masking is what can be computed from positions, so it costs no ``T x S`` memory:
    ``is_causal``, ``local_window_size``, padding lengths and segment ids, with exactly the
    meaning they have in ``zoo.kernels.dot_product_attention`` (positions are the natural,
    un-permuted ones). A chunk of queries whose mask against a visiting chunk of keys is
    all False is skipped, not computed and discarded.

    Gradients come from a custom VJP that runs a second ring, as Liu et al. do: key and
    value blocks travel again, now with their gradient accumulators, and after ``P`` hops
    each accumulator is back home. Memory stays at a few blocks per device.

    It also takes the ``dot_product_attention`` arguments that ``zoo.nn.MultiHeadAttention``
    passes its kernel (``bias``, ``mask``, dropout, ``return_weights``), so with its placement
    bound it is a model's kernel as it stands: ``TransformerLM(config,
    kernel=functools.partial(ring_attention, mesh=mesh, axis_name="seq"), rngs=...)``. Of
    those it accepts the trivial values only (None, dropout off, False); any other would
    need ``T x S`` memory and raises a ``ValueError`` naming the argument.

    Args:
      query, key, value: float, one dtype. ``T`` and ``S`` must be multiples of ``P`` (of
        ``2P`` for ``layout="zigzag"``).
      bias, mask: must be None: either is ``[B, N, T, S]``-sized, the ``T x S`` memory the
        ring exists to avoid. Mask with the positional options below instead.
      mesh: the devices; ``axis_name`` must be one of its axes.
      axis_name: mesh axis the sequence is split over; the ring runs along it.
      batch_axis, head_axis: optional further mesh axes to split ``B`` and the heads over.
      is_causal: query ``t`` attends keys ``s <= t`` (upper-left aligned).
      scale: logit scale, ``1 / sqrt(H)`` by default (Vaswani et al. 2017, eq. (1)).
      query_seq_lengths, key_value_seq_lengths: real tokens at the start of each sequence.
      query_segment_ids, key_value_segment_ids: attend only within equal ids (packing).
      local_window_size: ``w`` or ``(left, right)``: keys ``t - left <= s <= t + right``.
      layout: ``"contiguous"``, ``"zigzag"`` (balanced causal work) or ``"striped"``; see the
        module docstring.
      permute: if True, inputs and output are in natural order and are permuted to and from
        ``layout`` here; if False, query, key, value and segment ids are already in layout
        order (``x[:, ring_permutation(T, P, layout)]``) and the output is returned in it.
      precision: einsum precision (e.g. ``"highest"`` for exact float32 on TPU).
      dropout_rate, dropout_rng, deterministic: there is no attention dropout, so dropout
        must be off: ``dropout_rate=0`` or ``deterministic=True`` (the default here, unlike
        ``dot_product_attention``'s); ``dropout_rng`` is then ignored.
      return_weights: must be False: the ``[B, N, T, S]`` weights are never formed.

    Returns:
      ``[B, T, N, H]`` in the input dtype. A query with no key to attend gets zeros (and
      zero gradients), as in ``dot_product_attention``.
    """
    _refuse_dense(bias, mask, dropout_rate, deterministic, return_weights)
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    unbatched = query.ndim == 3
    args = _check_and_batch(
        query,
        key,
        value,
        bias=None,
        mask=None,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        query_segment_ids=query_segment_ids,
        key_value_segment_ids=key_value_segment_ids,
    )
    query, key, value = args["query"], args["key"], args["value"]
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    _check_axes(mesh, axis_name=axis_name, batch_axis=batch_axis, head_axis=head_axis)
    B, T, N, H = query.shape
    S = key.shape[1]
    ring = mesh.shape[axis_name]
    chunks = _CHUNKS[layout]
    for letter, length in (("query length T", T), ("key length S", S)):
        if length % (ring * chunks):
            raise ValueError(
                f"{letter}={length} must be a multiple of {ring * chunks} ({ring} devices on "
                f"axis_name={axis_name!r}"
                + (" x 2 zigzag chunks" if chunks == 2 else "")
                + "); pad it and mask the padding with *_seq_lengths"
            )
    _check_divides(B, "batch B", mesh, batch_axis, "batch_axis")
    repeats = _kv_repeats(key.shape[2], N, mesh, head_axis)

    config = _RingConfig(
        mesh=mesh,
        axis_name=axis_name,
        batch_axis=batch_axis,
        head_axis=head_axis,
        is_causal=is_causal,
        window=masks_lib.normalize_window(local_window_size),
        scale=float(H**-0.5 if scale is None else scale),
        chunks=chunks,
        precision=precision,
    )
    q_perm, kv_perm = ring_permutation(T, ring, layout), ring_permutation(S, ring, layout)
    reorder = permute and layout != "contiguous"

    def prepare(query: Array, key: Array, value: Array, args: dict[str, Any]) -> Any:
        key, value = jnp.repeat(key, repeats, axis=2), jnp.repeat(value, repeats, axis=2)
        q_seg, kv_seg = args["query_segment_ids"], args["key_value_segment_ids"]
        if reorder:
            query = jnp.take(query, q_perm, axis=1)
            key, value = jnp.take(key, kv_perm, axis=1), jnp.take(value, kv_perm, axis=1)
            if q_seg is not None:
                q_seg = jnp.take(q_seg, q_perm, axis=1)
                kv_seg = jnp.take(kv_seg, kv_perm, axis=1)
        aux = _Aux(
            q_pos=jnp.asarray(q_perm, jnp.int32),
            kv_pos=jnp.asarray(kv_perm, jnp.int32),
            q_len=args["query_seq_lengths"],
            kv_len=args["key_value_seq_lengths"],
            q_seg=q_seg,
            kv_seg=kv_seg,
        )
        return query, key, value, aux

    qkv = config.specs["qkv"]
    aux_specs = _aux_specs(
        config,
        _Aux(
            q_pos=q_perm,
            kv_pos=kv_perm,
            q_len=args["query_seq_lengths"],
            kv_len=args["key_value_seq_lengths"],
            q_seg=args["query_segment_ids"],
            kv_seg=args["key_value_segment_ids"],
        ),
    )
    query, key, value, aux = _arrange(
        prepare, mesh, (qkv, qkv, qkv, aux_specs), query, key, value, args
    )
    out = _ring(config, query, key, value, aux)
    if reorder:
        out = _arrange(lambda o: jnp.take(o, np.argsort(q_perm), axis=1), mesh, qkv, out)
    return out[0] if unbatched else out


def _refuse_dense(
    bias: Array | None,
    mask: Array | None,
    dropout_rate: float,
    deterministic: bool,
    return_weights: bool,
) -> None:
    """The arguments of the ``dot_product_attention`` call that ring attention cannot honour.

    Each needs a ``T x S`` array (per head and example, for most), while the point of the
    ring is that no device holds more than a ``T/P x S/P`` block of scores.
    """
    if bias is not None:
        raise ValueError(
            "ring_attention takes no bias: a bias broadcast to [B, N, T, S] is the T x S "
            "memory the ring avoids. Use dot_product_attention or blockwise_attention for a "
            "bias (sharded_attention splits either over batch and heads)"
        )
    if mask is not None:
        raise ValueError(
            "ring_attention takes no mask: a dense mask broadcast to [B, N, T, S] is the "
            "T x S memory the ring avoids. Say it with what the ring computes block by block "
            "from positions: is_causal, local_window_size, query_seq_lengths / "
            "key_value_seq_lengths (padding), query_segment_ids / key_value_segment_ids"
        )
    if dropout_rate > 0.0 and not deterministic:
        raise ValueError(
            f"ring_attention has no attention dropout, got dropout_rate={dropout_rate} with "
            "deterministic=False: dot_product_attention's dropout draws a T x S keep "
            "pattern, the memory the ring avoids. Turn it off (dropout_rate=0.0 or "
            "deterministic=True; in a model, attention_dropout_rate=0.0) or use "
            "blockwise_attention, which draws its pattern block by block"
        )
    if return_weights:
        raise ValueError(
            "ring_attention cannot return_weights: the [B, N, T, S] weights are the T x S "
            "memory the ring never forms. Run the same inputs or parameters on "
            "dot_product_attention (the reference kernel) with return_weights=True"
        )


@dataclasses.dataclass(frozen=True)
class _RingConfig:
    """Everything static about one ring-attention call (hashable: a custom_vjp static arg)."""

    mesh: Mesh | AbstractMesh
    axis_name: str
    batch_axis: str | None
    head_axis: str | None
    is_causal: bool
    window: tuple[int, int] | None
    scale: float
    chunks: int  # chunks per device that masking and skipping work on
    precision: Any

    @property
    def axes(self) -> tuple[str, ...]:
        """The mesh axes along which per-device values differ."""
        return tuple(a for a in (self.batch_axis, self.axis_name, self.head_axis) if a)

    @property
    def specs(self) -> dict[str, P]:
        """PartitionSpecs of the global arrays (lse and the stats are [B, K, G, T])."""
        return {
            "qkv": P(self.batch_axis, self.axis_name, self.head_axis, None),
            "lse": P(self.batch_axis, self.head_axis, None, self.axis_name),
        }


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Aux:
    """The non-differentiable arrays (or, in ``_aux_specs``, their PartitionSpecs)."""

    q_pos: Any  # [T] int: natural position of each query slot
    kv_pos: Any  # [S] int: natural position of each key/value slot
    q_len: Any  # [B] int or None
    kv_len: Any  # [B] int or None
    q_seg: Any  # [B, T] int or None
    kv_seg: Any  # [B, S] int or None


def _aux_specs(config: _RingConfig, aux: _Aux) -> _Aux:
    """PartitionSpecs of ``aux``'s fields (None where the field is None)."""
    seq, batch = config.axis_name, config.batch_axis

    def given(x: Any, spec: P) -> P | None:
        return None if x is None else spec

    return _Aux(
        q_pos=P(seq),
        kv_pos=P(seq),
        q_len=given(aux.q_len, P(batch)),
        kv_len=given(aux.kv_len, P(batch)),
        q_seg=given(aux.q_seg, P(batch, seq)),
        kv_seg=given(aux.kv_seg, P(batch, seq)),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(config: _RingConfig, query: Array, key: Array, value: Array, aux: _Aux) -> Array:
    return _ring_fwd(config, query, key, value, aux)[0]


def _ring_fwd(
    config: _RingConfig, query: Array, key: Array, value: Array, aux: _Aux
) -> tuple[Array, tuple[Any, ...]]:
    specs = config.specs
    out, lse = jax.shard_map(
        functools.partial(_forward_on_device, config),
        mesh=config.mesh,
        in_specs=(specs["qkv"], specs["qkv"], specs["qkv"], _aux_specs(config, aux)),
        out_specs=(specs["qkv"], specs["lse"]),
    )(query, key, value, aux)
    return out, (query, key, value, aux, out, lse)


def _ring_bwd(
    config: _RingConfig, residuals: tuple[Any, ...], d_out: Array
) -> tuple[Array, Array, Array, None]:
    query, key, value, aux, out, lse = residuals
    specs = config.specs
    qkv = specs["qkv"]
    d_out = _arrange(lambda x: x, config.mesh, qkv, d_out)
    dq, dk, dv = jax.shard_map(
        functools.partial(_backward_on_device, config),
        mesh=config.mesh,
        in_specs=(qkv, qkv, qkv, _aux_specs(config, aux), qkv, specs["lse"], qkv),
        out_specs=(qkv, qkv, qkv),
    )(query, key, value, aux, out, lse, d_out)
    return dq, dk, dv, None


_ring.defvjp(_ring_fwd, _ring_bwd)


# Per-device code. Local shapes: q [b, t, K', G, H] (t = T / P, K' local key/value heads),
# k and v [b, s, K', H]; per-query statistics are [b, K', G, t] like the score rows.


def _forward_on_device(
    config: _RingConfig, query: Array, key: Array, value: Array, aux: _Aux
) -> tuple[Array, Array]:
    b, t, n, h = query.shape
    k_heads = key.shape[2]
    q = query.reshape(b, t, k_heads, n // k_heads, h)
    q_chunks = _split(q, config.chunks)
    q_pos = _split(aux.q_pos, config.chunks, axis=0)
    q_seg = _split(aux.q_seg, config.chunks)

    def fresh(shape: tuple[int, ...], fill: float) -> Array:
        # Constants are the same on every device; the loop carry must be typed as varying
        # across the mesh like the data it will hold (shard_map's check_vma).
        return lax.pcast(jnp.full(shape, fill, jnp.float32), config.axes, to="varying")

    tc = t // config.chunks
    stats0 = tuple(
        (
            fresh((b, k_heads, n // k_heads, tc), MASK_VALUE),  # running max
            fresh((b, k_heads, n // k_heads, tc), 0.0),  # running sum of exp
            fresh((b, k_heads, n // k_heads, tc, h), 0.0),  # running sum of exp * v
        )
        for _ in range(config.chunks)
    )

    def attend(visiting: tuple[Any, ...], stats: tuple[Any, ...]) -> tuple[Any, Any]:
        k, v, kv_pos, kv_seg = visiting
        new = []
        for i in range(config.chunks):
            chunk_stats = stats[i]
            for k_c, v_c, pos_c, seg_c in zip(
                _split(k, config.chunks),
                _split(v, config.chunks),
                _split(kv_pos, config.chunks, axis=0),
                _split(kv_seg, config.chunks),
                strict=True,
            ):
                mask = _chunk_mask(config, q_pos[i], pos_c, aux.q_len, aux.kv_len, q_seg[i], seg_c)
                step = functools.partial(_online_softmax_step, config, q_chunks[i], k_c, v_c, mask)
                chunk_stats = _unless_all_masked(mask, step, chunk_stats)
            new.append(chunk_stats)
        return visiting, tuple(new)

    _, stats = _around_the_ring(config, (key, value, aux.kv_pos, aux.kv_seg), stats0, attend)

    outs, lses = [], []
    for running_max, total, acc in stats:
        live = total > 0
        # A query that saw no key has total 0: output zeros, as dot_product_attention does.
        outs.append(jnp.where(live[..., None], acc / jnp.where(live, total, 1.0)[..., None], 0))
        lses.append(jnp.where(live, running_max + jnp.log(jnp.where(live, total, 1.0)), MASK_VALUE))
    out = jnp.concatenate(outs, axis=3)  # [b, K', G, t, H]
    out = jnp.moveaxis(out, 3, 1).reshape(b, t, n, h).astype(query.dtype)
    return out, jnp.concatenate(lses, axis=3)


def _backward_on_device(
    config: _RingConfig,
    query: Array,
    key: Array,
    value: Array,
    aux: _Aux,
    out: Array,
    lse: Array,
    d_out: Array,
) -> tuple[Array, Array, Array]:
    b, t, n, h = query.shape
    k_heads = key.shape[2]
    g = n // k_heads

    def grouped(x: Array) -> Array:
        return x.reshape(b, t, k_heads, g, h)

    # Dao et al. 2022 (FlashAttention), appendix B.2: dS = P * (dP - rowsum(dO * O)).
    delta = jnp.einsum(
        "BTKGH,BTKGH->BKGT", grouped(d_out), grouped(out), preferred_element_type=jnp.float32
    )
    q_chunks = _split(grouped(query), config.chunks)
    do_chunks = _split(grouped(d_out), config.chunks)
    lse_chunks = _split(lse, config.chunks, axis=3)
    delta_chunks = _split(delta, config.chunks, axis=3)
    q_pos = _split(aux.q_pos, config.chunks, axis=0)
    q_seg = _split(aux.q_seg, config.chunks)

    def zeros(x: Array) -> Array:
        return lax.pcast(jnp.zeros(x.shape, jnp.float32), config.axes, to="varying")

    dq0 = tuple(zeros(c) for c in q_chunks)

    def attend(visiting: tuple[Any, ...], dq: tuple[Array, ...]) -> tuple[Any, Any]:
        k, v, kv_pos, kv_seg, dk, dv = visiting
        dq_list = list(dq)
        dk_parts, dv_parts = [], []
        kv_parts = zip(
            _split(k, config.chunks),
            _split(v, config.chunks),
            _split(kv_pos, config.chunks, axis=0),
            _split(kv_seg, config.chunks),
            _split(dk, config.chunks),
            _split(dv, config.chunks),
            strict=True,
        )
        for k_c, v_c, pos_c, seg_c, dk_c, dv_c in kv_parts:
            for i in range(config.chunks):
                mask = _chunk_mask(config, q_pos[i], pos_c, aux.q_len, aux.kv_len, q_seg[i], seg_c)
                step = functools.partial(
                    _gradient_step,
                    config,
                    q_chunks[i],
                    k_c,
                    v_c,
                    do_chunks[i],
                    lse_chunks[i],
                    delta_chunks[i],
                    mask,
                )
                dq_list[i], dk_c, dv_c = _unless_all_masked(mask, step, (dq_list[i], dk_c, dv_c))
            dk_parts.append(dk_c)
            dv_parts.append(dv_c)
        dk, dv = jnp.concatenate(dk_parts, axis=1), jnp.concatenate(dv_parts, axis=1)
        return (k, v, kv_pos, kv_seg, dk, dv), tuple(dq_list)

    # The key/value gradients travel with their block (Liu et al. 2023); after the last
    # block has been used they are one hop short of home.
    visiting = (key, value, aux.kv_pos, aux.kv_seg, zeros(key), zeros(value))
    visiting, dq = _around_the_ring(config, visiting, dq0, attend)
    dk, dv = _hop(config, visiting[4:])
    dq = jnp.concatenate(dq, axis=1).reshape(b, t, n, h)
    return dq.astype(query.dtype), dk.astype(key.dtype), dv.astype(value.dtype)


def _around_the_ring(
    config: _RingConfig,
    visiting: tuple[Any, ...],
    carry: Any,
    attend: Callable[[tuple[Any, ...], Any], tuple[tuple[Any, ...], Any]],
) -> tuple[tuple[Any, ...], Any]:
    """Let each of the ``P`` key/value blocks visit this device once; ``attend`` folds it in.

    ``attend(visiting, carry) -> (visiting, carry)``. At step ``j`` device ``p`` holds the
    block of device ``p - j``; after using it, passes it on to ``p + 1``. The hop of a block
    depends only on the block, so XLA can run it while the block is being used (the overlap
    of communication with computation that Liu et al. 2023 rely on). Returns the last block
    to visit (the one from ``p + 1``, one hop short of home) and the carry.
    """
    size = config.mesh.shape[config.axis_name]

    def step(state: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], None]:
        visiting, carry = attend(*state)
        return (_hop(config, visiting), carry), None

    if size > 1:
        (visiting, carry), _ = lax.scan(step, (visiting, carry), None, length=size - 1)
    return attend(visiting, carry)


def _hop(config: _RingConfig, x: Any) -> Any:
    """Every array in ``x`` moved one device along the ring: ``p`` sends to ``p + 1``."""
    size = config.mesh.shape[config.axis_name]
    perm = [(i, (i + 1) % size) for i in range(size)]
    return jax.tree.map(lambda a: lax.ppermute(a, config.axis_name, perm), x)


def _online_softmax_step(
    config: _RingConfig,
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None,
    stats: tuple[Array, Array, Array],
) -> tuple[Array, Array, Array]:
    """Fold one key/value chunk into the running (max, sum, weighted sum) of a query chunk.

    Milakov & Gimelshein 2018, alg. 3 (online normalizer), as used blockwise by Rabe &
    Staats 2021 and Dao et al. 2022, alg. 1. Every quantity stays finite: masked logits are
    ``MASK_VALUE``, and their exponentials are zeroed by the mask, so a row with nothing to
    attend so far keeps a zero sum rather than counting masked keys.
    """
    running_max, total, acc = stats
    logits = _logits(config, q, k, mask)
    new_max = jnp.maximum(running_max, logits.max(axis=-1))
    p = jnp.exp(logits - new_max[..., None])
    if mask is not None:
        p = p * mask[:, None, None].astype(p.dtype)
    correction = jnp.exp(running_max - new_max)
    total = total * correction + p.sum(axis=-1)
    pv = jnp.einsum(
        "BKGTS,BSKH->BKGTH",
        p.astype(v.dtype),
        v,
        precision=config.precision,
        preferred_element_type=jnp.float32,
    )
    return new_max, total, acc * correction[..., None] + pv


def _gradient_step(
    config: _RingConfig,
    q: Array,
    k: Array,
    v: Array,
    d_out: Array,
    lse: Array,
    delta: Array,
    mask: Array | None,
    grads: tuple[Array, Array, Array],
) -> tuple[Array, Array, Array]:
    """Add one chunk pair's share to (dq, dk, dv), recomputing P from the saved lse.

    Dao et al. 2022, appendix B.2: ``P = exp(S - lse)``, ``dV = P^T dO``,
    ``dS = P * (dO V^T - delta)``, ``dQ = dS K * scale``, ``dK = dS^T Q * scale``.
    """
    dq, dk, dv = grads
    f32 = jnp.float32
    logits = _logits(config, q, k, mask)
    p = jnp.exp(logits - lse[..., None])
    if mask is not None:
        p = p * mask[:, None, None].astype(p.dtype)
    ein = functools.partial(jnp.einsum, precision=config.precision, preferred_element_type=f32)
    dv = dv + ein("BKGTS,BTKGH->BSKH", p, d_out.astype(f32))
    dp = ein("BTKGH,BSKH->BKGTS", d_out, v)
    ds = p * (dp - delta[..., None]) * config.scale
    dq = dq + ein("BKGTS,BSKH->BTKGH", ds, k.astype(f32))
    dk = dk + ein("BKGTS,BTKGH->BSKH", ds, q.astype(f32))
    return dq, dk, dv


def _logits(config: _RingConfig, q: Array, k: Array, mask: Array | None) -> Array:
    """Scaled float32 scores ``[b, K', G, t, s]``, masked entries set to ``MASK_VALUE``."""
    logits = jnp.einsum(
        "BTKGH,BSKH->BKGTS",
        q,
        k,
        precision=config.precision,
        preferred_element_type=jnp.float32,
    )
    logits = logits * jnp.asarray(config.scale, jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, MASK_VALUE)
    return logits


def _chunk_mask(
    config: _RingConfig,
    q_pos: Array,
    kv_pos: Array,
    q_len: Array | None,
    kv_len: Array | None,
    q_seg: Array | None,
    kv_seg: Array | None,
) -> Array | None:
    """``[b or 1, t, s]`` bool mask of one chunk pair from true positions, or None."""
    positional = masks_lib.positional_mask(
        q_pos, kv_pos, is_causal=config.is_causal, local_window_size=config.window
    )
    return masks_lib.combine_masks(
        None if positional is None else positional[None],
        None if q_len is None else (q_pos[None, :] < q_len[:, None])[:, :, None],
        None if kv_len is None else (kv_pos[None, :] < kv_len[:, None])[:, None, :],
        None if q_seg is None or kv_seg is None else q_seg[:, :, None] == kv_seg[:, None, :],
    )


def _unless_all_masked(mask: Array | None, step: Callable[[Any], Any], state: Any) -> Any:
    """``step(state)``, or ``state`` untouched when ``mask`` allows nothing (the causal skip)."""
    if mask is None:
        return step(state)
    return lax.cond(jnp.any(mask), step, lambda s: s, state)


def _split(x: Array | None, parts: int, axis: int = 1) -> list[Any]:
    """``x`` cut into ``parts`` equal pieces along ``axis`` (None stays None)."""
    if x is None:
        return [None] * parts
    return jnp.split(x, parts, axis=axis) if parts > 1 else [x]


# --------------------------------------------------------------------------------------------
# Checks shared by both entry points.


def _check_axes(mesh: Any, **axes: str | None) -> None:
    """Each named mesh axis exists and no axis is used twice."""
    named = {arg: a for arg, a in axes.items() if a is not None}
    for arg, a in named.items():
        if a not in mesh.axis_names:
            raise ValueError(f"{arg}={a!r} is not an axis of the mesh {tuple(mesh.axis_names)}")
    used = list(named.values())
    if len(set(used)) != len(used):
        raise ValueError(f"mesh axes must be distinct, got {named}")


def _check_divides(size: int, what: str, mesh: Any, axis: str | None, arg: str) -> None:
    if axis is not None and size % mesh.shape[axis]:
        raise ValueError(
            f"{what}={size} must be a multiple of the {mesh.shape[axis]} devices on {arg}={axis!r}"
        )


def _kv_repeats(K: int, N: int, mesh: Any, head_axis: str | None) -> int:
    """How often to repeat each key/value head so they split over ``head_axis`` with N."""
    if head_axis is None:
        return 1
    shards = mesh.shape[head_axis]
    _check_divides(N, "query heads N", mesh, head_axis, "head_axis")
    if K % shards == 0:
        return 1
    if shards % K == 0:
        # Query heads on device d read key/value head n // G = d // (shards / K): repeating
        # each head shards / K times puts exactly that head on device d.
        return shards // K
    raise ValueError(
        f"key/value heads K={K} and the {shards} devices on head_axis={head_axis!r} must "
        "divide one another, so that each device's query heads share whole key/value heads"
    )


def _arrange(fn: Callable[..., Any], mesh: Any, specs: Any, *args: Any) -> Any:
    """``fn(*args)``, its outputs laid out on ``mesh`` as ``specs`` for ``shard_map``.

    On a mesh with Explicit axes (the default of ``jax.make_mesh``) arrays carry their
    sharding in their type, ``shard_map`` insists that it equal ``in_specs``, and a gather
    along a sharded axis must be told its output sharding; ``auto_axes`` lets XLA choose the
    data movement and then fixes the result's sharding. On Auto axes a sharding constraint
    says the same to XLA's partitioner.
    """
    explicit = tuple(
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind == AxisType.Explicit
    )
    shardings = jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
    )
    if not explicit:
        return lax.with_sharding_constraint(fn(*args), shardings)
    return auto_axes(fn, axes=explicit, out_sharding=shardings)(*args)
