"""Additive (Bahdanau) attention, blockwise: no ``[B, T, S, A]`` hidden layer.

Bahdanau et al. 2014 (arXiv:1409.0473), eq. (5)-(6) and appendix A.1.2, computed in the
blockwise scheme of :mod:`zoo.kernels.chunked` (Rabe & Staats 2021; Dao et al. 2022,
FlashAttention Alg. 1-2): an online softmax over key blocks in the forward pass, and a custom
VJP that recomputes each block from the saved log-sum-exp. None of the peer libraries offers
it; long-source additive attention needs it.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from zoo.kernels.chunked import _check_block, _pad_axis
from zoo.kernels.softmax import MASK_VALUE
from zoo.shapes import Array

__all__ = ["blockwise_additive_attention"]

# Elements of one block's [B, t, s, A] hidden layer the automatic block sizes aim at (8 MiB
# in float32): big enough to amortize a loop step, small enough to stay in cache.
_ADDITIVE_BLOCK_ELEMENTS = 2**21


def blockwise_additive_attention(
    query: Array,
    projected_keys: Array,
    values: Array,
    *,
    w_query: Array,
    v: Array,
    mask: Array | None = None,
    query_block_size: int | None = None,
    key_block_size: int | None = None,
) -> Array:
    """Bahdanau attention without the ``[B, T, S, A]`` hidden layer.

    The same call (less ``return_weights``) and numbers as
    :func:`zoo.kernels.additive.additive_attention`: scores ``e_ij = v^T tanh(W q_i + k_j)``
    (Bahdanau et al. 2014, eq. (6) and appendix A.1.2), weights ``softmax_j`` (eq. (6)) and
    context ``sum_j alpha_ij values_j`` (eq. (5)). The reference forms the whole
    ``tanh(W q_i + k_j)`` tensor, B*T*S*A numbers; this kernel forms one ``[B, t, s, A]``
    block at a time with the online softmax of :func:`zoo.kernels.blockwise_attention`, and
    its custom VJP recomputes each block from the saved log-sum-exp, so memory is
    O(B*(T + S)*A) plus one block. Shapes (alphabet in ``zoo.shapes``; drop ``B`` everywhere
    for one example)::

        query [B, T, D_q]   projected_keys [B, S, A]   values [B, S, D_v]
        w_query [D_q, A]    v [A]    mask broadcastable to [B, T, S] (True = attend)

    Args:
      query, projected_keys, values, w_query, v, mask: as in ``additive_attention``.
      query_block_size, key_block_size: rows per block (``t``, ``s``); by default chosen so
        that a block's hidden layer has about 2**21 elements.

    Returns:
      The context ``[B, T, D_v]`` in the values' dtype; zeros (and zero gradients) for a
      query row with no key to attend. Gradients flow to query, projected_keys, values,
      w_query and v.
    """
    from zoo.kernels.additive import _prepare  # its input checks, so both fail alike

    query, projected_keys, values_, w_query, v, mask, batched = _prepare(
        query, projected_keys, values, w_query, v, mask
    )
    assert values_ is not None
    B, T, _ = query.shape
    S, A = projected_keys.shape[1:]
    bs = key_block_size or min(S, 512)
    bt = query_block_size or max(1, min(T, _ADDITIVE_BLOCK_ELEMENTS // (B * A * bs)))
    if key_block_size is None and B * A * bs * bt > _ADDITIVE_BLOCK_ELEMENTS:
        bs = max(1, min(S, _ADDITIVE_BLOCK_ELEMENTS // (B * A * bt)))
    _check_block("query_block_size", bt)
    _check_block("key_block_size", bs)
    nq, nk = -(-T // bt), -(-S // bs)
    config = _AdditiveConfig(T=T, S=S, bt=bt, bs=bs)

    # W_a s_{i-1} for every query once: O(B*T*A), differentiated by JAX as usual.
    projected_query = jnp.einsum("BTD,DA->BTA", query, w_query)
    pq = _pad_axis(projected_query, 1, nq * bt).reshape(B, nq, bt, A).swapaxes(0, 1)
    pk = _pad_axis(projected_keys, 1, nk * bs).reshape(B, nk, bs, A).swapaxes(0, 1)
    vals = _pad_axis(values_, 1, nk * bs).reshape(B, nk, bs, -1).swapaxes(0, 1)
    if mask is not None:
        if mask.shape[1] != 1:
            mask = _pad_axis(mask, 1, nq * bt)
        if mask.shape[2] != 1:
            mask = _pad_axis(mask, 2, nk * bs)
    context = _additive_vjp(config, pq, pk, vals, v, mask)  # [Q, B, t, D_v]
    context = context.swapaxes(0, 1).reshape(B, nq * bt, -1)[:, :T]
    return context if batched else context[0]


@dataclasses.dataclass(frozen=True)
class _AdditiveConfig:
    T: int  # real query length
    S: int  # real key length
    bt: int  # query rows per block
    bs: int  # key rows per block


def _additive_logits(config: _AdditiveConfig, pq_blk, pk_blk, v, mask, i, j):
    """(masked float32 scores [B, t, s], hidden tanh layer [B, t, s, A]) of block (i, j)."""
    # Appendix A.1.2: tanh(W_a s_{i-1} + U_a h_j) for this block's (i, j) pairs only.
    hidden = jnp.tanh(pq_blk[:, :, None, :] + pk_blk[:, None, :, :])
    scores = jnp.einsum("BtsA,A->Bts", hidden, v, preferred_element_type=jnp.float32)
    k_pos = j * config.bs + jnp.arange(config.bs)
    keep = None
    if config.S % config.bs:
        keep = jnp.broadcast_to(k_pos < config.S, scores.shape[1:])
    if mask is not None:
        b, t, s = mask.shape
        block = lax.dynamic_slice(
            mask,
            (0, i * config.bt if t > 1 else 0, j * config.bs if s > 1 else 0),
            (b, config.bt if t > 1 else 1, config.bs if s > 1 else 1),
        )
        keep = block if keep is None else keep & block
    if keep is not None:
        scores = jnp.where(keep, scores, MASK_VALUE)
    return scores, hidden


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _additive_vjp(config: _AdditiveConfig, pq, pk, vals, v, mask):
    return _additive_forward(config, pq, pk, vals, v, mask)[0]


def _additive_forward(config: _AdditiveConfig, pq, pk, vals, v, mask):
    """Online softmax over key blocks (as :func:`_forward`), one query block at a time."""
    nk, B, _, Dv = vals.shape

    def query_block(_, x):
        i, pq_blk = x

        def key_block(j, carry):
            m, l, acc = carry
            pk_blk = lax.dynamic_index_in_dim(pk, j, 0, keepdims=False)
            val_blk = lax.dynamic_index_in_dim(vals, j, 0, keepdims=False)
            scores, _ = _additive_logits(config, pq_blk, pk_blk, v, mask, i, j)
            m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
            p = jnp.exp(scores - m_new[..., None])
            correction = jnp.exp(m - m_new)
            pv = jnp.einsum(
                "Bts,BsD->BtD", p.astype(val_blk.dtype), val_blk, preferred_element_type=jnp.float32
            )
            return m_new, l * correction + jnp.sum(p, -1), acc * correction[..., None] + pv

        init = (
            jnp.full((B, config.bt), MASK_VALUE, jnp.float32),
            jnp.zeros((B, config.bt), jnp.float32),
            jnp.zeros((B, config.bt, Dv), jnp.float32),
        )
        m, l, acc = lax.fori_loop(0, nk, key_block, init)
        live = m > MASK_VALUE
        safe_l = jnp.where(live, l, 1.0)
        context = jnp.where(live[..., None], acc / safe_l[..., None], 0.0)
        lse = jnp.where(live, m + jnp.log(safe_l), jnp.inf)  # +inf: p = 0 in the backward
        return None, (context.astype(vals.dtype), lse)

    _, (context, lse) = lax.scan(query_block, None, (jnp.arange(pq.shape[0]), pq))
    return context, lse


def _additive_fwd(config: _AdditiveConfig, pq, pk, vals, v, mask):
    context, lse = _additive_forward(config, pq, pk, vals, v, mask)
    return context, (pq, pk, vals, v, mask, context, lse)


def _additive_bwd(config: _AdditiveConfig, residuals, d_context):
    """Recompute each block from the lse (FlashAttention Alg. 2), then chain through tanh."""
    pq, pk, vals, v, mask, context, lse = residuals
    delta = jnp.sum(d_context.astype(jnp.float32) * context.astype(jnp.float32), axis=-1)
    nq = pq.shape[0]

    def key_block(carry, x):
        d_pq, d_v = carry
        j, pk_blk, val_blk = x

        def query_block(i, inner):
            d_pq, d_v, d_pk, d_val = inner
            pq_blk = lax.dynamic_index_in_dim(pq, i, 0, keepdims=False)
            dc_blk = lax.dynamic_index_in_dim(d_context, i, 0, keepdims=False)
            lse_blk = lax.dynamic_index_in_dim(lse, i, 0, keepdims=False)
            delta_blk = lax.dynamic_index_in_dim(delta, i, 0, keepdims=False)
            scores, hidden = _additive_logits(config, pq_blk, pk_blk, v, mask, i, j)
            p = jnp.exp(scores - lse_blk[..., None])
            d_p = jnp.einsum("BtD,BsD->Bts", dc_blk, val_blk, preferred_element_type=jnp.float32)
            d_val = d_val + jnp.einsum(
                "Bts,BtD->BsD", p.astype(dc_blk.dtype), dc_blk, preferred_element_type=jnp.float32
            )
            d_scores = p * (d_p - delta_blk[..., None])  # softmax backward, as dS in Alg. 2
            # d tanh(x) = 1 - tanh(x)^2, times v_a (eq. (6)).
            d_hidden = d_scores[..., None] * (1.0 - jnp.square(hidden.astype(jnp.float32)))
            d_hidden = d_hidden * v.astype(jnp.float32)
            d_v = d_v + jnp.einsum("Bts,BtsA->A", d_scores, hidden.astype(jnp.float32))
            d_pq_blk = lax.dynamic_index_in_dim(d_pq, i, 0, keepdims=False) + d_hidden.sum(2)
            d_pq = lax.dynamic_update_index_in_dim(d_pq, d_pq_blk, i, 0)
            return d_pq, d_v, d_pk + d_hidden.sum(1), d_val

        init = (
            d_pq,
            d_v,
            jnp.zeros(pk_blk.shape, jnp.float32),
            jnp.zeros(val_blk.shape, jnp.float32),
        )
        d_pq, d_v, d_pk, d_val = lax.fori_loop(0, nq, query_block, init)
        return (d_pq, d_v), (d_pk.astype(pk.dtype), d_val.astype(vals.dtype))

    init = (jnp.zeros(pq.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    (d_pq, d_v), (d_pk, d_vals) = lax.scan(key_block, init, (jnp.arange(pk.shape[0]), pk, vals))
    return d_pq.astype(pq.dtype), d_pk, d_vals, d_v.astype(v.dtype), None


_additive_vjp.defvjp(_additive_fwd, _additive_bwd)
