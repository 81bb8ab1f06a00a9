"""The one online-softmax engine (private): blockwise attention for any block score.

Rabe & Staats 2021, "Self-attention does not need O(n^2) memory" (arXiv:2112.05682), and
Dao et al. 2022, FlashAttention (arXiv:2205.14135), Algorithm 1 (forward) and Algorithm 2
(backward), in the loop order of FlashAttention-2 (Dao 2023, arXiv:2307.08691, Alg. 1-2).

A score matrix is never formed whole. For each block of query rows the forward pass walks
the key blocks keeping, per row, the running maximum ``m``, the running normaliser ``l`` and
the unnormalised output ``acc`` (the "online softmax", Milakov & Gimelshein 2018; FlashAttention
eq. (2)-(4)): :func:`fold` adds one block, :func:`finalize` ends a row. Only the
log-sum-exp ``m + log l`` is kept for the backward pass, which recomputes each block's
probabilities from it (Alg. 2 line 11): :func:`block_backward`. Memory is linear in the
sequence lengths both ways.

What differs between kernels is the score of one block and its gradient, a
:class:`BlockScore`: scaled dot products (:mod:`zoo.kernels.blockwise`, and per visiting block
in :mod:`zoo.kernels.ring`) or Bahdanau's ``v^T tanh(W q + k)``
(:mod:`zoo.kernels.blockwise_additive`). :func:`blockwise` is the loop and the custom VJP
around any of them.

One convention for a row with nothing to attend (every logit masked, i.e. at
``MASK_VALUE``): its output is zeros, its gradients zero, and its log-sum-exp is
``MASK_VALUE``. Nothing here ever produces ``inf`` or NaN from finite inputs.

Blocks are 3-D so that every product is one batched matmul: ``Z`` batches, ``R`` query rows
(``r`` in einsums), ``s`` key rows; the forward pass works on ``[Z, R, s]`` scores, the
backward pass on transposed ``[Z, s, R]`` ones (its products contracting over queries,
``dV = P^T dO`` and ``dK = dS^T Q``, then read the scores in place). Stacked inputs carry the
block index first: ``[Q, Z, R, .]`` for queries, ``[P, Z, s, .]`` for keys and values.
"""

import functools
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.kernels.masks import MASK_VALUE
from zoo.shapes import Array

__all__ = [
    "BlockScore",
    "backward_lse",
    "banded_key_range",
    "banded_query_range",
    "block_backward",
    "blockwise",
    "finalize",
    "fold",
    "initial_state",
    "pad_axis",
]

State = tuple[Array, Array, Array]  # (m [Z, R], l [Z, R], acc [Z, R, D])

# While every exp(logit - m) of a block stays below e^28 (about 2**40) the running maximum m
# is kept: exact arithmetic either way (any m works in softmax(x) = exp(x - m) / sum exp(x - m);
# it only has to keep exp from overflowing), and it saves the row-max pass over the block.
# Exponents are clipped at that bound, so a block that would exceed it (and the first block,
# where m is still MASK_VALUE) is seen to, and takes the usual online-softmax update.
_REUSE_MAX_EXPONENT = 28.0


class BlockScore(Protocol):
    """The score of one block of a blockwise kernel and its gradient (hashable: static).

    ``q_blk`` is one query block ``[Z, R, .]``, ``k_blk`` one key block ``[Z, s, .]``,
    ``params`` the differentiable arrays besides queries, keys and values (a pytree, may be
    None), ``aux`` the non-differentiable ones; ``i``, ``j`` are the block indices.
    """

    @property
    def dq_transposed(self) -> bool:
        """Whether ``grads`` takes the key block transposed, ``[Z, ., s]``, and gives the
        query part transposed, ``[Z, ., R]``: the dot product's ``dQ^T = K^T dS^T`` then
        reads both operands in place."""
        ...

    @property
    def precision(self) -> Any:
        """Of the engine's products with values (``P V``, ``dO V^T``, ``P^T dO``)."""
        ...

    def scores(self, q_blk: Array, k_blk: Array, params: Any, *, t: bool) -> Array:
        """The block's raw scores (its products), ``[Z, R, s]``, or ``[Z, s, R]`` when ``t``."""
        ...

    def logits(self, scores: Array, params: Any, aux: Any, i: Array, j: Array, *, t: bool) -> Array:
        """The scores finished elementwise (scaled, bias, masked entries at ``MASK_VALUE``):
        XLA fuses it into whatever reads the logits, so they are never stored."""
        ...

    def keep(self, aux: Any, i: Array, j: Array, *, t: bool) -> Array | None:
        """Dropout's ``keep / (1 - rate)`` of block (i, j) in the logits' layout, or None."""
        ...

    def key_range(self, aux: Any, i: Array) -> tuple[Array, Array]:
        """Key blocks ``[lo, hi)`` query block i can see (int32)."""
        ...

    def query_range(self, aux: Any, j: Array) -> tuple[Array, Array]:
        """Query blocks ``[lo, hi)`` that can see key block j (int32)."""
        ...

    def static_key_range(self, i: int) -> tuple[int, int]:
        """Key blocks ``[lo, hi)`` query block i may see, from what is static (positions,
        not lengths): what the static schedule enumerates."""
        ...

    def static_query_range(self, j: int) -> tuple[int, int]:
        """Query blocks ``[lo, hi)`` that may see key block j, from what is static."""
        ...

    def grads(
        self,
        q_blk: Array,
        k_blk: Array,
        params: Any,
        aux: Any,
        i: Array,
        j: Array,
        d_logits_t: Array,
        d_params: Any,
    ) -> tuple[Array, Array, Any]:
        """From ``dS^T [Z, s, R]``: (dq part ``[Z, R, .]``, dk part ``[Z, s, .]``, d_params
        with this block's share added). With ``dq_transposed``, ``k_blk`` is the key block
        transposed, ``[Z, ., s]``, and the dq part is ``[Z, ., R]``."""
        ...


def initial_state(Z: int, R: int, D: int, dtype: Any) -> State:
    """Rows that have seen nothing: m at MASK_VALUE (not -inf: masked logits equal it exactly,
    so a row stays there until it meets a key it may attend; whatever it summed before that
    is wiped by exp(MASK_VALUE - m_new) = 0 when it does)."""
    return (
        jnp.full((Z, R), MASK_VALUE, dtype),
        jnp.zeros((Z, R), dtype),
        jnp.zeros((Z, R, D), dtype),
    )


def fold(
    state: State, scores: Array, to_logits: Any, weighted_values: Any, *, reuse_max: bool = True
) -> State:
    """Add one block to the running state.

    ``to_logits(scores)`` is the block's logits ``[Z, R, s]``, elementwise in ``scores``
    (so it is recomputed where needed rather than stored); ``weighted_values(p)`` is the
    block's ``p @ V`` (after dropout), ``[Z, R, D]``. With ``reuse_max`` a block whose
    exponents fit keeps the running maximum (a ``lax.cond`` per block: a saving on CPU, a
    host round trip on GPU).
    """
    m, l, acc = state

    def new_max(p: Array | None, scores: Array) -> State:
        logits = to_logits(scores)
        # Online softmax (Dao et al. 2022, eq. (2)-(4); Alg. 1 lines 10-12): rescale the
        # running sums by exp(m_old - m_new) when the running maximum grows.
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        p = jnp.exp(logits - m_new[..., None])
        correction = jnp.exp(m - m_new)
        pv = weighted_values(p)
        return m_new, l * correction + jnp.sum(p, axis=-1), acc * correction[..., None] + pv

    if not reuse_max:
        return new_max(None, scores)
    p = jnp.exp(jnp.minimum(to_logits(scores) - m[..., None], _REUSE_MAX_EXPONENT))
    row_sum = jnp.sum(p, axis=-1)

    def reuse(p: Array, scores: Array) -> State:
        return m, l + row_sum, acc + weighted_values(p)

    fits = jnp.all(row_sum < math.exp(_REUSE_MAX_EXPONENT))  # False if one was clipped
    return lax.cond(fits, reuse, new_max, p, scores)


def finalize(state: State, dtype: Any) -> tuple[Array, Array]:
    """``(out [Z, R, D] in dtype, lse [Z, R])``; an empty row gives zeros and MASK_VALUE."""
    m, l, acc = state
    live = m > MASK_VALUE
    safe_l = jnp.where(live, l, 1.0)
    out = jnp.where(live[..., None], acc / safe_l[..., None], 0.0)
    return out.astype(dtype), jnp.where(live, m + jnp.log(safe_l), MASK_VALUE)


def backward_lse(lse: Array) -> Array:
    """The log-sum-exp the backward pass subtracts: an empty row's becomes 0, so that every
    probability it recomputes is exp(MASK_VALUE - 0) = 0 exactly."""
    return jnp.where(lse > MASK_VALUE, lse, 0.0)


def block_backward(
    logits_t: Array,
    lse: Array,
    delta: Array,
    v_blk: Array,
    do_blk: Array,
    keep: Array | None,
    precision: Any = None,
) -> tuple[Array, Array]:
    """One block of FlashAttention's backward (Alg. 2 lines 11-14), transposed.

    ``logits_t [Z, s, R]``; ``lse`` and ``delta = rowsum(dO * O)`` ``[Z, R]`` (from
    :func:`backward_lse`); ``v_blk [Z, s, D]``; ``do_blk [Z, R, D]``. Returns
    ``(dS^T [Z, s, R], dV part [Z, s, D])``; ``dS`` is the gradient of the logits.
    """
    acc = logits_t.dtype
    p = jnp.exp(logits_t - lse[:, None, :])  # P^T, line 11
    d_p = _matmul("ZsD,ZrD->Zsr", v_blk, do_blk, precision, acc)  # dP^T = V dO^T, line 13
    p_kept = p
    if keep is not None:
        p_kept, d_p = p * keep, d_p * keep
    d_v = _matmul("Zsr,ZrD->ZsD", p_kept.astype(do_blk.dtype), do_blk, precision, acc)
    return p * (d_p - delta[:, None, :]), d_v  # line 14


def banded_key_range(
    i: Any,
    *,
    bq: int,
    bk: int,
    nk: int,
    is_causal: bool,
    window: tuple[int, int] | None,
    query_lengths: Array | None,
    key_lengths: Array | None,
) -> tuple[Any, Any]:
    """Key blocks ``[lo, hi)`` that query block i can see under causal, window and lengths
    (``bq`` / ``bk`` rows per query / key block, ``nk`` key blocks). For a Python int ``i``
    and no lengths, Python ints (the static schedule's)."""
    xp = _xp(i, query_lengths, key_lengths)
    first = i * bq  # first and last query position of the block
    last = first + bq - 1
    lo, hi = xp.int32(0), xp.int32(nk)
    if is_causal:
        hi = xp.minimum(hi, last // bk + 1)
    if window is not None:
        left, right = window
        lo = xp.maximum(lo, (first - left) // bk)
        hi = xp.minimum(hi, (last + right) // bk + 1)
    if key_lengths is not None:
        hi = jnp.minimum(hi, -(-jnp.max(key_lengths) // bk))
    if query_lengths is not None:
        hi = jnp.where(first < jnp.max(query_lengths), hi, lo)
    return _ints(xp, lo, xp.maximum(hi, lo))


def banded_query_range(
    j: Any,
    *,
    bq: int,
    bk: int,
    nq: int,
    is_causal: bool,
    window: tuple[int, int] | None,
    query_lengths: Array | None,
    key_lengths: Array | None,
) -> tuple[Any, Any]:
    """Query blocks ``[lo, hi)`` that can see key block j (the transpose of the above)."""
    xp = _xp(j, query_lengths, key_lengths)
    first = j * bk
    last = first + bk - 1
    lo, hi = xp.int32(0), xp.int32(nq)
    if is_causal:
        lo = xp.maximum(lo, first // bq)
    if window is not None:
        left, right = window
        lo = xp.maximum(lo, (first - right) // bq)
        hi = xp.minimum(hi, (last + left) // bq + 1)
    if query_lengths is not None:
        hi = jnp.minimum(hi, -(-jnp.max(query_lengths) // bq))
    if key_lengths is not None:
        hi = jnp.where(first < jnp.max(key_lengths), hi, lo)
    return _ints(xp, lo, xp.maximum(hi, lo))


def _xp(index: Any, *lengths: Array | None) -> Any:
    """numpy for a static block range (a Python int index, no lengths), else jax.numpy."""
    return np if isinstance(index, int) and all(x is None for x in lengths) else jnp


def _ints(xp: Any, lo: Any, hi: Any) -> tuple[Any, Any]:
    if xp is np:
        return int(lo), int(hi)
    return lo.astype(jnp.int32), hi.astype(jnp.int32)


def pad_axis(x: Array, axis: int, length: int) -> Array:
    """``x`` padded with zeros along ``axis`` to ``length`` (whole blocks)."""
    if x.shape[axis] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def blockwise(
    score: BlockScore, q: Array, k: Array, v: Array, params: Any, aux: Any, *, static: bool
) -> tuple[Array, Array]:
    """``(out [Q, Z, R, D] in v's dtype, lse [Q, Z, R])`` with a recomputing VJP.

    ``q [Q, Z, R, .]``, ``k [P, Z, s, .]``, ``v [P, Z, s, D]``: the stacked blocks.
    Gradients flow to q, k, v and ``params``; ``lse`` is returned under stop_gradient.

    ``static`` chooses the schedule. False (for CPU): a loop over query blocks, each with a
    loop over the key blocks it can see, whose trip count may depend on the data (lengths),
    and the running maximum reused by a ``lax.cond`` where it can be. True (for GPU and
    TPU, where each of those is a round trip to the host): one loop over the (query block,
    key block) pairs that positions leave visible, enumerated at trace time, and what
    lengths mask only predicated.
    """
    out, lse = _blockwise_vjp(score, static, q, k, v, params, aux)
    return out, lax.stop_gradient(lse)


# Every array is an explicit argument (none is closed over), so the rule composes with jit,
# vmap and checkpoint.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _blockwise_vjp(score: BlockScore, static: bool, q, k, v, params, aux) -> tuple[Array, Array]:
    return _forward(score, static, q, k, v, params, aux)


def _blockwise_fwd(score: BlockScore, static: bool, q, k, v, params, aux):
    out, lse = _forward(score, static, q, k, v, params, aux)
    return (out, lse), (q, k, v, params, aux, out, lse)


def _blockwise_bwd(score: BlockScore, static: bool, residuals, cotangents):
    q, k, v, params, aux, out, lse = residuals
    d_out, _ = cotangents  # lse is returned under stop_gradient
    grads = _backward(score, static, q, k, v, params, aux, out, lse, d_out)
    return (*grads, jax.tree.map(lambda _: None, aux))


_blockwise_vjp.defvjp(_blockwise_fwd, _blockwise_bwd)


def _accumulator(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def _matmul(spec: str, a: Array, b: Array, precision: Any, acc: Any) -> Array:
    return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=acc)


def _fold_block(score: BlockScore, state: State, q_blk, k, v, params, aux, i, j, *, static):
    """Fold key block j into query block i's state (FlashAttention Alg. 1 lines 8-12)."""
    k_blk = lax.dynamic_index_in_dim(k, j, 0, keepdims=False)
    v_blk = lax.dynamic_index_in_dim(v, j, 0, keepdims=False)
    scores = score.scores(q_blk, k_blk, params, t=False)
    keep = score.keep(aux, i, j, t=False)

    def weighted_values(p: Array) -> Array:
        p = p if keep is None else p * keep
        acc = _accumulator(v.dtype)
        return _matmul("Zrs,ZsD->ZrD", p.astype(v_blk.dtype), v_blk, score.precision, acc)

    def to_logits(scores: Array) -> Array:
        return score.logits(scores, params, aux, i, j, t=False)

    return fold(state, scores, to_logits, weighted_values, reuse_max=not static)


def _forward(score: BlockScore, static: bool, q, k, v, params, aux) -> tuple[Array, Array]:
    """FlashAttention Alg. 1 (FlashAttention-2 loop order: query blocks outside)."""
    if static:
        return _forward_static(score, q, k, v, params, aux)
    nq, Z, R, _ = q.shape
    D = v.shape[-1]
    acc = _accumulator(v.dtype)

    def query_block(_, x):
        i, q_blk = x
        lo, hi = score.key_range(aux, i)

        def key_block(step, state):
            # Nearest keys first: with causal or local attention (and ALiBi-like biases)
            # they tend to hold the largest logits, so m is set high early and reused.
            j = hi - 1 - step
            return _fold_block(score, state, q_blk, k, v, params, aux, i, j, static=False)

        state = lax.fori_loop(0, hi - lo, key_block, initial_state(Z, R, D, acc))
        return None, finalize(state, v.dtype)

    _, (out, lse) = lax.scan(query_block, None, (jnp.arange(nq, dtype=jnp.int32), q))
    return out, lse


def _pairs(score: BlockScore, n: int, by_query: bool) -> tuple[Array, Array, Array]:
    """The visible (query block, key block) pairs, grouped by query block (keys nearest
    first) or by key block (queries in order): int32 ``i``, ``j`` and bool ``first`` (the
    pair starts its group), each ``[pairs]``; static."""
    pairs = []
    for outer in range(n):
        lo, hi = score.static_key_range(outer) if by_query else score.static_query_range(outer)
        inner = range(hi - 1, lo - 1, -1) if by_query else range(lo, hi)
        pairs += [
            (outer, x, x == inner[0]) if by_query else (x, outer, x == inner[0]) for x in inner
        ]
    i, j, first = zip(*pairs, strict=True) if pairs else ((), (), ())
    return (
        jnp.asarray(i, jnp.int32),
        jnp.asarray(j, jnp.int32),
        jnp.asarray(first, jnp.bool_),
    )


def _forward_static(score: BlockScore, q, k, v, params, aux) -> tuple[Array, Array]:
    """Alg. 1 as one loop over the visible pairs: a query block's state restarts at its
    first pair and its output is rewritten at every pair (the last write is the row's)."""
    nq, Z, R, _ = q.shape
    D = v.shape[-1]
    acc = _accumulator(v.dtype)
    fresh = initial_state(Z, R, D, acc)

    def pair(carry, x):
        state, out, lse = carry
        i, j, first = x
        state = jax.tree.map(lambda s, s0: jnp.where(first, s0, s), state, fresh)
        q_blk = lax.dynamic_index_in_dim(q, i, 0, keepdims=False)
        state = _fold_block(score, state, q_blk, k, v, params, aux, i, j, static=True)
        out_i, lse_i = finalize(state, v.dtype)
        out = lax.dynamic_update_index_in_dim(out, out_i, i, 0)
        return (state, out, lax.dynamic_update_index_in_dim(lse, lse_i, i, 0)), None

    # A query block with no visible pair keeps zeros and MASK_VALUE: an empty row.
    init = (fresh, jnp.zeros((nq, Z, R, D), v.dtype), jnp.full((nq, Z, R), MASK_VALUE, acc))
    (_, out, lse), _ = lax.scan(pair, init, _pairs(score, nq, by_query=True))
    return out, lse


def _block_grads(
    score: BlockScore, q, k_blk, k_grad_blk, v_blk, d_out, lse, delta, params, aux, i, j, d_params
):
    """One block of Alg. 2 (lines 11-16): ``(dq part, dk part, dv part, d_params)``."""
    q_blk = lax.dynamic_index_in_dim(q, i, 0, keepdims=False)
    do_blk = lax.dynamic_index_in_dim(d_out, i, 0, keepdims=False)
    lse_blk = lax.dynamic_index_in_dim(lse, i, 0, keepdims=False)
    delta_blk = lax.dynamic_index_in_dim(delta, i, 0, keepdims=False)
    scores_t = score.scores(q_blk, k_blk, params, t=True)
    logits_t = score.logits(scores_t, params, aux, i, j, t=True)
    keep = score.keep(aux, i, j, t=True)
    d_s, dv_part = block_backward(
        logits_t, lse_blk, delta_blk, v_blk, do_blk, keep, score.precision
    )
    dq_part, dk_part, d_params = score.grads(q_blk, k_grad_blk, params, aux, i, j, d_s, d_params)
    return dq_part, dk_part, dv_part, d_params


def _add_block(x: Array, part: Array, i) -> Array:
    return lax.dynamic_update_index_in_dim(x, lax.dynamic_index_in_dim(x, i, 0, False) + part, i, 0)


def _backward(score: BlockScore, static: bool, q, k, v, params, aux, out, lse, d_out) -> tuple:
    """FlashAttention Alg. 2 (FlashAttention-2 order: key blocks outside, dq accumulated)."""
    acc = _accumulator(v.dtype)
    # D_i = rowsum(dO_i * O_i) (FlashAttention-2, sec. 3.1.2): equal to rowsum(dP_i * P_i),
    # also with dropout, since O already holds the dropped weights.
    delta = jnp.sum(d_out.astype(acc) * out.astype(acc), axis=-1)
    lse = backward_lse(lse)
    d_params0 = jax.tree.map(lambda x: jnp.zeros(x.shape, acc), params)
    dq0 = jnp.zeros(q.swapaxes(-1, -2).shape if score.dq_transposed else q.shape, acc)
    k_grad = k.swapaxes(-1, -2) if score.dq_transposed else k  # transposed once, not per block
    nk = k.shape[0]
    grads = functools.partial(
        _block_grads, score, q, d_out=d_out, lse=lse, delta=delta, params=params, aux=aux
    )

    if static:
        # Alg. 2 as one loop over the visible pairs, grouped by key block: its dK, dV
        # restart at the group's first pair and are rewritten at every pair.
        def pair(carry, x):
            dq, d_params, dk_j, dv_j, dk, dv = carry
            i, j, first = x
            dk_j, dv_j = (jnp.where(first, 0.0, d).astype(acc) for d in (dk_j, dv_j))
            k_blk, k_grad_blk, v_blk = (
                lax.dynamic_index_in_dim(a, j, 0, False) for a in (k, k_grad, v)
            )
            dq_part, dk_part, dv_part, d_params = grads(
                k_blk, k_grad_blk, v_blk, i=i, j=j, d_params=d_params
            )
            dk_j, dv_j = dk_j + dk_part, dv_j + dv_part
            dk = lax.dynamic_update_index_in_dim(dk, dk_j, j, 0)
            dv = lax.dynamic_update_index_in_dim(dv, dv_j, j, 0)
            return (_add_block(dq, dq_part, i), d_params, dk_j, dv_j, dk, dv), None

        zeros_k, zeros_v = jnp.zeros(k.shape[1:], acc), jnp.zeros(v.shape[1:], acc)
        init = (dq0, d_params0, zeros_k, zeros_v, jnp.zeros(k.shape, acc), jnp.zeros(v.shape, acc))
        (dq, d_params, _, _, dk, dv), _ = lax.scan(pair, init, _pairs(score, nk, by_query=False))
        dk, dv = dk.astype(k.dtype), dv.astype(v.dtype)
    else:

        def key_block(carry, x):
            dq, d_params = carry
            j, k_blk, k_grad_blk, v_blk = x

            def query_block(i, inner):
                dq, d_params, dk, dv = inner
                dq_part, dk_part, dv_part, d_params = grads(
                    k_blk, k_grad_blk, v_blk, i=i, j=j, d_params=d_params
                )
                return _add_block(dq, dq_part, i), d_params, dk + dk_part, dv + dv_part

            lo, hi = score.query_range(aux, j)
            init = (dq, d_params, jnp.zeros(k_blk.shape, acc), jnp.zeros(v_blk.shape, acc))
            dq, d_params, dk, dv = lax.fori_loop(lo, hi, query_block, init)
            return (dq, d_params), (dk.astype(k.dtype), dv.astype(v.dtype))

        (dq, d_params), (dk, dv) = lax.scan(
            key_block, (dq0, d_params0), (jnp.arange(nk, dtype=jnp.int32), k, k_grad, v)
        )
    d_params = jax.tree.map(lambda d, x: d.astype(x.dtype), d_params, params)
    dq = dq.swapaxes(-1, -2) if score.dq_transposed else dq
    return dq.astype(q.dtype), dk, dv, d_params
