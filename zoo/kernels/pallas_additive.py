"""Additive (Bahdanau) attention as Pallas kernels: no ``[B, T, S, A]`` tensor in HBM.

Bahdanau, Cho & Bengio 2014 (arXiv:1409.0473), eq. (5)-(6) and appendix A.1.2, scored one
``[t, s, A]`` block at a time inside a kernel program, with the online softmax and the
recomputing backward pass of FlashAttention (Dao et al. 2022, arXiv:2205.14135, Alg. 1-2)
in the loop order of FlashAttention-2 (Dao 2023, arXiv:2307.08691): query blocks outside
in the forward pass and the query-gradient kernel, key blocks outside in the key/value one.

Written with generic Pallas (``pl.pallas_call``, a grid, ``pl.BlockSpec``), so that one source
lowers to Triton on GPU and to Mosaic on TPU, and runs in interpret mode on CPU. What the
backends ask of it, and how it is met:

* Triton wants every in-kernel array a power of two in size and every dot at least 16 wide:
  block sizes are powers of two (16 or more by default), ``T`` and ``S`` are padded to whole
  blocks, ``A`` to a power of two and ``D_v`` to one of at least 16, all with zeros outside
  the kernels. Zero columns of ``A`` add ``v_a * tanh(0) = 0`` to every score; zero columns
  of ``D_v`` give zero context. Padded keys are masked inside the kernels.
* Mosaic wants a block's last two dims divisible by (8, 128) or whole: per-row statistics
  (log-sum-exp, ``delta``) travel as ``[B, T, 1]``, ``v_a`` as ``[1, A]``.

On GPU the kernels ask for Triton by its compiler params (see :func:`_compiler_params`); jax
0.12 deprecates the Pallas Triton backend (a DeprecationWarning when it lowers), and its
successor, Mosaic GPU, takes warpgroup-level kernels rather than this generic one.

Grids: the forward and query-gradient kernels run one program per (batch row, query block),
each walking all key blocks with a ``fori_loop``; the key/value-gradient kernel one per
(batch row, key block), walking all query blocks. Block sizes: ``t`` query rows, ``s`` key
rows.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from zoo.kernels import _call, _online
from zoo.kernels._call import check_block_size
from zoo.kernels._checks import prepare_additive
from zoo.kernels.masks import MASK_VALUE
from zoo.shapes import Array

__all__ = ["pallas_additive_attention"]

# Default block sizes before clipping: FlashAttention-like 64 x 64 when A is small.
_DEFAULT_BLOCK = 64
# Triton's dots need every dimension to be at least 16.
_MIN_BLOCK = 16
# Elements of one program's [t, s, A] hidden layer the default block sizes stay under: it
# lives in registers / SRAM (VMEM), and the backward pass holds two of its kind at once.
_HIDDEN_ELEMENTS = 2**15


def pallas_additive_attention(
    query: Array,
    projected_keys: Array,
    values: Array,
    *,
    w_query: Array,
    v: Array,
    mask: Array | None = None,
    query_block_size: int | None = None,
    key_block_size: int | None = None,
    interpret: bool | None = None,
) -> Array:
    """Bahdanau attention in Pallas kernels, without the ``[B, T, S, A]`` hidden layer.

    The call (plus ``interpret``), checks and numbers of
    :func:`zoo.kernels.blockwise_additive.blockwise_additive_attention`: scores
    ``e_ij = v^T tanh(W q_i + k_j)`` (Bahdanau et al. 2014, eq. (6) and appendix A.1.2),
    weights ``softmax_j`` (eq. (6)), context ``sum_j alpha_ij values_j`` (eq. (5)). The
    custom VJP saves the padded inputs, the context and the float32 log-sum-exp, and
    recomputes every block from them (FlashAttention Alg. 2). Shapes (alphabet in
    ``zoo.shapes``; drop ``B`` everywhere for one example)::

        query [B, T, D_q]   projected_keys [B, S, A]   values [B, S, D_v]
        w_query [D_q, A]    v [A]    mask broadcastable to [B, T, S] (True = attend)

    Args:
      query, projected_keys, values, w_query, v, mask: as in ``additive_attention``.
      query_block_size, key_block_size: rows per block (``t``, ``s``), powers of two; Triton
        needs 16 or more. By default up to 64 each, at least 16, halved while a block's
        ``[t, s, A]`` hidden layer exceeds 2**15 elements. Either is cut to the length
        rounded up to a power of two (and to 16), beyond which a block is only padding.
      interpret: run the kernels in Pallas' interpret mode; None means exactly when the
        default backend is the CPU (which has no Pallas lowering).

    Returns:
      The context ``[B, T, D_v]`` in the values' dtype; zeros (and zero gradients) for a
      query row with no key to attend. Gradients flow to query, projected_keys, values,
      w_query and v.
    """
    query, projected_keys, values_, w_query, v, mask, batched = prepare_additive(
        query, projected_keys, values, w_query, v, mask
    )
    assert values_ is not None
    T = query.shape[1]
    S, A = projected_keys.shape[1:]
    D_v = values_.shape[-1]
    bt, bs = _block_sizes(T, S, A, query_block_size, key_block_size)
    nq, nk = -(-T // bt), -(-S // bs)
    A_pad, D_pad = _next_power_of_2(A), max(_MIN_BLOCK, _next_power_of_2(D_v))
    if interpret is None:
        interpret = _call.platform_of(query) == "cpu"

    # W_a s_{i-1} for every query once, O(B*T*A), outside the kernels: JAX differentiates it,
    # so the kernels' gradient of the projected query becomes dq and dW_a by the chain rule.
    projected_query = jnp.einsum("BTD,DA->BTA", query, w_query)
    pq = _pad(projected_query, (nq * bt, A_pad))
    pk = _pad(projected_keys, (nk * bs, A_pad))
    vals = _pad(values_, (nk * bs, D_pad))
    v_row = _online.pad_axis(v, 0, A_pad)[None]
    keep = None
    if mask is not None:
        # [b, T, S] with b = 1 or B: no A factor, so materializing it costs little. int32,
        # not bool: both Triton and Mosaic load 32-bit integers without fuss. Padding is 0,
        # so padded keys (and queries) are masked with the rest.
        keep = jnp.broadcast_to(mask, (mask.shape[0], T, S)).astype(jnp.int32)
        keep = _pad(keep, (nq * bt, nk * bs))
    config = _Config(S=S, bt=bt, bs=bs, nq=nq, nk=nk, interpret=bool(interpret))
    context = _attention(config, pq, pk, vals, v_row, keep)[:, :T, :D_v]
    return context if batched else context[0]


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call; hashable, the custom VJP's static argument."""

    S: int  # real key length; keys at or beyond it are padding
    bt: int  # query rows per block
    bs: int  # key rows per block
    nq: int  # query blocks
    nk: int  # key blocks
    interpret: bool


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _block_sizes(
    T: int, S: int, A: int, query_block_size: int | None, key_block_size: int | None
) -> tuple[int, int]:
    for name, size in (("query_block_size", query_block_size), ("key_block_size", key_block_size)):
        check_block_size(name, size)
        if size is not None and size & (size - 1):
            raise ValueError(f"{name} must be a power of two, got {size}")
    # A block longer than the (power-of-two rounded) sequence would only add padding.
    t_max = max(_MIN_BLOCK, _next_power_of_2(T))
    s_max = max(_MIN_BLOCK, _next_power_of_2(S))
    bt = min(query_block_size or _DEFAULT_BLOCK, t_max)
    bs = min(key_block_size or _DEFAULT_BLOCK, s_max)
    A_pad = _next_power_of_2(A)
    while bt * bs * A_pad > _HIDDEN_ELEMENTS:
        # Halve the longer of the sizes not given, keys first; a given size is kept.
        can_t = query_block_size is None and bt > _MIN_BLOCK
        can_s = key_block_size is None and bs > _MIN_BLOCK
        if can_s and (bs >= bt or not can_t):
            bs //= 2
        elif can_t:
            bt //= 2
        else:
            break
    return bt, bs


def _pad(x: Array, lengths: tuple[int, int]) -> Array:
    """``x [b, L1, L2]`` padded with zeros to ``[b, *lengths]``."""
    return _online.pad_axis(_online.pad_axis(x, 1, lengths[0]), 2, lengths[1])


# Every array is an explicit argument, none closed over, so the rule composes with jit, vmap
# and checkpoint. The padded values' dtype is the context's.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(config: _Config, pq, pk, vals, v_row, keep) -> Array:
    return _forward(config, pq, pk, vals, v_row, keep)[0]


def _attention_fwd(config: _Config, pq, pk, vals, v_row, keep):
    context, lse = _forward(config, pq, pk, vals, v_row, keep)
    return context, (pq, pk, vals, v_row, keep, context, lse)


def _attention_bwd(config: _Config, residuals, d_context):
    pq, pk, vals, v_row, keep, context, lse = residuals
    # D_i = rowsum(dO_i * O_i) (FlashAttention-2, sec. 3.1.2), equal to rowsum(dP_i * P_i).
    delta = jnp.sum(
        d_context.astype(jnp.float32) * context.astype(jnp.float32), axis=-1, keepdims=True
    )
    # An empty row's lse (MASK_VALUE) becomes 0, so its recomputed probabilities are 0.
    lse = _online.backward_lse(lse)
    d_pq, d_v_parts = _query_grads(config, pq, pk, vals, v_row, keep, d_context, lse, delta)
    d_pk, d_vals = _key_grads(config, pq, pk, vals, v_row, keep, d_context, lse, delta)
    d_v = jnp.sum(d_v_parts, axis=(0, 1)).astype(v_row.dtype)  # [1, A]
    return d_pq, d_pk, d_vals, d_v, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# --- inside a kernel program --------------------------------------------------------------


def _block_logits(pq: Array, pk: Array, v: Array, keep: Array | None) -> tuple[Array, Array]:
    """``(tanh(W_a s_{i-1} + U_a h_j) [t, s, A], logits [t, s])`` of one block, float32.

    Appendix A.1.2's hidden layer for the block's pairs, in float32 like the softmax: the
    v_a contraction accumulates there anyway, and a half-precision hidden layer would round
    every term of it.
    """
    hidden = jnp.tanh(pq.astype(jnp.float32)[:, None, :] + pk.astype(jnp.float32)[None, :, :])
    scores = jnp.sum(hidden * v.astype(jnp.float32)[None], axis=-1)  # eq. (6)
    return hidden, scores if keep is None else jnp.where(keep, scores, MASK_VALUE)


def _block_keep(config: _Config, mask: Array | None, j: Any) -> Array | None:
    """Which entries of key block j a block of query rows may attend, ``[t or 1, s]``."""
    if mask is not None:
        return mask != 0  # padded keys are 0 in it already
    if config.S % config.bs:
        k_pos = j * config.bs + jnp.arange(config.bs, dtype=jnp.int32)
        return (k_pos < config.S)[None, :]
    return None


def _block_d_scores(
    logits: Array, lse: Array, delta: Array, vals: Array, d_out: Array
) -> tuple[Array, Array]:
    """FlashAttention Alg. 2 lines 11-14 on one block: ``(P [t, s], dS [t, s])``.

    ``lse`` and ``delta`` are ``[t, 1]``; dS is the gradient of the logits.
    """
    p = jnp.exp(logits - lse)  # line 11
    # dP = dO V^T (line 13), contracting D_v of both in place.
    d_p = lax.dot_general(d_out, vals, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return p, p * (d_p - delta)  # line 14


def _d_hidden(d_scores: Array, hidden: Array, v: Array) -> Array:
    """The gradient of ``W_a s_{i-1} + U_a h_j`` from dS: d tanh(x) = 1 - tanh(x)^2, times
    v_a (eq. (6)); ``[t, s, A]``."""
    return d_scores[:, :, None] * (1.0 - jnp.square(hidden)) * v.astype(jnp.float32)[None]


def _unpack(refs: tuple[Any, ...], n_in: int, has_mask: bool) -> tuple[list, Any, list]:
    """The refs a kernel gets, split: (inputs before the mask, mask ref or None, rest)."""
    head, rest = list(refs[:n_in]), list(refs[n_in:])
    mask_ref = rest.pop(0) if has_mask else None
    return head, mask_ref, rest


def _forward_kernel(*refs: Any, config: _Config, has_mask: bool) -> None:
    """One (batch row, query block): FlashAttention Alg. 1 over every key block."""
    (pq_ref, pk_ref, vals_ref, v_ref), mask_ref, (out_ref, lse_ref) = _unpack(refs, 4, has_mask)
    pq, v = pq_ref[...], v_ref[...]
    bs = config.bs

    def key_block(j, state):
        m, l, acc = state
        keys = pl.ds(j * bs, bs)
        vals = vals_ref[keys, :]
        mask = None if mask_ref is None else mask_ref[:, keys]
        _, logits = _block_logits(pq, pk_ref[keys, :], v, _block_keep(config, mask, j))
        # Online softmax (Dao et al. 2022, eq. (2)-(4); Alg. 1 lines 10-12), written out rather
        # than _online.fold: its reuse-the-maximum shortcut needs a block-wide `all` under a
        # `cond`, which the Triton lowering lacks. m starts at MASK_VALUE, as the engine's:
        # a row meeting its first live key wipes what it summed before by exp(m - m_new) = 0.
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        p = jnp.exp(logits - m_new[:, None])
        correction = jnp.exp(m - m_new)
        pv = jnp.dot(p.astype(vals.dtype), vals, preferred_element_type=jnp.float32)
        return m_new, l * correction + jnp.sum(p, axis=-1), acc * correction[:, None] + pv

    t, D = out_ref.shape
    state = (
        jnp.full((t,), MASK_VALUE, jnp.float32),
        jnp.zeros((t,), jnp.float32),
        jnp.zeros((t, D), jnp.float32),
    )
    out, lse = _online.finalize(lax.fori_loop(0, config.nk, key_block, state), out_ref.dtype)
    out_ref[...] = out
    lse_ref[...] = lse[:, None]


def _query_grads_kernel(*refs: Any, config: _Config, has_mask: bool) -> None:
    """One (batch row, query block): d(W_a s) over every key block, and this block's dv_a."""
    (pq_ref, pk_ref, vals_ref, v_ref), mask_ref, rest = _unpack(refs, 4, has_mask)
    do_ref, lse_ref, delta_ref, d_pq_ref, d_v_ref = rest
    pq, v, d_out = pq_ref[...], v_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    bs = config.bs

    def key_block(j, carry):
        d_pq, d_v = carry
        keys = pl.ds(j * bs, bs)
        mask = None if mask_ref is None else mask_ref[:, keys]
        hidden, logits = _block_logits(pq, pk_ref[keys, :], v, _block_keep(config, mask, j))
        _, d_scores = _block_d_scores(logits, lse, delta, vals_ref[keys, :], d_out)
        d_pq = d_pq + jnp.sum(_d_hidden(d_scores, hidden, v), axis=1)
        # e_ij = v_a . tanh(...), so dv_a = sum_ij dS_ij tanh(...)_ij.
        d_v = d_v + jnp.sum(d_scores[:, :, None] * hidden, axis=(0, 1))[None, :]
        return d_pq, d_v

    init = (jnp.zeros(pq.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    d_pq, d_v = lax.fori_loop(0, config.nk, key_block, init)
    d_pq_ref[...] = d_pq.astype(d_pq_ref.dtype)
    d_v_ref[...] = d_v


def _key_grads_kernel(*refs: Any, config: _Config, has_mask: bool) -> None:
    """One (batch row, key block): d(U_a h) and d values over every query block."""
    (pq_ref, pk_ref, vals_ref, v_ref), mask_ref, rest = _unpack(refs, 4, has_mask)
    do_ref, lse_ref, delta_ref, d_pk_ref, d_vals_ref = rest
    pk, vals, v = pk_ref[...], vals_ref[...], v_ref[...]
    keep = _block_keep(config, None, pl.program_id(1)) if mask_ref is None else None
    bt = config.bt

    def query_block(i, carry):
        d_pk, d_vals = carry
        rows = pl.ds(i * bt, bt)
        d_out = do_ref[rows, :]
        mask = keep if mask_ref is None else mask_ref[rows, :] != 0
        hidden, logits = _block_logits(pq_ref[rows, :], pk, v, mask)
        p, d_scores = _block_d_scores(logits, lse_ref[rows, :], delta_ref[rows, :], vals, d_out)
        # dV = P^T dO (Alg. 2 line 12), contracting the query rows of both in place.
        d_vals = d_vals + lax.dot_general(
            p.astype(d_out.dtype),
            d_out,
            (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        return d_pk + jnp.sum(_d_hidden(d_scores, hidden, v), axis=0), d_vals

    init = (jnp.zeros(pk.shape, jnp.float32), jnp.zeros(vals.shape, jnp.float32))
    d_pk, d_vals = lax.fori_loop(0, config.nq, query_block, init)
    d_pk_ref[...] = d_pk.astype(d_pk_ref.dtype)
    d_vals_ref[...] = d_vals.astype(d_vals_ref.dtype)


# --- the pallas_calls -------------------------------------------------------------------


def _compiler_params() -> Any:
    """Triton's on GPU, else the backend's default.

    jax 0.10 lowers a plain ``pallas_call`` on GPU to Mosaic GPU (deprecated there, and it
    rejects these kernels), jax 0.12 to Triton: asking for Triton by its compiler params
    picks it under both. TPU refuses GPU params, so it gets none.
    """
    if jax.default_backend() == "gpu":
        from jax.experimental.pallas import triton as pl_triton

        return pl_triton.CompilerParams()
    return None


def _mask_index(keep: Array) -> Any:
    """A mask's batch block index: its own row, or row 0 when shared by the batch."""
    return (lambda b: b) if keep.shape[0] > 1 else (lambda b: 0)


def _query_side_inputs(config: _Config, pq, pk, vals, v_row, keep) -> tuple[list[Any], list[Array]]:
    """The block specs and arrays shared by the kernels with one program per (batch row,
    query block): that query block, all keys and values, ``v_a``, the block's mask rows."""
    A = pq.shape[2]
    S, D = vals.shape[1:]
    bt = config.bt
    in_specs = [
        pl.BlockSpec((None, bt, A), lambda b, i: (b, i, 0)),
        pl.BlockSpec((None, S, A), lambda b, i: (b, 0, 0)),
        pl.BlockSpec((None, S, D), lambda b, i: (b, 0, 0)),
        pl.BlockSpec((1, A), lambda b, i: (0, 0)),
    ]
    args = [pq, pk, vals, v_row]
    if keep is not None:
        mb = _mask_index(keep)
        in_specs.append(pl.BlockSpec((None, bt, S), lambda b, i: (mb(b), i, 0)))
        args.append(keep)
    return in_specs, args


def _forward(config: _Config, pq, pk, vals, v_row, keep) -> tuple[Array, Array]:
    """``(context [B, T, D_v] in the values' dtype, lse [B, T, 1] float32)``, padded."""
    B, T, _ = pq.shape
    D = vals.shape[2]
    bt = config.bt
    in_specs, args = _query_side_inputs(config, pq, pk, vals, v_row, keep)
    kernel = functools.partial(_forward_kernel, config=config, has_mask=keep is not None)
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((B, T, D), vals.dtype),
            jax.ShapeDtypeStruct((B, T, 1), jnp.float32),
        ),
        grid=(B, config.nq),
        in_specs=in_specs,
        out_specs=(
            pl.BlockSpec((None, bt, D), lambda b, i: (b, i, 0)),
            pl.BlockSpec((None, bt, 1), lambda b, i: (b, i, 0)),
        ),
        interpret=config.interpret,
        compiler_params=_compiler_params(),
        name="additive_attention_forward",
    )(*args)


def _query_grads(
    config: _Config, pq, pk, vals, v_row, keep, d_context, lse, delta
) -> tuple[Array, Array]:
    """``(d projected query [B, T, A], dv_a per program [B, nq, 1, A] float32)``."""
    B, T, A = pq.shape
    D = vals.shape[2]
    bt = config.bt
    rows = pl.BlockSpec((None, bt, 1), lambda b, i: (b, i, 0))
    in_specs, args = _query_side_inputs(config, pq, pk, vals, v_row, keep)
    in_specs += [pl.BlockSpec((None, bt, D), lambda b, i: (b, i, 0)), rows, rows]
    args += [d_context, lse, delta]
    kernel = functools.partial(_query_grads_kernel, config=config, has_mask=keep is not None)
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((B, T, A), pq.dtype),
            # Per-program partial sums, added up outside: no two programs write one block.
            jax.ShapeDtypeStruct((B, config.nq, 1, A), jnp.float32),
        ),
        grid=(B, config.nq),
        in_specs=in_specs,
        out_specs=(
            pl.BlockSpec((None, bt, A), lambda b, i: (b, i, 0)),
            pl.BlockSpec((None, None, 1, A), lambda b, i: (b, i, 0, 0)),
        ),
        interpret=config.interpret,
        compiler_params=_compiler_params(),
        name="additive_attention_query_grads",
    )(*args)


def _key_grads(
    config: _Config, pq, pk, vals, v_row, keep, d_context, lse, delta
) -> tuple[Array, Array]:
    """``(d projected keys [B, S, A], d values [B, S, D_v])``."""
    B, T, A = pq.shape
    S, D = vals.shape[1:]
    bs = config.bs
    whole = pl.BlockSpec((None, T, 1), lambda b, j: (b, 0, 0))
    in_specs = [
        pl.BlockSpec((None, T, A), lambda b, j: (b, 0, 0)),
        pl.BlockSpec((None, bs, A), lambda b, j: (b, j, 0)),
        pl.BlockSpec((None, bs, D), lambda b, j: (b, j, 0)),
        pl.BlockSpec((1, A), lambda b, j: (0, 0)),
    ]
    args = [pq, pk, vals, v_row]
    if keep is not None:
        mb = _mask_index(keep)
        in_specs.append(pl.BlockSpec((None, T, bs), lambda b, j: (mb(b), 0, j)))
        args.append(keep)
    in_specs += [pl.BlockSpec((None, T, D), lambda b, j: (b, 0, 0)), whole, whole]
    args += [d_context, lse, delta]
    kernel = functools.partial(_key_grads_kernel, config=config, has_mask=keep is not None)
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((B, S, A), pk.dtype),
            jax.ShapeDtypeStruct((B, S, D), vals.dtype),
        ),
        grid=(B, config.nk),
        in_specs=in_specs,
        out_specs=(
            pl.BlockSpec((None, bs, A), lambda b, j: (b, j, 0)),
            pl.BlockSpec((None, bs, D), lambda b, j: (b, j, 0)),
        ),
        interpret=config.interpret,
        compiler_params=_compiler_params(),
        name="additive_attention_key_grads",
    )(*args)
