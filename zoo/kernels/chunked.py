"""Memory-efficient attention: blockwise, with an online softmax and a recomputing VJP.

Rabe & Staats 2021, "Self-attention does not need O(n^2) memory" (arXiv:2112.05682), and
Dao et al. 2022, FlashAttention (arXiv:2205.14135), Algorithm 1 (forward) and Algorithm 2
(backward), in the loop order of FlashAttention-2 (Dao 2023, arXiv:2307.08691, Alg. 1-2).

The ``[B, N, T, S]`` score matrix is never formed. Queries are cut into blocks of ``bq`` rows
and keys/values into blocks of ``bk`` rows; for each query block the kernel walks the key
blocks keeping, per row, the running maximum ``m``, the running normaliser ``l`` and the
unnormalised output ``acc`` (the "online softmax", FlashAttention eq. (2)-(4) /
Rabe & Staats sec. 3). Only the log-sum-exp ``lse = m + log l`` (``[B, N, T]``) is kept for
the backward pass, which recomputes each block's probabilities from it (Alg. 2 line 11), so
forward and backward both use memory linear in T and S.

Every masking option of :func:`zoo.kernels.dot_product_attention` is rebuilt per block from
positions (:func:`zoo.kernels.masks.positional_mask`), lengths and segment ids; a mask or
bias the caller passes at full size is sliced per block. Blocks that a causal or local-window
mask (or the sequence lengths) leave empty are never visited.

Shapes follow ``zoo.shapes``. Inside, blocks are 3-D so that every product is one batched
matmul: ``Z = B*K`` batches, ``R = G*bq`` rows (the G query heads that share a key head
stacked; ``r`` in einsums), ``s = bk`` key rows; ``Q`` and ``P`` count query and key blocks.
The same scheme for Bahdanau's additive score is :mod:`zoo.kernels.blockwise_additive`.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from zoo.kernels import masks as masks_lib
from zoo.kernels.dot_product import _check_and_batch, _grouped
from zoo.kernels.softmax import MASK_VALUE
from zoo.shapes import Array, PRNGKey

__all__ = ["blockwise_attention", "default_block_sizes"]

# The longest blocks the automatic choice uses. On a 2-core AVX-512 CPU, B=1 N=8 H=64 at
# T = 4,096: the forward ran equally fast from 128 x 1024 to 512 x 512 query x key rows; the
# backward was 10-25% faster at 256 x 512 than at 512 x 512, 256 x 1024 or 128 x 512 (one
# block of scores, 8 heads x 256 x 512 float32 = 4 MiB, about fits the two L2 caches).
# XLA's batched matmul of one block runs faster the bigger the block (8 heads x 256 x 256:
# 117 GFLOP/s, 256 x 512: 162, 512 x 512: 213 on a quiet 2-core Xeon), so with a causal mask
# too 256 x 512 beat 256 x 256, though it skips less: forward 174 vs 241 ms at T = 4,096,
# 2.3 vs 3.4 s at 16,384; forward+backward 459 vs 673 ms at 4,096.
_MAX_QUERY_BLOCK = 256
_MAX_KEY_BLOCK = 512
# A banded (causal or local) mask only saves work when there are blocks to skip: a short
# sequence in one block computes the whole T x S square. So banded blocks aim at 4 per axis,
# no shorter than 128 rows. Causal forward+backward, B=12 N=6 H=64 T=256 (the nanoGPT
# shakespeare_char shape): 89 ms in one 256 x 256 block, 61 ms in 128 x 128 blocks; B=1 N=8 at
# T = 1,024: 51 ms at 256 x 256, 54 ms at 128 x 128, 43 ms at 256 x 512 (noise is ~10%).
_MIN_BLOCK_BANDED = 128
_BANDED_BLOCKS_PER_AXIS = 4


def default_block_sizes(
    query_length: int, key_length: int, *, banded: bool = False
) -> tuple[int, int]:
    """The automatic ``(query_block_size, key_value_block_size)`` for ``T`` and ``S``.

    At most ``256`` query and ``512`` key rows; a longer sequence is cut into equal blocks
    (rounded up to a multiple of 8) so that padding the last block wastes little. When
    ``banded`` (a causal or local window mask, whose empty blocks are skipped) a shorter
    sequence is cut too, into about 4 blocks per axis of at least 128 rows, so that it has
    blocks to skip.
    """
    return (
        _even_block(query_length, _longest(query_length, _MAX_QUERY_BLOCK, banded)),
        _even_block(key_length, _longest(key_length, _MAX_KEY_BLOCK, banded)),
    )


def _longest(length: int, most: int, banded: bool) -> int:
    if not banded:
        return most
    aim = -(-length // _BANDED_BLOCKS_PER_AXIS)
    return min(most, max(_MIN_BLOCK_BANDED, aim))


def _even_block(length: int, longest: int) -> int:
    if length <= longest:
        return max(length, 1)
    blocks = -(-length // longest)
    per_block = -(-length // blocks)
    return -(-per_block // 8) * 8


def blockwise_attention(
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
    query_block_size: int | None = None,
    key_value_block_size: int | None = None,
) -> Array | tuple[Array, Array]:
    """Multi-head scaled dot-product attention in memory linear in the sequence lengths.

    The same call and the same numbers (to float32 rounding) as
    :func:`zoo.kernels.dot_product_attention`; shapes (alphabet in ``zoo.shapes``), where the
    leading ``B`` may be absent on every argument::

        query  [B, T, N, H]      key, value  [B, S, K, H]      K divides N, G = N // K
        bias   broadcastable to [B, N, T, S] (float), sliced per block
        mask   broadcastable to [B, N, T, S] (bool, True = attend), sliced per block
        query_seq_lengths [B], key_value_seq_lengths [B] (int)
        query_segment_ids [B, T], key_value_segment_ids [B, S] (int)

    Args:
      query, key, value, bias, mask, scale, is_causal, query_seq_lengths,
      key_value_seq_lengths, local_window_size, query_segment_ids, key_value_segment_ids,
      broadcast_dropout, deterministic, return_residual, dtype, precision: as in
        :func:`zoo.kernels.dot_product_attention`.
      dropout_rate, dropout_rng: attention dropout. The keep pattern is drawn per block
        (from ``dropout_rng`` folded with the block's indices), so it is deterministic for a
        given key and block sizes but differs from the reference kernel's pattern; its
        statistics are the same (each weight kept with probability ``1 - dropout_rate``
        and scaled by ``1 / (1 - dropout_rate)``).
      return_weights: must be False: returning ``[B, N, T, S]`` weights would materialize
        exactly what this kernel exists to avoid. Use ``dot_product_attention`` for them.
      implementation: ``None`` or ``"blockwise"``, accepted for symmetry with
        ``dot_product_attention``.
      module: only ``None`` (see ``dot_product_attention``).
      query_block_size, key_value_block_size: rows per query / key block (``bq``, ``bk``);
        chosen by :func:`default_block_sizes` when None. Lengths that are not multiples of
        the block size are padded internally and masked.

    Returns:
      ``[B, T, N, H]`` in the input dtype; with ``return_residual`` a tuple
      ``(out, lse)`` with the float32 log-sum-exp of the logits ``[B, T, N]`` (``-inf`` for a
      query with no key to attend, like the reference). A query row with no key to attend
      returns zeros and zero gradients. Gradients flow to query, key, value and bias.
    """
    if implementation not in (None, "blockwise"):
        raise ValueError(
            f"blockwise_attention implementation must be None or 'blockwise', got "
            f"{implementation!r}"
        )
    if return_weights:
        raise ValueError(
            "blockwise_attention cannot return_weights: the [B, N, T, S] weights are what it "
            "never materializes; call dot_product_attention(..., return_weights=True) instead"
        )
    if module is not None:
        raise ValueError(
            "module= (flax weight sowing) is not supported by zoo kernels; "
            "blockwise_attention never forms the weights"
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

    B, T, N, H = args["query"].shape
    S, K = args["key"].shape[1:3]
    auto_q, auto_k = default_block_sizes(T, S, banded=bool(is_causal) or window is not None)
    bq = auto_q if query_block_size is None else _check_block("query_block_size", query_block_size)
    bk = (
        auto_k
        if key_value_block_size is None
        else _check_block("key_value_block_size", key_value_block_size)
    )
    config = _Config(
        B=B,
        K=K,
        G=N // K,
        T=T,
        S=S,
        bq=bq,
        bk=bk,
        scale=float(H**-0.5 if scale is None else scale),
        is_causal=bool(is_causal),
        window=window,
        dropout_rate=float(dropout_rate) if use_dropout else 0.0,
        broadcast_dropout=bool(broadcast_dropout),
        precision=precision,
    )
    out, lse = _blockwise(config, **args, dropout_rng=dropout_rng if use_dropout else None)
    if unbatched:
        out, lse = out[0], lse[0]
    return (out, lse) if return_residual else out


def _check_block(name: str, size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{name} must be a positive int, got {size!r}")
    return size


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call; hashable, so it can be a custom_vjp nondiff arg."""

    B: int
    K: int  # key/value heads
    G: int  # query heads per key/value head
    T: int  # real query length
    S: int  # real key length
    bq: int  # query rows per block
    bk: int  # key rows per block
    scale: float
    is_causal: bool
    window: tuple[int, int] | None  # (left, right)
    dropout_rate: float  # 0.0 when dropout is off
    broadcast_dropout: bool
    precision: Any

    @property
    def nq(self) -> int:
        return -(-self.T // self.bq)

    @property
    def nk(self) -> int:
        return -(-self.S // self.bk)


@dataclasses.dataclass
class _Operands:
    """The per-call arrays a block needs besides q, k, v, laid out for slicing by block.

    ``bias`` and ``mask`` are ``[b, k, g, t, s]`` with each axis 1 or full (t, s padded to
    whole blocks); ids are padded ``[B, Q*bq]`` / ``[B, P*bk]``.
    """

    bias: Array | None
    mask: Array | None
    q_lengths: Array | None
    kv_lengths: Array | None
    q_segments: Array | None
    kv_segments: Array | None
    rng: PRNGKey | None


def _blockwise(
    config: _Config,
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None,
    mask: Array | None,
    query_seq_lengths: Array | None,
    key_value_seq_lengths: Array | None,
    query_segment_ids: Array | None,
    key_value_segment_ids: Array | None,
    dropout_rng: PRNGKey | None,
) -> tuple[Array, Array]:
    """Re-layout the validated batched inputs, run the custom-VJP core, lay the output back."""
    B, T, N, H = query.shape
    K, G = config.K, config.G
    bq, bk, nq, nk = config.bq, config.bk, config.nq, config.nk
    Tp, Sp = nq * bq, nk * bk

    # Blocks are 3-D, [Z, R, H] with Z = B*K matmul batches and R = G*bq rows: the G query
    # heads that share a key head stack their rows, so each block's Q K^T is one batch of
    # [G*bq, H] x [H, bk] matmuls, and one block is one contiguous slab. (With 5-D blocks
    # XLA gave the size-1 axes of B = 1 or G = 1 arbitrary layouts and then spent a full
    # pass over the scores copying between layouts that are the same bytes.)
    q = _pad_axis(query, 1, Tp).reshape(B, nq, bq, K, G, H).transpose(1, 0, 3, 4, 2, 5)
    q = q.reshape(nq, B * K, G * bq, H)
    k = _pad_axis(key, 1, Sp).reshape(B, nk, bk, K, H).transpose(1, 0, 3, 2, 4)
    v = _pad_axis(value, 1, Sp).reshape(B, nk, bk, K, H).transpose(1, 0, 3, 2, 4)
    k, v = k.reshape(nk, B * K, bk, H), v.reshape(nk, B * K, bk, H)

    def full(x: Array | None) -> Array | None:
        if x is None:
            return None
        x = _grouped(x, K, G)
        if x.shape[3] != 1:
            x = _pad_axis(x, 3, Tp)
        if x.shape[4] != 1:
            x = _pad_axis(x, 4, Sp)
        return x

    def ids(x: Array | None, length: int) -> Array | None:
        return None if x is None else _pad_axis(x, 1, length)

    operands = _Operands(
        bias=full(bias),
        mask=full(mask),
        q_lengths=query_seq_lengths,
        kv_lengths=key_value_seq_lengths,
        q_segments=ids(query_segment_ids, Tp),
        kv_segments=ids(key_value_segment_ids, Sp),
        rng=dropout_rng,
    )
    out, lse = _attention(config, q, k, v, operands)
    # [Q, B*K, G*bq, H] -> [B, T, N, H]; [Q, B*K, G*bq] -> [B, T, N].
    out = out.reshape(nq, B, K, G, bq, H).transpose(1, 0, 4, 2, 3, 5).reshape(B, Tp, N, H)
    lse = lse.reshape(nq, B, K, G, bq).transpose(1, 0, 4, 2, 3).reshape(B, Tp, N)
    return out[:, :T], lax.stop_gradient(lse[:, :T])


def _pad_axis(x: Array, axis: int, length: int) -> Array:
    if x.shape[axis] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


# --------------------------------------------------------------------------------------
# Per-block pieces shared by the forward and the backward pass.


def _rows(config: _Config, x: Array, *, transposed: bool = False) -> Array:
    """A block-shaped array broadcastable to ``[B, K, G, t, s]`` as ``[Z, R, s]``.

    ``[Z, s, R]`` when ``transposed``. Inside a loop fusion the broadcast is free.
    """
    x = jnp.reshape(x, (1,) * (5 - x.ndim) + x.shape)
    B, K, G, bq, bk = config.B, config.K, config.G, config.bq, config.bk
    x = jnp.broadcast_to(x, (B, K, G, bq, bk))
    if transposed:
        return x.transpose(0, 1, 4, 2, 3).reshape(B * K, bk, G * bq)
    return x.reshape(B * K, G * bq, bk)


def _unrows(config: _Config, x: Array, *, transposed: bool = False) -> Array:
    """The inverse of :func:`_rows`: ``[Z, R, s]`` (or ``[Z, s, R]``) -> ``[B, K, G, t, s]``."""
    B, K, G, bq, bk = config.B, config.K, config.G, config.bq, config.bk
    if transposed:
        return x.reshape(B, K, bk, G, bq).transpose(0, 1, 3, 4, 2)
    return x.reshape(B, K, G, bq, bk)


def _block_logits(
    config: _Config,
    q_blk: Array,
    k_blk: Array,
    ops: _Operands,
    i: Array,
    j: Array,
    *,
    transposed: bool = False,
) -> Array:
    """Masked, scaled float32 logits of query block i against key block j.

    ``[Z, R, s]``, or ``[Z, s, R]`` when ``transposed``: the backward pass wants the query
    axis minor, so that its products contracting over queries (dV = P^T dO, dK = dS^T Q)
    read the scores in place instead of through a transposing copy.
    """
    if transposed:
        scores = _matmul("ZsH,ZrH->Zsr", k_blk, q_blk, config)
    else:
        scores = _matmul("ZrH,ZsH->Zrs", q_blk, k_blk, config)
    return _finish_logits(config, scores, ops, i, j, transposed=transposed)


def _finish_logits(
    config: _Config, scores: Array, ops: _Operands, i: Array, j: Array, *, transposed: bool
) -> Array:
    """Scale, add the bias, mask: elementwise, so XLA fuses it into whatever reads it."""
    # Scale after the product, as the reference does, so rounding matches it.
    logits = scores * jnp.float32(config.scale)
    if ops.bias is not None:
        bias = _slice_block(config, ops.bias, i, j).astype(jnp.float32)
        logits = logits + _rows(config, bias, transposed=transposed)
    mask = _block_mask(config, ops, i, j)
    if mask is not None:
        logits = jnp.where(_rows(config, mask, transposed=transposed), logits, MASK_VALUE)
    return logits


def _slice_block(config: _Config, x: Array, i: Array, j: Array) -> Array:
    """Block (i, j) of a ``[b, k, g, t, s]`` array whose t / s axes are 1 or full."""
    b, kk, g, t, s = x.shape
    starts = (0, 0, 0, i * config.bq if t > 1 else 0, j * config.bk if s > 1 else 0)
    sizes = (b, kk, g, config.bq if t > 1 else 1, config.bk if s > 1 else 1)
    return lax.dynamic_slice(x, starts, sizes)


def _block_mask(config: _Config, ops: _Operands, i: Array, j: Array) -> Array | None:
    """The combined mask of block (i, j), broadcastable to [B, K, G, t, s], or None."""
    q_pos = i * config.bq + jnp.arange(config.bq)
    k_pos = j * config.bk + jnp.arange(config.bk)
    positional = masks_lib.positional_mask(
        q_pos, k_pos, is_causal=config.is_causal, local_window_size=config.window
    )
    # Keys past S are padding we added; queries past T are cut off the output.
    padded = k_pos[None, :] < config.S if config.S % config.bk else None
    kv_real = q_real = same_segment = None
    if ops.kv_lengths is not None:
        kv_real = (k_pos[None, :] < ops.kv_lengths[:, None])[:, None, None, None, :]
    if ops.q_lengths is not None:
        q_real = (q_pos[None, :] < ops.q_lengths[:, None])[:, None, None, :, None]
    if ops.q_segments is not None and ops.kv_segments is not None:
        q_ids = lax.dynamic_slice_in_dim(ops.q_segments, i * config.bq, config.bq, 1)
        kv_ids = lax.dynamic_slice_in_dim(ops.kv_segments, j * config.bk, config.bk, 1)
        same_segment = (q_ids[:, :, None] == kv_ids[:, None, :])[:, None, None]
    user = None if ops.mask is None else _slice_block(config, ops.mask, i, j)
    return masks_lib.combine_masks(user, positional, padded, kv_real, q_real, same_segment)


def _dropout_keep(
    config: _Config, ops: _Operands, i: Array, j: Array, *, transposed: bool = False
) -> Array:
    """float32 keep / (1 - rate) of block (i, j) as rows: the same in forward and backward."""
    assert ops.rng is not None
    rng = jax.random.fold_in(jax.random.fold_in(ops.rng, i), j)
    shape: tuple[int, ...] = (config.bq, config.bk)
    if not config.broadcast_dropout:
        shape = (config.B, config.K, config.G, *shape)
    keep = jax.random.bernoulli(rng, 1.0 - config.dropout_rate, shape)
    keep = keep.astype(jnp.float32) / jnp.float32(1.0 - config.dropout_rate)
    return _rows(config, keep, transposed=transposed)


def _key_range(config: _Config, ops: _Operands, i: Array) -> tuple[Array, Array]:
    """Key blocks ``[lo, hi)`` that query block i can see: the rest are skipped entirely."""
    first = i * config.bq  # first and last query position of the block
    last = first + config.bq - 1
    lo, hi = jnp.int32(0), jnp.int32(config.nk)
    if config.is_causal:
        hi = jnp.minimum(hi, last // config.bk + 1)
    if config.window is not None:
        left, right = config.window
        lo = jnp.maximum(lo, (first - left) // config.bk)
        hi = jnp.minimum(hi, (last + right) // config.bk + 1)
    if ops.kv_lengths is not None:
        hi = jnp.minimum(hi, -(-jnp.max(ops.kv_lengths) // config.bk))
    if ops.q_lengths is not None:
        hi = jnp.where(first < jnp.max(ops.q_lengths), hi, lo)
    return lo, jnp.maximum(hi, lo)


def _query_range(config: _Config, ops: _Operands, j: Array) -> tuple[Array, Array]:
    """Query blocks ``[lo, hi)`` that can see key block j (the transpose of _key_range)."""
    first = j * config.bk
    last = first + config.bk - 1
    lo, hi = jnp.int32(0), jnp.int32(config.nq)
    if config.is_causal:
        lo = jnp.maximum(lo, first // config.bq)
    if config.window is not None:
        left, right = config.window
        lo = jnp.maximum(lo, (first - right) // config.bq)
        hi = jnp.minimum(hi, (last + left) // config.bq + 1)
    if ops.q_lengths is not None:
        hi = jnp.minimum(hi, -(-jnp.max(ops.q_lengths) // config.bq))
    if ops.kv_lengths is not None:
        hi = jnp.where(first < jnp.max(ops.kv_lengths), hi, lo)
    return lo, jnp.maximum(hi, lo)


# --------------------------------------------------------------------------------------
# The custom VJP.


def _attention(config: _Config, q: Array, k: Array, v: Array, ops: _Operands) -> tuple:
    """(out [Q, Z, R, H] in q's dtype, lse [Q, Z, R] float32) with a recomputing VJP."""
    return _attention_vjp(
        config,
        q,
        k,
        v,
        ops.bias,
        ops.mask,
        ops.q_lengths,
        ops.kv_lengths,
        ops.q_segments,
        ops.kv_segments,
        ops.rng,
    )


# Every array is an explicit argument (none is closed over), so the rule composes with jit,
# vmap and checkpoint; only q, k, v and bias get cotangents.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention_vjp(config: _Config, q, k, v, bias, *rest) -> tuple[Array, Array]:
    return _forward(config, q, k, v, _Operands(bias, *rest))


def _attention_fwd(config: _Config, q, k, v, bias, *rest):
    out, lse = _forward(config, q, k, v, _Operands(bias, *rest))
    return (out, lse), (q, k, v, bias, rest, out, lse)


def _attention_bwd(config: _Config, residuals, cotangents):
    q, k, v, bias, rest, out, lse = residuals
    d_out, _ = cotangents  # lse is returned under stop_gradient
    grads = _backward(config, q, k, v, _Operands(bias, *rest), out, lse, d_out)
    return (*grads, *(None for _ in rest))


_attention_vjp.defvjp(_attention_fwd, _attention_bwd)


def _matmul(spec: str, a: Array, b: Array, config: _Config) -> Array:
    return jnp.einsum(spec, a, b, precision=config.precision, preferred_element_type=jnp.float32)


# The forward pass reuses the running maximum m while a key block's exp(logits - m) stays
# below 2**40 (e^27.7) in every row: exact arithmetic either way (any m works in
# softmax(x) = exp(x - m) / sum exp(x - m); it only has to keep exp from overflowing), and
# it saves the row-max pass over each block's scores. A block that would exceed it (and the
# first block, where m is still MASK_VALUE) takes the usual online-softmax update.
_REUSE_MAX_BELOW = 2.0**40


def _forward(config: _Config, q: Array, k: Array, v: Array, ops: _Operands) -> tuple:
    """FlashAttention Alg. 1 (FlashAttention-2 loop order: query blocks outside)."""
    _, Z, R, H = q.shape

    def query_block(_, x):
        i, q_blk = x
        lo, hi = _key_range(config, ops, i)

        def key_block(step, carry):
            m, l, acc = carry
            # Nearest keys first: with causal or local attention (and ALiBi-like biases)
            # they tend to hold the largest logits, so m is set high early and reused.
            j = hi - 1 - step
            k_blk = lax.dynamic_index_in_dim(k, j, 0, keepdims=False)
            v_blk = lax.dynamic_index_in_dim(v, j, 0, keepdims=False)
            scores = _matmul("ZrH,ZsH->Zrs", q_blk, k_blk, config)
            logits = _finish_logits(config, scores, ops, i, j, transposed=False)
            p = jnp.exp(logits - m[..., None])
            row_sum = jnp.sum(p, axis=-1)

            def reuse_max(p, row_sum, scores):
                return m, l + row_sum, acc + _weighted_values(config, ops, p, v_blk, i, j)

            def new_max(p, row_sum, scores):
                # Online softmax (Dao et al. 2022, eq. (2)-(4); Alg. 1 lines 10-12): rescale
                # the running sums by exp(m_old - m_new) when the running maximum grows.
                logits = _finish_logits(config, scores, ops, i, j, transposed=False)
                m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
                p = jnp.exp(logits - m_new[..., None])
                correction = jnp.exp(m - m_new)
                pv = _weighted_values(config, ops, p, v_blk, i, j)
                return m_new, l * correction + jnp.sum(p, axis=-1), acc * correction[..., None] + pv

            fits = jnp.all(row_sum < _REUSE_MAX_BELOW)  # False for inf and NaN too
            return lax.cond(fits, reuse_max, new_max, p, row_sum, scores)

        # Start at MASK_VALUE, not -inf: masked logits equal MASK_VALUE exactly, so a row
        # stays at m == MASK_VALUE until it meets a key it may attend; any garbage summed
        # before that is wiped by exp(MASK_VALUE - m_new) = 0 when it does.
        init = (
            jnp.full((Z, R), MASK_VALUE, jnp.float32),
            jnp.zeros((Z, R), jnp.float32),
            jnp.zeros((Z, R, H), jnp.float32),
        )
        m, l, acc = lax.fori_loop(0, hi - lo, key_block, init)
        live = m > MASK_VALUE
        safe_l = jnp.where(live, l, 1.0)
        out = jnp.where(live[..., None], acc / safe_l[..., None], 0.0)
        lse = jnp.where(live, m + jnp.log(safe_l), -jnp.inf)
        return None, (out.astype(q.dtype), lse)

    _, (out, lse) = lax.scan(query_block, None, (jnp.arange(config.nq), q))
    return out, lse


def _weighted_values(
    config: _Config, ops: _Operands, p: Array, v_blk: Array, i: Array, j: Array
) -> Array:
    """``P V`` for one block, [Z, R, H] float32, after dropout on P if any."""
    if config.dropout_rate > 0.0:
        p = p * _dropout_keep(config, ops, i, j)
    return _matmul("Zrs,ZsH->ZrH", p.astype(v_blk.dtype), v_blk, config)


def _backward(
    config: _Config,
    q: Array,
    k: Array,
    v: Array,
    ops: _Operands,
    out: Array,
    lse: Array,
    d_out: Array,
) -> tuple:
    """FlashAttention Alg. 2 (FlashAttention-2 order: key blocks outside, dq accumulated).

    Works on transposed blocks ``[Z, s, R]`` (see :func:`_block_logits`), so that every
    product contracts over the minor axis of its big operand and no block of scores is
    ever copied.
    """
    # D_i = rowsum(dO_i * O_i) (FlashAttention-2, sec. 3.1.2): equal to rowsum(dP_i * P_i),
    # also with dropout, since O already holds the dropped weights.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    # A row with no key has lse = -inf; +inf there makes every recomputed p exactly 0.
    lse = jnp.where(jnp.isneginf(lse), jnp.inf, lse)
    scale = jnp.float32(config.scale)
    bias = ops.bias

    def key_block(carry, x):
        dq_t, d_bias = carry
        j, k_blk, k_t_blk, v_blk = x

        def query_block(i, inner):
            dq_t, d_bias, dk, dv = inner
            q_blk = lax.dynamic_index_in_dim(q, i, 0, keepdims=False)
            do_blk = lax.dynamic_index_in_dim(d_out, i, 0, keepdims=False)
            lse_blk = lax.dynamic_index_in_dim(lse, i, 0, keepdims=False)[:, None, :]
            delta_blk = lax.dynamic_index_in_dim(delta, i, 0, keepdims=False)[:, None, :]
            logits = _block_logits(config, q_blk, k_blk, ops, i, j, transposed=True)
            p = jnp.exp(logits - lse_blk)  # P^T, Alg. 2 line 11
            d_p = _matmul("ZsH,ZrH->Zsr", v_blk, do_blk, config)  # dP^T = V dO^T, line 13
            p_kept = p
            if config.dropout_rate > 0.0:
                keep = _dropout_keep(config, ops, i, j, transposed=True)
                p_kept = p * keep
                d_p = d_p * keep
            dv = dv + _matmul("Zsr,ZrH->ZsH", p_kept.astype(do_blk.dtype), do_blk, config)
            d_s = p * (d_p - delta_blk)  # Alg. 2 line 14, before the scale
            if d_bias is not None:
                d_s_rows = _unrows(config, d_s, transposed=True)
                d_bias = _accumulate_bias_grad(config, d_bias, d_s_rows, i, j)
            d_s = (d_s * scale).astype(q.dtype)
            # Alg. 2 line 15, as dQ^T = K^T dS^T so that both operands are read in place.
            dq_blk = lax.dynamic_index_in_dim(dq_t, i, 0, keepdims=False)
            dq_blk = dq_blk + _matmul("ZHs,Zsr->ZHr", k_t_blk, d_s, config)
            dq_t = lax.dynamic_update_index_in_dim(dq_t, dq_blk, i, 0)
            dk = dk + _matmul("Zsr,ZrH->ZsH", d_s, q_blk, config)  # line 16
            return dq_t, d_bias, dk, dv

        zeros = jnp.zeros(k_blk.shape, jnp.float32)
        lo, hi = _query_range(config, ops, j)
        dq_t, d_bias, dk, dv = lax.fori_loop(lo, hi, query_block, (dq_t, d_bias, zeros, zeros))
        return (dq_t, d_bias), (dk.astype(k.dtype), dv.astype(v.dtype))

    d_bias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
    (dq_t, d_bias), (dk, dv) = lax.scan(
        key_block,
        (jnp.zeros(q.shape, jnp.float32).swapaxes(-1, -2), d_bias0),
        (jnp.arange(config.nk), k, k.swapaxes(-1, -2), v),
    )
    if bias is not None:
        assert d_bias is not None
        d_bias = d_bias.astype(bias.dtype)
    return dq_t.swapaxes(-1, -2).astype(q.dtype), dk, dv, d_bias


def _accumulate_bias_grad(config: _Config, d_bias: Array, d_s: Array, i: Array, j: Array):
    """Add block (i, j) of dS ``[B, K, G, t, s]`` into the bias gradient.

    Sums over the axes the bias broadcasts along, so the gradient has the bias's shape.
    """
    b, kk, _, t, s = d_bias.shape
    axes = tuple(
        axis
        for axis, size in ((0, b), (1, kk), (2, kk), (3, t), (4, s))
        if size == 1 and d_s.shape[axis] != 1
    )
    block = jnp.sum(d_s, axis=axes, keepdims=True) if axes else d_s
    starts = (0, 0, 0, i * config.bq if t > 1 else 0, j * config.bk if s > 1 else 0)
    current = lax.dynamic_slice(d_bias, starts, block.shape)
    return lax.dynamic_update_slice(d_bias, current + block, starts)
