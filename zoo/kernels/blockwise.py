"""Memory-efficient scaled dot-product attention: the online-softmax engine on dot products.

The same call and numbers as :func:`zoo.kernels.dot_product_attention` (Vaswani et al. 2017,
eq. (1)), in memory linear in T and S: Rabe & Staats 2021 and Dao et al. 2022
(FlashAttention), run by :mod:`zoo.kernels._online`. This file is the block's score, scaled
``Q K^T`` plus bias under the mask, its gradient, and the layout of blocks.

Every masking option is rebuilt per block from positions (:func:`zoo.kernels.masks.
position_mask`), lengths and segment ids; a mask or bias passed at full size is sliced per
block. Blocks that a causal or local-window mask (or the sequence lengths) leave empty are
never visited.

Shapes follow ``zoo.shapes``. Blocks are 3-D: ``Z = B*K`` matmul batches, ``R = G*bq`` rows
(the G query heads that share a key head stacked), ``s = bk`` key rows.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from zoo.kernels import _call, _online
from zoo.kernels import masks as masks_lib
from zoo.shapes import Array, PRNGKey

__all__ = [
    "block_rows",
    "blockwise_attention",
    "blockwise_core",
    "default_block_sizes",
    "dot_block_grads",
    "dot_block_scores",
]

# The longest blocks the automatic choice uses. On a 2-core AVX-512 CPU, B=1 N=8 H=64 at
# T = 4,096: the forward ran equally fast from 128 x 1024 to 512 x 512 query x key rows; the
# backward was 10-25% faster at 256 x 512 than at 512 x 512, 256 x 1024 or 128 x 512 (one
# block of scores, 8 heads x 256 x 512 float32 = 4 MiB, about fits the two L2 caches).
# XLA's batched matmul of one block runs faster the bigger the block (8 heads x 256 x 256:
# 117 GFLOP/s, 256 x 512: 162, 512 x 512: 213 on a quiet 2-core Xeon), so with a causal mask
# too 256 x 512 beat 256 x 256, though it skips less.
_MAX_QUERY_BLOCK = 256
_MAX_KEY_BLOCK = 512
# On GPU and TPU every block pair is a step of a loop that XLA runs as a handful of kernel
# launches, and a block's scores live in HBM rather than cache: fewer, larger blocks (a
# 512 x 1024 block of 16 heads is 32 MiB of float32 scores). Not yet tuned on a device.
_MAX_BLOCKS_ACCELERATOR = (512, 1024)
# A banded (causal or local) mask only saves work when there are blocks to skip: a short
# sequence in one block computes the whole T x S square. So banded blocks aim at 4 per axis,
# no shorter than 128 rows (causal forward+backward at B=12 N=6 H=64 T=256: 89 ms in one
# 256 x 256 block, 61 ms in 128 x 128 blocks).
_MIN_BLOCK_BANDED = 128
_BANDED_BLOCKS_PER_AXIS = 4


def default_block_sizes(
    query_length: int, key_length: int, *, banded: bool = False, platform: str = "cpu"
) -> tuple[int, int]:
    """The automatic ``(query_block_size, key_value_block_size)`` for ``T`` and ``S``.

    On CPU at most ``256`` query and ``512`` key rows (``512`` and ``1024`` on GPU and TPU);
    a longer sequence is cut into equal blocks (rounded up to a multiple of 8) so that padding
    the last block wastes little. When ``banded`` (a causal or local window mask, whose empty
    blocks are skipped) a shorter sequence is cut too, into about 4 blocks per axis of at
    least 128 rows, so that it has blocks to skip.
    """
    most_q, most_k = (
        (_MAX_QUERY_BLOCK, _MAX_KEY_BLOCK) if platform == "cpu" else _MAX_BLOCKS_ACCELERATOR
    )
    return (
        _even_block(query_length, _longest(query_length, most_q, banded)),
        _even_block(key_length, _longest(key_length, most_k, banded)),
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
) -> Array | tuple[Array, ...]:
    """Multi-head scaled dot-product attention in memory linear in the sequence lengths.

    The call of :func:`zoo.kernels.dot_product_attention` (and of
    ``jax.nn.dot_product_attention``) and the same numbers, to float32 rounding; shapes
    (alphabet in ``zoo.shapes``, any number of leading batch dims)::

        query  [*batch, T, N, H]      key, value  [*batch, S, K, H]      K divides N
        bias   broadcastable to [*batch, N, T, S] (float), sliced per block
        mask   broadcastable to [*batch, N, T, S] (bool, or nonzero = attend), sliced per block
        query_seq_lengths, key_value_seq_lengths [*batch] (int)
        query_segment_ids [*batch, T], key_value_segment_ids [*batch, S] (int)

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
      return_weights, module: must be False / None: the ``[B, N, T, S]`` weights are what
        this kernel never materializes. Use ``dot_product_attention`` for them.
      implementation: ``None``, ``"xla"`` or ``"blockwise"``: all this kernel (it is
        written in XLA operations).
      query_block_size, key_value_block_size: rows per query / key block (``bq``, ``bk``);
        chosen by :func:`default_block_sizes` when None. Lengths that are not multiples of
        the block size are padded internally and masked.

    Returns:
      ``[*batch, T, N, H]`` in the input dtype; with ``return_residual`` a tuple
      ``(out, lse)``, the log-sum-exp of the logits ``[*batch, T, N]`` in the input dtype. A
      query row with no key to attend returns zeros and zero gradients (jax.nn returns the
      mean of the values there), and its lse is the dtype's large negative number.
      Gradients flow to query, key, value and bias.
    """
    if implementation not in (None, "xla", "blockwise"):
        raise ValueError(
            "blockwise_attention implementation must be None, 'xla' or 'blockwise', got "
            f"{implementation!r}; zoo.kernels.dot_product_attention(implementation=...) "
            "chooses among all kernels"
        )
    core = functools.partial(
        blockwise_core,
        query_block_size=_call.check_block_size("query_block_size", query_block_size),
        key_value_block_size=_call.check_block_size("key_value_block_size", key_value_block_size),
    )
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
        forms_weights=False,
        kernel_name="blockwise_attention",
    )


def blockwise_core(
    call: _call.Call,
    want_weights: bool,
    *,
    query_block_size: int | None = None,
    key_value_block_size: int | None = None,
) -> tuple[Array, None, Array]:
    """The kernel on a normalized call (see :mod:`zoo.kernels._call`): re-layout the inputs
    into blocks, run the engine, lay the output back."""
    assert not want_weights
    B, T, S, K, G, H = call.shape
    platform = _call.platform_of(call.query)
    auto_q, auto_k = default_block_sizes(T, S, banded=call.options.banded, platform=platform)
    bq = query_block_size or auto_q
    bk = key_value_block_size or auto_k
    nq, nk = -(-T // bq), -(-S // bk)
    Tp, Sp = nq * bq, nk * bk

    # Blocks are [Z, R, H] with Z = B*K matmul batches and R = G*bq rows: the G query heads
    # that share a key head stack their rows, so each block's Q K^T is one batch of
    # [G*bq, H] x [H, bk] matmuls, and one block is one contiguous slab. (With 5-D blocks
    # XLA gave the size-1 axes of B = 1 or G = 1 arbitrary layouts and then spent a full
    # pass over the scores copying between layouts that are the same bytes.)
    q = _online.pad_axis(call.query, 1, Tp).reshape(B, nq, bq, K, G, H).transpose(1, 0, 3, 4, 2, 5)
    q = q.reshape(nq, B * K, G * bq, H)
    k = _online.pad_axis(call.key, 1, Sp).reshape(B, nk, bk, K, H).transpose(1, 0, 3, 2, 4)
    v = _online.pad_axis(call.value, 1, Sp).reshape(B, nk, bk, K, H).transpose(1, 0, 3, 2, 4)
    k, v = k.reshape(nk, B * K, bk, H), v.reshape(nk, B * K, bk, H)

    def full(x: Array | None) -> Array | None:
        if x is None:
            return None
        if x.shape[3] != 1:
            x = _online.pad_axis(x, 3, Tp)
        return x if x.shape[4] == 1 else _online.pad_axis(x, 4, Sp)

    def ids(x: Array | None, length: int) -> Array | None:
        return None if x is None else _online.pad_axis(x, 1, length)

    score = _DotScore(
        B=B,
        K=K,
        G=G,
        S=S,
        bq=bq,
        bk=bk,
        nq=nq,
        nk=nk,
        dtype=jnp.dtype(call.query.dtype),
        options=call.options,
    )
    aux = _Aux(
        mask=full(call.mask),
        q_lengths=call.query_lengths,
        kv_lengths=call.key_lengths,
        q_segments=ids(call.query_segments, Tp),
        kv_segments=ids(call.key_segments, Sp),
        rng=call.dropout_rng,
    )
    static = platform != "cpu"
    out, lse = _online.blockwise(score, q, k, v, full(call.bias), aux, static=static)
    # [Q, B*K, G*bq, H] -> [B, T, N, H]; [Q, B*K, G*bq] -> [B, T, N].
    out = out.reshape(nq, B, K, G, bq, H).transpose(1, 0, 4, 2, 3, 5).reshape(B, Tp, K * G, H)
    lse = lse.reshape(nq, B, K, G, bq).transpose(1, 0, 4, 2, 3).reshape(B, Tp, K * G)
    return out[:, :T], None, lse[:, :T]


def block_rows(x: Array, shape: tuple[int, int, int, int, int], *, t: bool) -> Array:
    """A block broadcastable to ``shape = (B, K, G, bq, bk)`` (rank 5) as ``[Z, R, s]``, or
    ``[Z, s, R]`` when ``t``. Inside a loop fusion the broadcast is free."""
    B, K, G, bq, bk = shape
    x = jnp.broadcast_to(x, shape)
    if t:
        return x.transpose(0, 1, 4, 2, 3).reshape(B * K, bk, G * bq)
    return x.reshape(B * K, G * bq, bk)


def dot_block_scores(q_blk: Array, k_blk: Array, *, precision: Any, acc: Any, t: bool) -> Array:
    """``Q K^T`` of one block, ``[Z, R, s]`` (``[Z, s, R]`` when ``t``), in ``acc``."""
    if t:
        return jnp.einsum(
            "ZsH,ZrH->Zsr", k_blk, q_blk, precision=precision, preferred_element_type=acc
        )
    return jnp.einsum("ZrH,ZsH->Zrs", q_blk, k_blk, precision=precision, preferred_element_type=acc)


def dot_block_grads(
    q_blk: Array,
    k_blk: Array,
    d_logits_t: Array,
    *,
    scale: float,
    precision: Any,
    acc: Any,
    dq_transposed: bool = False,
) -> tuple[Array, Array]:
    """``(dQ [Z, R, H], dK [Z, s, H])`` of one block from the logits' gradient ``[Z, s, R]``
    (FlashAttention Alg. 2 lines 15-16). When ``dq_transposed``, ``k_blk`` is the key block
    transposed, ``[Z, H, s]``, and dQ comes as ``dQ^T = K^T dS^T`` ``[Z, H, R]``: both
    operands are then read in place."""
    d_s = (d_logits_t * jnp.asarray(scale, acc)).astype(q_blk.dtype)
    ein = functools.partial(jnp.einsum, precision=precision, preferred_element_type=acc)
    if dq_transposed:
        return ein("ZHs,Zsr->ZHr", k_blk, d_s), ein("Zsr,ZrH->ZsH", d_s, q_blk)
    return ein("Zsr,ZsH->ZrH", d_s, k_blk), ein("Zsr,ZrH->ZsH", d_s, q_blk)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Aux:
    """The non-differentiable arrays, laid out for slicing by block.

    ``mask`` is ``[b, k, g, t, s]`` with each axis 1 or full (t, s padded to whole blocks);
    segment ids are padded ``[B, Q*bq]`` / ``[B, P*bk]``.
    """

    mask: Array | None
    q_lengths: Array | None
    kv_lengths: Array | None
    q_segments: Array | None
    kv_segments: Array | None
    rng: PRNGKey | None


@dataclasses.dataclass(frozen=True)
class _DotScore:
    """Scaled ``Q K^T`` (+ bias, masked) of one block: the engine's BlockScore."""

    B: int
    K: int  # key/value heads
    G: int  # query heads per key/value head
    S: int  # real key length
    bq: int  # query rows per block
    bk: int  # key rows per block
    nq: int  # query blocks
    nk: int  # key blocks
    dtype: Any  # of the inputs
    options: _call.Options
    dq_transposed: bool = True

    @property
    def acc(self) -> Any:
        return jnp.promote_types(self.dtype, jnp.float32)

    @property
    def precision(self) -> Any:
        return self.options.precision

    @property
    def _shape(self) -> tuple[int, int, int, int, int]:
        return (self.B, self.K, self.G, self.bq, self.bk)

    def scores(self, q_blk, k_blk, bias, *, t: bool) -> Array:
        o = self.options
        return dot_block_scores(q_blk, k_blk, precision=o.precision, acc=self.acc, t=t)

    def logits(self, scores, bias, aux: _Aux, i, j, *, t: bool) -> Array:
        # Scale after the product, as the reference does, so rounding matches it.
        logits = scores * jnp.asarray(self.options.scale, self.acc)
        if bias is not None:
            bias = self._slice_block(bias, i, j).astype(self.acc)
            # A -inf bias is masked like a masked entry: its row may end up empty, not NaN.
            logits = jnp.maximum(logits + self._rows(bias, t), masks_lib.MASK_VALUE)
        mask = self._block_mask(aux, i, j)
        if mask is not None:
            logits = jnp.where(self._rows(mask, t), logits, masks_lib.MASK_VALUE)
        return logits

    def keep(self, aux: _Aux, i, j, *, t: bool) -> Array | None:
        if self.options.dropout_rate == 0.0:
            return None
        rate = self.options.dropout_rate
        assert aux.rng is not None
        rng = jax.random.fold_in(jax.random.fold_in(aux.rng, i), j)
        shape: tuple[int, ...] = (self.bq, self.bk)
        if not self.options.broadcast_dropout:
            shape = (self.B, self.K, self.G, *shape)
        keep = jax.random.bernoulli(rng, 1.0 - rate, shape)
        return self._rows(keep.astype(self.acc) / jnp.asarray(1.0 - rate, self.acc), t)

    def key_range(self, aux: _Aux, i) -> tuple[Array, Array]:
        return _online.banded_key_range(i, nk=self.nk, **self._band(aux))

    def query_range(self, aux: _Aux, j) -> tuple[Array, Array]:
        return _online.banded_query_range(j, nq=self.nq, **self._band(aux))

    def static_key_range(self, i: int) -> tuple[int, int]:
        return _online.banded_key_range(i, nk=self.nk, **self._band(None))

    def static_query_range(self, j: int) -> tuple[int, int]:
        return _online.banded_query_range(j, nq=self.nq, **self._band(None))

    def _band(self, aux: _Aux | None) -> dict[str, Any]:
        """What decides which blocks are empty: block sizes, causal, window, lengths."""
        o = self.options
        return dict(
            bq=self.bq,
            bk=self.bk,
            is_causal=o.is_causal,
            window=o.window,
            query_lengths=None if aux is None else aux.q_lengths,
            key_lengths=None if aux is None else aux.kv_lengths,
        )

    def grads(self, q_blk, k_blk, bias, aux, i, j, d_logits_t, d_bias):
        if bias is not None:
            d_bias = self._accumulate_bias_grad(d_bias, self._unrows_t(d_logits_t), i, j)
        o = self.options
        dq, dk = dot_block_grads(
            q_blk,
            k_blk,
            d_logits_t,
            scale=o.scale,
            precision=o.precision,
            acc=self.acc,
            dq_transposed=True,
        )
        return dq, dk, d_bias

    # Layout of block-shaped arrays.

    def _rows(self, x: Array, t: bool) -> Array:
        return block_rows(x, self._shape, t=t)

    def _unrows_t(self, x: Array) -> Array:
        """The inverse of ``_rows(., t=True)``: ``[Z, s, R]`` -> ``[B, K, G, bq, bk]``."""
        return x.reshape(self.B, self.K, self.bk, self.G, self.bq).transpose(0, 1, 3, 4, 2)

    def _block_starts(self, shape: tuple[int, ...], i, j) -> tuple[Array, ...]:
        """Where block (i, j) starts in a ``[b, k, g, t, s]`` array whose t / s axes are 1
        or full (int32, also under x64)."""
        zero = jnp.int32(0)
        t, s = shape[3:]
        return (zero, zero, zero, i * self.bq if t > 1 else zero, j * self.bk if s > 1 else zero)

    def _slice_block(self, x: Array, i, j) -> Array:
        """Block (i, j) of a ``[b, k, g, t, s]`` array whose t / s axes are 1 or full."""
        b, kk, g, t, s = x.shape
        sizes = (b, kk, g, self.bq if t > 1 else 1, self.bk if s > 1 else 1)
        return lax.dynamic_slice(x, self._block_starts(x.shape, i, j), sizes)

    def _block_mask(self, aux: _Aux, i, j) -> Array | None:
        """The combined mask of block (i, j), rank 5, broadcastable to [B, K, G, t, s]."""
        o = self.options
        q_pos = i * self.bq + jnp.arange(self.bq, dtype=jnp.int32)
        k_pos = j * self.bk + jnp.arange(self.bk, dtype=jnp.int32)
        q_ids = kv_ids = None
        if aux.q_segments is not None and aux.kv_segments is not None:
            q_ids = lax.dynamic_slice_in_dim(aux.q_segments, i * self.bq, self.bq, 1)
            kv_ids = lax.dynamic_slice_in_dim(aux.kv_segments, j * self.bk, self.bk, 1)
        positions = masks_lib.position_mask(
            q_pos,
            k_pos,
            is_causal=o.is_causal,
            local_window_size=o.window,
            query_lengths=aux.q_lengths,
            key_lengths=aux.kv_lengths,
            query_segment_ids=q_ids,
            key_segment_ids=kv_ids,
            # Keys past S are padding we added; queries past T are cut off the output.
            key_limit=self.S if self.S % self.bk else None,
        )
        user = None if aux.mask is None else self._slice_block(aux.mask, i, j)
        return masks_lib.combine_masks(
            user, None if positions is None else positions[:, None, None]
        )

    def _accumulate_bias_grad(self, d_bias: Array, d_s: Array, i, j) -> Array:
        """Add block (i, j) of dS ``[B, K, G, t, s]`` into the bias gradient, summed over
        the axes the bias broadcasts along, so that it has the bias's shape."""
        axes = tuple(
            axis for axis, size in enumerate(d_bias.shape) if size == 1 and d_s.shape[axis] != 1
        )
        block = jnp.sum(d_s, axis=axes, keepdims=True) if axes else d_s
        starts = self._block_starts(d_bias.shape, i, j)
        current = lax.dynamic_slice(d_bias, starts, block.shape)
        return lax.dynamic_update_slice(d_bias, current + block, starts)
