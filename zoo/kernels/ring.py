"""Ring attention: sequence-parallel attention around a ring of devices.

Liu, Zaharia & Abbeel 2023, "Ring Attention with Blockwise Transformers" (arXiv:2310.01889).
Each device holds ``T / P`` queries and ``S / P`` keys and values; the key/value blocks travel
around a ring of ``P`` devices with ``lax.ppermute``, and each device folds every visiting
block into its queries' output with the online softmax of :mod:`zoo.kernels._online`
(Milakov & Gimelshein 2018; Rabe & Staats 2021) and the dot-product block score of
:mod:`zoo.kernels.blockwise`. No device ever holds more than two key/value blocks or a score
matrix larger than ``T/P x S/P``. Written with ``jax.shard_map``, so the same code runs on
emulated CPU devices, GPUs, TPUs and across hosts.

Shapes follow ``zoo.shapes``: query ``[B, T, N, H]``, key and value ``[B, S, K, H]``. On a
device, blocks are laid out as in the blockwise kernel: ``[Z, R, H]`` with ``Z = b*K'``
(local batch times local key heads) and ``R = G*t`` rows.

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
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P

from zoo.kernels import _call, _mesh, _online
from zoo.kernels import masks as masks_lib
from zoo.kernels.blockwise import block_rows, dot_block_grads, dot_block_scores
from zoo.shapes import Array, PRNGKey

__all__ = ["ring_attention", "ring_permutation"]

Layout = Literal["contiguous", "zigzag", "striped"]
_LAYOUTS = ("contiguous", "zigzag", "striped")
# Chunks per device that the causal skip works on: zigzag's two halves are where whole
# chunk pairs fall entirely above the diagonal.
_CHUNKS = {"contiguous": 1, "zigzag": 2, "striped": 1}


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
    return_residual: bool = False,
    dtype: Any = None,
    module: Any = None,
) -> Array | tuple[Array, ...]:
    """Sequence-parallel attention around a ring of devices (Liu et al. 2023, arXiv:2310.01889).

    Shapes (alphabet in ``zoo.shapes``), with any number of leading batch dims (flattened
    into the one ``B`` that ``batch_axis`` splits)::

        query  [*batch, T, N, H]      key, value  [*batch, S, K, H]      K divides N
        query_seq_lengths, key_value_seq_lengths [*batch] (int)
        query_segment_ids [*batch, T], key_value_segment_ids [*batch, S] (int)

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
      return_weights, module: must be False / None: the ``[B, N, T, S]`` weights are never
        formed.
      return_residual, dtype: as in ``dot_product_attention``.

    Returns:
      ``[*batch, T, N, H]`` in the input dtype (and with ``return_residual`` the log-sum-exp
      ``[*batch, T, N]``). A query with no key to attend gets zeros (and zero gradients),
      as in ``dot_product_attention``.
    """
    _refuse_dense(bias, mask, dropout_rate, deterministic, return_weights)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    _mesh.check_axes(mesh, axis_name=axis_name, batch_axis=batch_axis, head_axis=head_axis)
    core = functools.partial(
        _ring_core,
        mesh=mesh,
        axis_name=axis_name,
        batch_axis=batch_axis,
        head_axis=head_axis,
        layout=layout,
        permute=permute,
    )
    return _call.attend(
        core,
        query,
        key,
        value,
        None,
        None,
        scale=scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        query_segment_ids=query_segment_ids,
        key_value_segment_ids=key_value_segment_ids,
        dropout_rate=0.0,
        dropout_rng=None,
        broadcast_dropout=True,
        deterministic=True,
        return_weights=False,
        return_residual=return_residual,
        dtype=dtype,
        precision=precision,
        module=module,
        forms_weights=False,
        kernel_name="ring_attention",
        places_itself=True,
    )


def _ring_core(
    call: _call.Call,
    want_weights: bool,
    *,
    mesh: Mesh | AbstractMesh,
    axis_name: str,
    batch_axis: str | None,
    head_axis: str | None,
    layout: Layout,
    permute: bool,
) -> tuple[Array, None, Array]:
    """The kernel on a normalized call (see :mod:`zoo.kernels._call`)."""
    B, T, S, K, G, _ = call.shape
    N = K * G
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
    _mesh.check_divides(B, "batch B", mesh, batch_axis, "batch_axis")
    repeats = _mesh.kv_repeats(K, N, mesh, head_axis)
    o = call.options
    config = _RingConfig(
        mesh=mesh,
        axis_name=axis_name,
        batch_axis=batch_axis,
        head_axis=head_axis,
        is_causal=o.is_causal,
        window=o.window,
        scale=o.scale,
        chunks=chunks,
        precision=o.precision,
        static=_call.platform_of(call.query, mesh) != "cpu",
    )
    q_perm, kv_perm = ring_permutation(T, ring, layout), ring_permutation(S, ring, layout)
    reorder = permute and layout != "contiguous"

    def prepare(query: Array, key: Array, value: Array, ids: dict[str, Any]) -> Any:
        key, value = jnp.repeat(key, repeats, axis=2), jnp.repeat(value, repeats, axis=2)
        q_seg, kv_seg = ids["q_seg"], ids["kv_seg"]
        if reorder:
            query = jnp.take(query, q_perm, axis=1)
            key, value = jnp.take(key, kv_perm, axis=1), jnp.take(value, kv_perm, axis=1)
            if q_seg is not None and kv_seg is not None:
                q_seg = jnp.take(q_seg, q_perm, axis=1)
                kv_seg = jnp.take(kv_seg, kv_perm, axis=1)
        aux = _Aux(
            q_pos=jnp.asarray(q_perm, jnp.int32),
            kv_pos=jnp.asarray(kv_perm, jnp.int32),
            q_len=ids["q_len"],
            kv_len=ids["kv_len"],
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
            q_len=call.query_lengths,
            kv_len=call.key_lengths,
            q_seg=call.query_segments,
            kv_seg=call.key_segments,
        ),
    )
    ids = {
        "q_len": call.query_lengths,
        "kv_len": call.key_lengths,
        "q_seg": call.query_segments,
        "kv_seg": call.key_segments,
    }
    query, key, value, aux = _mesh.arrange(
        prepare, mesh, (qkv, qkv, qkv, aux_specs), call.query, call.key, call.value, ids
    )
    # Under jit even when called eagerly: the backward pass then builds the lse's zero
    # cotangent while tracing, where an abstract mesh is all a sharding needs.
    out, lse = jax.jit(_ring, static_argnums=0)(config, query, key, value, aux)
    # lse [B, K', G', T] -> [B, T, N]: query head n = k' G' + g'.
    lse = jnp.moveaxis(lse.reshape(B, N, T), 1, 2)
    if reorder:
        inverse = np.argsort(q_perm)
        out, lse = _mesh.arrange(
            lambda o, l: (jnp.take(o, inverse, axis=1), jnp.take(l, inverse, axis=1)),
            mesh,
            (qkv, P(batch_axis, axis_name, head_axis)),
            out,
            lse,
        )
    return out, None, lax.stop_gradient(lse)


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
    # For GPU and TPU: no lax.cond (a round trip to the host there), so an empty chunk pair
    # is computed and masked rather than skipped, and the running maximum always updated.
    static: bool

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
def _ring(
    config: _RingConfig, query: Array, key: Array, value: Array, aux: _Aux
) -> tuple[Array, Array]:
    return _ring_fwd(config, query, key, value, aux)[0]


def _ring_fwd(
    config: _RingConfig, query: Array, key: Array, value: Array, aux: _Aux
) -> tuple[tuple[Array, Array], tuple[Any, ...]]:
    specs = config.specs
    out, lse = jax.shard_map(
        functools.partial(_forward_on_device, config),
        mesh=config.mesh,
        in_specs=(specs["qkv"], specs["qkv"], specs["qkv"], _aux_specs(config, aux)),
        out_specs=(specs["qkv"], specs["lse"]),
    )(query, key, value, aux)
    return (out, lse), (query, key, value, aux, out, lse)


def _ring_bwd(
    config: _RingConfig, residuals: tuple[Any, ...], cotangents: tuple[Array, Array]
) -> tuple[Array, Array, Array, None]:
    query, key, value, aux, out, lse = residuals
    d_out, _ = cotangents  # lse is returned under stop_gradient
    specs = config.specs
    qkv = specs["qkv"]
    d_out = _mesh.arrange(lambda x: x, config.mesh, qkv, d_out)
    dq, dk, dv = jax.shard_map(
        functools.partial(_backward_on_device, config),
        mesh=config.mesh,
        in_specs=(qkv, qkv, qkv, _aux_specs(config, aux), qkv, specs["lse"], qkv),
        out_specs=(qkv, qkv, qkv),
    )(query, key, value, aux, out, lse, d_out)
    return dq, dk, dv, None


_ring.defvjp(_ring_fwd, _ring_bwd)


# Per-device code. Local shapes: query [b, t, n, h], key and value [b, s, K', h]; blocks in
# rows: queries [Z, G*tc, h] per chunk, keys and values [Z, s, h] with Z = b*K'; the lse
# leaves the device as [b, K', G, t].


def _query_rows(x: Array, k_heads: int, chunks: int) -> list[Array]:
    """``[b, t, n, D]`` -> one ``[b*K', G*tc, D]`` block per chunk of ``tc = t / chunks``."""
    b, t, n, d = x.shape
    g, tc = n // k_heads, t // chunks
    x = x.reshape(b, chunks, tc, k_heads, g, d).transpose(1, 0, 3, 4, 2, 5)
    return list(x.reshape(chunks, b * k_heads, g * tc, d))


def _key_rows(x: Array) -> Array:
    """``[b, s, K', D]`` -> ``[b*K', s, D]``."""
    b, s, k_heads, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b * k_heads, s, d)


def _from_key_rows(x: Array, b: int) -> Array:
    z, s, d = x.shape
    return x.reshape(b, z // b, s, d).transpose(0, 2, 1, 3)


def _mask_rows(mask: Array | None, shape: tuple[int, int, int, int, int], t: bool) -> Array | None:
    """A chunk pair's ``[b|1, tc, sc]`` mask in the rows layout (None stays None)."""
    return None if mask is None else block_rows(mask[:, None, None], shape, t=t)


def _logits(config: _RingConfig, scores: Array, mask_rows: Array | None) -> Array:
    """Scaled scores, masked entries at MASK_VALUE (the blockwise kernel's score, no bias)."""
    # Scale after the product, as the reference does, so rounding matches it.
    logits = scores * jnp.asarray(config.scale, scores.dtype)
    return logits if mask_rows is None else jnp.where(mask_rows, logits, masks_lib.MASK_VALUE)


def _forward_on_device(
    config: _RingConfig, query: Array, key: Array, value: Array, aux: _Aux
) -> tuple[Array, Array]:
    b, t, n, h = query.shape
    k_heads = key.shape[2]
    g, C = n // k_heads, config.chunks
    tc = t // C
    acc = jnp.promote_types(query.dtype, jnp.float32)
    q_rows = _query_rows(query, k_heads, C)
    q_pos = _split(aux.q_pos, C, axis=0)
    q_seg = _split(aux.q_seg, C)

    def varying(x: Array) -> Array:
        # Constants are the same on every device; the loop carry must be typed as varying
        # across the mesh like the data it will hold (shard_map's check_vma).
        return lax.pcast(x, config.axes, to="varying")

    states0 = tuple(
        jax.tree.map(varying, _online.initial_state(b * k_heads, g * tc, h, acc)) for _ in range(C)
    )

    def attend(visiting: tuple[Any, ...], states: tuple[Any, ...]) -> tuple[Any, Any]:
        k, v, kv_pos, kv_seg = visiting
        new = []
        for i in range(C):
            state = states[i]
            for k_c, v_c, pos_c, seg_c in zip(
                _split(k, C),
                _split(v, C),
                _split(kv_pos, C, axis=0),
                _split(kv_seg, C),
                strict=True,
            ):
                mask = _chunk_mask(config, q_pos[i], pos_c, aux, q_seg[i], seg_c)
                shape = (b, k_heads, g, tc, k_c.shape[1])

                def step(state: Any, k_c=k_c, v_c=v_c, mask=mask, shape=shape, i=i) -> Any:
                    scores = dot_block_scores(
                        q_rows[i], k_c, precision=config.precision, acc=acc, t=False
                    )
                    rows = _mask_rows(mask, shape, t=False)

                    def to_logits(scores: Array) -> Array:
                        return _logits(config, scores, rows)

                    def weighted_values(p: Array) -> Array:
                        return jnp.einsum(
                            "Zrs,ZsD->ZrD",
                            p.astype(v_c.dtype),
                            v_c,
                            precision=config.precision,
                            preferred_element_type=acc,
                        )

                    return _online.fold(
                        state, scores, to_logits, weighted_values, reuse_max=not config.static
                    )

                state = _unless_all_masked(config, mask, step, state)
            new.append(state)
        return visiting, tuple(new)

    visiting = (_key_rows(key), _key_rows(value), aux.kv_pos, aux.kv_seg)
    _, states = _around_the_ring(config, visiting, states0, attend)
    finals = [_online.finalize(state, query.dtype) for state in states]
    out = _unrows_queries([o for o, _ in finals], b, k_heads, tc)
    lse = jnp.concatenate(
        [l.reshape(b, k_heads, g, tc) for _, l in finals], axis=3
    )  # [b, K', G, t]
    return out, lse


def _unrows_queries(blocks: list[Array], b: int, k_heads: int, tc: int) -> Array:
    """Per-chunk ``[b*K', G*tc, D]`` blocks back to ``[b, t, n, D]``."""
    x = jnp.stack(blocks)  # [C, Z, G*tc, D]
    chunks, _, rows, d = x.shape
    g = rows // tc
    x = x.reshape(chunks, b, k_heads, g, tc, d).transpose(1, 0, 4, 2, 3, 5)
    return x.reshape(b, chunks * tc, k_heads * g, d)


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
    b, t, n, _ = query.shape
    k_heads = key.shape[2]
    g, C = n // k_heads, config.chunks
    tc = t // C
    acc = jnp.promote_types(query.dtype, jnp.float32)
    q_rows = _query_rows(query, k_heads, C)
    do_rows = _query_rows(d_out, k_heads, C)
    # D_i = rowsum(dO_i * O_i) (FlashAttention-2, sec. 3.1.2).
    delta = [
        jnp.sum(d.astype(acc) * o.astype(acc), axis=-1)
        for d, o in zip(do_rows, _query_rows(out, k_heads, C), strict=True)
    ]
    lse_rows = [
        _online.backward_lse(c.reshape(b * k_heads, g * tc)) for c in _split(lse, C, axis=3)
    ]
    q_pos = _split(aux.q_pos, C, axis=0)
    q_seg = _split(aux.q_seg, C)

    def zeros(x: Array) -> Array:
        return lax.pcast(jnp.zeros(x.shape, acc), config.axes, to="varying")

    dq0 = tuple(zeros(c) for c in q_rows)

    def attend(visiting: tuple[Any, ...], dq: tuple[Array, ...]) -> tuple[Any, Any]:
        k, v, kv_pos, kv_seg, dk, dv = visiting
        dq_list = list(dq)
        dk_parts, dv_parts = [], []
        kv_parts = zip(
            _split(k, C),
            _split(v, C),
            _split(kv_pos, C, axis=0),
            _split(kv_seg, C),
            _split(dk, C),
            _split(dv, C),
            strict=True,
        )
        for k_c, v_c, pos_c, seg_c, dk_c, dv_c in kv_parts:
            for i in range(C):
                mask = _chunk_mask(config, q_pos[i], pos_c, aux, q_seg[i], seg_c)
                shape = (b, k_heads, g, tc, k_c.shape[1])

                def step(grads: Any, k_c=k_c, v_c=v_c, mask=mask, shape=shape, i=i) -> Any:
                    dq_i, dk_c, dv_c = grads
                    scores_t = dot_block_scores(
                        q_rows[i], k_c, precision=config.precision, acc=acc, t=True
                    )
                    logits_t = _logits(config, scores_t, _mask_rows(mask, shape, t=True))
                    d_s, dv_part = _online.block_backward(
                        logits_t, lse_rows[i], delta[i], v_c, do_rows[i], None, config.precision
                    )
                    dq_part, dk_part = dot_block_grads(
                        q_rows[i],
                        k_c,
                        d_s,
                        scale=config.scale,
                        precision=config.precision,
                        acc=acc,
                    )
                    return dq_i + dq_part, dk_c + dk_part, dv_c + dv_part

                dq_list[i], dk_c, dv_c = _unless_all_masked(
                    config, mask, step, (dq_list[i], dk_c, dv_c)
                )
            dk_parts.append(dk_c)
            dv_parts.append(dv_c)
        dk, dv = jnp.concatenate(dk_parts, axis=1), jnp.concatenate(dv_parts, axis=1)
        return (k, v, kv_pos, kv_seg, dk, dv), tuple(dq_list)

    # The key/value gradients travel with their block (Liu et al. 2023); after the last
    # block has been used they are one hop short of home.
    k_rows, v_rows = _key_rows(key), _key_rows(value)
    visiting = (k_rows, v_rows, aux.kv_pos, aux.kv_seg, zeros(k_rows), zeros(v_rows))
    visiting, dq = _around_the_ring(config, visiting, dq0, attend)
    dk, dv = _hop(config, visiting[4:])
    dq = _unrows_queries(list(dq), b, k_heads, tc)
    return (
        dq.astype(query.dtype),
        _from_key_rows(dk, b).astype(key.dtype),
        _from_key_rows(dv, b).astype(value.dtype),
    )


def _chunk_mask(
    config: _RingConfig,
    q_pos: Array,
    kv_pos: Array,
    aux: _Aux,
    q_seg: Array | None,
    kv_seg: Array | None,
) -> Array | None:
    """``[b or 1, t, s]`` bool mask of one chunk pair from true positions, or None."""
    return masks_lib.position_mask(
        q_pos,
        kv_pos,
        is_causal=config.is_causal,
        local_window_size=config.window,
        query_lengths=aux.q_len,
        key_lengths=aux.kv_len,
        query_segment_ids=q_seg,
        key_segment_ids=kv_seg,
    )


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


def _unless_all_masked(
    config: _RingConfig, mask: Array | None, step: Callable[[Any], Any], state: Any
) -> Any:
    """``step(state)``, or ``state`` untouched when ``mask`` allows nothing (the causal skip).
    Under ``config.static`` always ``step(state)``: an empty pair's masked logits add nothing
    (the engine's convention), so skipping it only saves time."""
    if mask is None or config.static:
        return step(state)
    return lax.cond(jnp.any(mask), step, lambda s: s, state)


def _split(x: Array | None, parts: int, axis: int = 1) -> list[Any]:
    """``x`` cut into ``parts`` equal pieces along ``axis`` (None stays None)."""
    if x is None:
        return [None] * parts
    return jnp.split(x, parts, axis=axis) if parts > 1 else [x]
