"""Additive (Bahdanau) attention, blockwise: no ``[B, T, S, A]`` hidden layer.

Bahdanau et al. 2014 (arXiv:1409.0473), eq. (5)-(6) and appendix A.1.2, on the online-softmax
engine of :mod:`zoo.kernels._online` (Rabe & Staats 2021; Dao et al. 2022, FlashAttention
Alg. 1-2): this file is the block's score ``v_a^T tanh(W_a s_{i-1} + U_a h_j)`` and its
gradient. None of the peer libraries offers it; long-source additive attention needs it.

Blocks: ``Z = B`` batches, ``R = t`` query rows, ``s`` key rows.
"""

import dataclasses

import jax.numpy as jnp
from jax import lax

from zoo.kernels import _call, _online
from zoo.kernels._call import check_block_size
from zoo.kernels._checks import prepare_additive
from zoo.kernels.masks import MASK_VALUE
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
    block at a time, and its custom VJP recomputes each block from the saved log-sum-exp,
    so memory is O(B*(T + S)*A) plus one block. Shapes (alphabet in ``zoo.shapes``; drop
    ``B`` everywhere for one example)::

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
    query, projected_keys, values_, w_query, v, mask, batched = prepare_additive(
        query, projected_keys, values, w_query, v, mask
    )
    assert values_ is not None
    B, T, _ = query.shape
    S, A = projected_keys.shape[1:]
    bs = check_block_size("key_block_size", key_block_size) or min(S, 512)
    bt = check_block_size("query_block_size", query_block_size) or max(
        1, min(T, _ADDITIVE_BLOCK_ELEMENTS // (B * A * bs))
    )
    if key_block_size is None and B * A * bs * bt > _ADDITIVE_BLOCK_ELEMENTS:
        bs = max(1, min(S, _ADDITIVE_BLOCK_ELEMENTS // (B * A * bt)))
    nq, nk = -(-T // bt), -(-S // bs)

    # W_a s_{i-1} for every query once: O(B*T*A), differentiated by JAX as usual.
    projected_query = jnp.einsum("BTD,DA->BTA", query, w_query)
    pq = _online.pad_axis(projected_query, 1, nq * bt).reshape(B, nq, bt, A).swapaxes(0, 1)
    pk = _online.pad_axis(projected_keys, 1, nk * bs).reshape(B, nk, bs, A).swapaxes(0, 1)
    vals = _online.pad_axis(values_, 1, nk * bs).reshape(B, nk, bs, -1).swapaxes(0, 1)
    if mask is not None:
        if mask.shape[1] != 1:
            mask = _online.pad_axis(mask, 1, nq * bt)
        if mask.shape[2] != 1:
            mask = _online.pad_axis(mask, 2, nk * bs)
    score = _AdditiveScore(S=S, bt=bt, bs=bs, nq=nq, nk=nk)
    static = _call.platform_of(query) != "cpu"
    context, _ = _online.blockwise(score, pq, pk, vals, v, mask, static=static)  # [Q, B, t, D_v]
    context = context.swapaxes(0, 1).reshape(B, nq * bt, -1)[:, :T]
    return context if batched else context[0]


@dataclasses.dataclass(frozen=True)
class _AdditiveScore:
    """``v_a^T tanh(W_a s_{i-1} + U_a h_j)`` of one block: the engine's BlockScore.

    Queries are ``W_a s_{i-1}`` blocks ``[B, t, A]``, keys ``U_a h_j`` blocks ``[B, s, A]``,
    ``params`` is ``v_a`` and ``aux`` the mask (``[b, t, s]``, each axis 1 or padded full).
    """

    S: int  # real key length
    bt: int  # query rows per block
    bs: int  # key rows per block
    nq: int
    nk: int
    dq_transposed: bool = False
    precision: None = None  # the einsums' default, as additive_attention's

    @staticmethod
    def _hidden_t(pq_blk: Array, pk_blk: Array) -> Array:
        """Appendix A.1.2's ``tanh(W_a s_{i-1} + U_a h_j)`` for this block's pairs,
        ``[B, s, t, A]``."""
        return jnp.tanh(pk_blk[:, :, None, :] + pq_blk[:, None, :, :])

    def scores(self, pq_blk, pk_blk, v, *, t: bool) -> Array:
        if t:
            hidden = self._hidden_t(pq_blk, pk_blk)
            return jnp.einsum("BstA,A->Bst", hidden, v, preferred_element_type=jnp.float32)
        hidden = jnp.tanh(pq_blk[:, :, None, :] + pk_blk[:, None, :, :])
        return jnp.einsum("BtsA,A->Bts", hidden, v, preferred_element_type=jnp.float32)

    def logits(self, scores, v, mask, i, j, *, t: bool) -> Array:
        keep = self._block_mask(mask, i, j)
        if keep is None:
            return scores
        return jnp.where(keep.swapaxes(1, 2) if t else keep, scores, MASK_VALUE)

    def keep(self, aux, i, j, *, t: bool) -> None:
        return None

    def key_range(self, aux, i) -> tuple[Array, Array]:
        return jnp.int32(0), jnp.int32(self.nk)

    def query_range(self, aux, j) -> tuple[Array, Array]:
        return jnp.int32(0), jnp.int32(self.nq)

    def static_key_range(self, i: int) -> tuple[int, int]:
        return 0, self.nk

    def static_query_range(self, j: int) -> tuple[int, int]:
        return 0, self.nq

    def grads(self, pq_blk, pk_blk, v, mask, i, j, d_scores_t, d_v):
        hidden = self._hidden_t(pq_blk, pk_blk).astype(jnp.float32)
        # d tanh(x) = 1 - tanh(x)^2, times v_a (eq. (6)).
        d_hidden = d_scores_t[..., None] * (1.0 - jnp.square(hidden)) * v.astype(jnp.float32)
        d_v = d_v + jnp.einsum("Bst,BstA->A", d_scores_t, hidden)
        return d_hidden.sum(1), d_hidden.sum(2), d_v

    def _block_mask(self, mask: Array | None, i, j) -> Array | None:
        """Block (i, j) of the mask and of the key padding, ``[b, t, s]``, or None."""
        keep = None
        if self.S % self.bs:
            k_pos = j * self.bs + jnp.arange(self.bs, dtype=jnp.int32)
            keep = (k_pos < self.S)[None, None, :]
        if mask is not None:
            b, t, s = mask.shape
            zero = jnp.int32(0)
            block = lax.dynamic_slice(
                mask,
                (zero, i * self.bt if t > 1 else zero, j * self.bs if s > 1 else zero),
                (b, self.bt if t > 1 else 1, self.bs if s > 1 else 1),
            )
            keep = block if keep is None else keep & block
        return keep
