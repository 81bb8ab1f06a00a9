"""zoo.kernels.blockwise_attention against the float64 reference and the reference kernel.

Tiny blocks (4 query rows x 3 key rows) on odd lengths (T = 11, S = 13), so every test walks
many blocks, a partial last block on both sides, and the skipping of empty blocks.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels import reference
from zoo.kernels import _online, dot_product_attention
from zoo.kernels.additive import additive_attention
from zoo.kernels.blockwise import blockwise_attention, default_block_sizes
from zoo.kernels.blockwise_additive import blockwise_additive_attention

# Prime sizes, so a swapped axis cannot go unnoticed; N = 6 query heads over K = 3.
B, T, S, N, K, H = 2, 11, 13, 6, 3, 5
BLOCKS = {"query_block_size": 4, "key_value_block_size": 3}


def _random(seed, *shapes, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


@pytest.fixture(scope="module")
def inputs():
    q, k, v, bias, d_out = _random(
        0, (B, T, N, H), (B, S, K, H), (B, S, K, H), (B, N, T, S), (B, T, N, H)
    )
    rng = np.random.default_rng(1)
    mask = rng.random((B, 1, T, S)) < 0.7
    mask[0, 0, 2, :] = False  # a fully masked query row
    return dict(q=q, k=k, v=v, bias=bias, d_out=d_out, mask=mask)


OPTIONS = {
    "plain": {},
    "mask": {"mask": True},
    "causal": {"is_causal": True},
    "window": {"local_window_size": (4, 1)},
    "causal_window": {"is_causal": True, "local_window_size": 3},
    "lengths": {
        "query_seq_lengths": np.array([11, 6], np.int32),
        "key_value_seq_lengths": np.array([13, 4], np.int32),
    },
    "segments": {
        "query_segment_ids": np.array([[0] * 4 + [1] * 7, [0] * 3 + [2] * 8], np.int32),
        "key_value_segment_ids": np.array([[0] * 6 + [1] * 7, [1] * 3 + [2] * 10], np.int32),
    },
    "all": {
        "mask": True,
        "is_causal": True,
        "local_window_size": (5, 2),
        "key_value_seq_lengths": np.array([12, 7], np.int32),
        "query_segment_ids": np.array([[0] * 11, [0] * 5 + [1] * 6], np.int32),
        "key_value_segment_ids": np.array([[0] * 13, [0] * 6 + [1] * 7], np.int32),
        "scale": 0.37,
    },
}


def _kernel_kwargs(inputs, opts):
    kwargs = dict(opts)
    if kwargs.pop("mask", False):
        kwargs["mask"] = inputs["mask"]
    return kwargs


def _loss_and_grads(attention, q, k, v, bias, d_out, **kwargs):
    """Output and gradients of sum(out * d_out) w.r.t. q, k, v, bias; one compile (jit)."""

    def loss(q, k, v, bias):
        out = attention(q, k, v, bias, **kwargs)
        return jnp.sum(out.astype(jnp.float32) * d_out), out

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (_, out), grads = grad(q, k, v, bias)
    return out, grads


def _blockwise(*args, **kwargs):
    """blockwise_attention with tiny blocks, jitted (eager op-by-op dispatch is slower)."""
    arrays = {n: x for n, x in kwargs.items() if isinstance(x, np.ndarray | jax.Array)}
    static = {n: x for n, x in kwargs.items() if n not in arrays}
    return jax.jit(lambda args, arrays: blockwise_attention(*args, **arrays, **static, **BLOCKS))(
        args, arrays
    )


@pytest.mark.parametrize("name", ["plain", "causal_window", "lengths", "all"])
def test_values_residual_and_gradients_equal_reference_kernel(inputs, name):
    """To float32 rounding, against dot_product_attention's autodiff, lse included."""
    opts = _kernel_kwargs(inputs, OPTIONS[name])
    q, k, v, bias, d_out = (inputs[n] for n in ("q", "k", "v", "bias", "d_out"))
    ours = _loss_and_grads(_blockwise, q, k, v, bias, d_out, **opts)
    theirs = _loss_and_grads(dot_product_attention, q, k, v, bias, d_out, **opts)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    _, lse = _blockwise(q, k, v, bias, return_residual=True, **opts)
    _, their_lse = dot_product_attention(q, k, v, bias, return_residual=True, **opts)
    np.testing.assert_allclose(lse, their_lse, atol=2e-6, rtol=1e-6)  # -inf rows equal too


@pytest.mark.parametrize("shape", [(T, S), (B, 1, 1, S), (1, N, T, 1)])
def test_broadcast_bias_gets_its_own_shape_of_gradient(inputs, shape):
    q, k, v, d_out = (inputs[n] for n in ("q", "k", "v", "d_out"))
    (bias,) = _random(2, shape)
    kwargs = dict(mask=inputs["mask"], is_causal=True)
    out, grads = _loss_and_grads(_blockwise, q, k, v, bias, d_out, **kwargs)
    ref_out, ref_grads = _loss_and_grads(dot_product_attention, q, k, v, bias, d_out, **kwargs)
    assert grads[3].shape == shape
    np.testing.assert_allclose(out, ref_out, atol=2e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_give_zeros_and_zero_gradients(inputs):
    q, k, v, bias, d_out = (inputs[n] for n in ("q", "k", "v", "bias", "d_out"))
    mask = np.ones((B, 1, T, S), bool)
    mask[1, 0, 3] = False
    # Query 9 of example 0 sees no key: its keys 0-6 are out of the window, 7-12 past its length.
    lengths = np.array([7, 13], np.int32)
    out, grads = _loss_and_grads(
        _blockwise,
        q,
        k,
        v,
        bias,
        d_out,
        mask=mask,
        local_window_size=(1, 1),
        key_value_seq_lengths=lengths,
    )
    dq, dk, _, dbias = grads
    for x in (out, *grads):
        assert np.isfinite(np.asarray(x)).all()
    for b, t in ((1, 3), (0, 9)):
        np.testing.assert_array_equal(out[b, t], 0.0)
        np.testing.assert_array_equal(dq[b, t], 0.0)
        np.testing.assert_array_equal(dbias[b, :, t], 0.0)
    np.testing.assert_array_equal(dk[0, 7:], 0.0)  # keys past the length get no gradient
    assert np.abs(out[1, 2]).sum() > 0


def test_mqa_and_gqa_equal_repeated_heads(inputs):
    q, k, v, d_out = (inputs[n] for n in ("q", "k", "v", "d_out"))
    k1, v1 = k[:, :, :1], v[:, :, :1]
    repeated = [np.repeat(x, N, axis=2) for x in (k1, v1)]
    out, (dq, dk, dv, _) = _loss_and_grads(_blockwise, q, k1, v1, None, d_out, is_causal=True)
    rep_out, (rep_dq, rep_dk, rep_dv, _) = _loss_and_grads(
        _blockwise, q, *repeated, None, d_out, is_causal=True
    )
    np.testing.assert_allclose(out, rep_out, atol=1e-6)
    np.testing.assert_allclose(dq, rep_dq, atol=1e-6)
    # One shared head's gradient is the sum of its N copies' gradients.
    np.testing.assert_allclose(dk, rep_dk.sum(2, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(dv, rep_dv.sum(2, keepdims=True), atol=1e-5)


def test_bfloat16_keeps_dtype_and_matches_reference(inputs):
    q, k, v, bias, d_out = (inputs[n] for n in ("q", "k", "v", "bias", "d_out"))
    low = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    out, grads = _loss_and_grads(_blockwise, *low, bias, d_out, mask=inputs["mask"])
    assert out.dtype == jnp.bfloat16
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3 + [jnp.float32]
    mask = reference.attention_mask(B, T, S, N=N, mask=inputs["mask"])
    ref_out, _ = reference.attention_forward(q, k, v, bias=bias, mask=mask)
    ref_grads = reference.attention_backward(q, k, v, d_out, bias=bias, mask=mask)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=5e-2, rtol=5e-2)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=1e-1, rtol=5e-2)


def test_huge_logits_do_not_overflow(inputs):
    q, k, v, bias = (inputs[n] for n in ("q", "k", "v", "bias"))
    out, grads = _loss_and_grads(
        _blockwise, q, k, v, 1e4 * bias, inputs["d_out"], mask=inputs["mask"]
    )
    for x in (out, *grads):
        assert np.isfinite(np.asarray(x)).all()
    # With logits this far apart each live row picks its single largest logit.
    masked = np.where(np.broadcast_to(inputs["mask"], (B, N, T, S)), bias, -np.inf)
    top = np.argmax(masked[0, 0, 0])
    np.testing.assert_allclose(out[0, 0, 0], v[0, top, 0], atol=1e-5)


def test_dispatch_from_dot_product_attention(inputs):
    q, k, v, bias = (inputs[n] for n in ("q", "k", "v", "bias"))
    kwargs = dict(mask=inputs["mask"], is_causal=True)
    np.testing.assert_allclose(
        dot_product_attention(q, k, v, bias, implementation="blockwise", **kwargs),
        dot_product_attention(q, k, v, bias, **kwargs),
        atol=2e-6,
    )
    with pytest.raises(NotImplementedError, match="blockwise: cannot return the weights"):
        dot_product_attention(q, k, v, implementation="blockwise", return_weights=True)


def _dropout_pattern(rate, seed, broadcast=True):
    """The kept-and-rescaled weights [B, N, T, S] recovered by probing the kernel.

    With q = 0 every live weight is 1 / S; with v = the identity (H = S), output column s
    is then exactly weight s: out[b, t, n, s] = keep[b, n, t, s] / ((1 - rate) * S).
    """
    q = np.zeros((B, T, N, S), np.float32)
    eye = np.broadcast_to(np.eye(S, dtype=np.float32)[None, :, None], (B, S, K, S))
    out = _blockwise(
        q,
        eye,
        eye,
        dropout_rate=rate,
        dropout_rng=jax.random.key(seed),
        broadcast_dropout=broadcast,
    )
    return np.asarray(out).transpose(0, 2, 1, 3) * S  # [B, N, T, S]: 0 or 1 / (1 - rate)


def test_dropout_pattern_is_deterministic_unbiased_and_shared():
    rate = 0.3
    pattern = _dropout_pattern(rate, seed=0)
    np.testing.assert_allclose(np.unique(pattern.round(5)), [0.0, round(1 / (1 - rate), 5)])
    np.testing.assert_array_equal(pattern, _dropout_pattern(rate, seed=0))
    assert (pattern != _dropout_pattern(rate, seed=1)).any()
    # broadcast_dropout: one [T, S] pattern for every example and head.
    np.testing.assert_array_equal(pattern, np.broadcast_to(pattern[:1, :1], pattern.shape))
    apart = _dropout_pattern(rate, seed=0, broadcast=False)
    assert (apart != apart[:1, :1]).any()
    # Keep probability 1 - rate: ~1.4% of the 2 * 6 * 11 * 13 independent draws is 3 sigma.
    kept = (apart > 0).mean()
    assert abs(kept - (1 - rate)) < 0.04, kept


def test_dropout_gradients_match_reference_with_the_same_pattern(inputs):
    """Forward and backward draw the same pattern: compare with the plain formula using it."""
    rate, seed = 0.4, 5
    pattern = _dropout_pattern(rate, seed=seed, broadcast=False)
    q, k, v, bias, d_out = (inputs[n] for n in ("q", "k", "v", "bias", "d_out"))
    kwargs = dict(dropout_rate=rate, dropout_rng=jax.random.key(seed), broadcast_dropout=False)
    out, grads = _loss_and_grads(_blockwise, q, k, v, bias, d_out, mask=inputs["mask"], **kwargs)

    def plain(q, k, v, bias):
        _, weights = dot_product_attention(q, k, v, bias, mask=inputs["mask"], return_weights=True)
        heads = jnp.repeat(v, N // K, axis=2)
        return jnp.einsum("BNTS,BSNH->BTNH", weights * pattern, heads)

    ref_out, ref_grads = _loss_and_grads(lambda *a: plain(*a), q, k, v, bias, d_out)
    np.testing.assert_allclose(out, ref_out, atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    off = _blockwise(q, k, v, deterministic=True, **kwargs)
    np.testing.assert_array_equal(off, _blockwise(q, k, v))


def test_composes_with_jit_vmap_grad_checkpoint_and_unbatched_inputs(inputs):
    q, k, v, mask = inputs["q"], inputs["k"], inputs["v"], inputs["mask"]
    batched = _blockwise(q, k, v, mask=mask, is_causal=True)
    per_example = jax.vmap(lambda q, k, v, m: _blockwise(q, k, v, mask=m, is_causal=True))(
        q, k, v, mask
    )
    np.testing.assert_allclose(per_example, batched, atol=1e-6)
    np.testing.assert_allclose(
        _blockwise(q[1], k[1], v[1], mask=mask[1]), _blockwise(q, k, v, mask=mask)[1], atol=1e-6
    )

    def loss(q, k, v):
        return jnp.sum(_blockwise(q, k, v, mask=mask) ** 2)

    plain = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2)))(q, k, v)
    per_example_grads = jax.vmap(
        jax.grad(lambda q, k, v, m: jnp.sum(_blockwise(q, k, v, mask=m) ** 2)), in_axes=(0, 0, 0, 0)
    )(q, k, v, mask)
    for a, b in zip(plain, remat, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(per_example_grads, plain[0], atol=1e-5)


def test_same_shapes_do_not_recompile(inputs):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def attend(q, k, v, lengths):
        return _blockwise(q, k, v, key_value_seq_lengths=lengths)

    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    for n in (3, 5, 13):
        attend(q, k, v, np.array([n, 2], np.int32))


def test_causal_and_window_skip_exactly_the_empty_blocks():
    """The visited blocks are exactly those with an allowed (query, key) pair."""
    for causal, window in ((True, None), (False, (5, 2)), (True, (4, 0)), (False, None)):
        nq, nk = -(-T // 4), -(-S // 3)
        band = dict(bq=4, bk=3, is_causal=causal, window=window)
        band |= dict(query_lengths=None, key_lengths=None)
        allowed = reference.attention_mask(1, T, S, is_causal=causal, window=window)[0, 0]
        needed = np.zeros((nq, nk), bool)
        for t, s in zip(*np.nonzero(allowed), strict=True):
            needed[t // 4, s // 3] = True
        visited = np.zeros_like(needed)
        for i in range(nq):
            lo, hi = _online.banded_key_range(jnp.int32(i), nk=nk, **band)
            visited[i, int(lo) : int(hi)] = True
        np.testing.assert_array_equal(visited, needed)
        transposed = np.zeros_like(needed)
        for j in range(nk):
            lo, hi = _online.banded_query_range(jnp.int32(j), nq=nq, **band)
            transposed[int(lo) : int(hi), j] = True
        np.testing.assert_array_equal(transposed, needed)
        if causal:
            assert visited.sum() < 0.7 * visited.size


def test_forward_and_backward_memory_is_linear_in_length():
    """XLA's own temp-buffer size: ~constant per token for blockwise, quadratic for reference."""

    def temp_bytes(attention, length):
        x = jax.ShapeDtypeStruct((1, length, 2, 16), jnp.float32)
        grad = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, is_causal=True)), (0, 1, 2))
        return jax.jit(grad).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    # Fixed blocks: the automatic choice grows them with the length (256 x 512 at 4,096).
    blockwise = functools.partial(
        blockwise_attention, query_block_size=256, key_value_block_size=256
    )
    small, large = temp_bytes(blockwise, 1024), temp_bytes(blockwise, 4096)
    assert large < 2 * small, (small, large)  # 4x the tokens: linear allows 4x, we need < 2x
    reference = functools.partial(dot_product_attention, implementation="reference")
    ref_small, ref_large = (temp_bytes(reference, n) for n in (1024, 4096))
    assert ref_large > 10 * ref_small  # the quadratic kernel would fail the test above


def test_default_block_sizes():
    assert default_block_sizes(11, 5) == (11, 5)
    assert default_block_sizes(256, 4096) == (256, 512)
    assert default_block_sizes(4096, 4096, platform="gpu") == (512, 1024)
    assert default_block_sizes(500, 1000) == (256, 504)  # 2 blocks each, little padding
    assert default_block_sizes(4096, 4096, banded=True) == (256, 512)
    # Banded: about 4 blocks per axis of at least 128 rows, so that short sequences skip too.
    assert default_block_sizes(256, 256, banded=True) == (128, 128)
    assert default_block_sizes(1000, 1000, banded=True) == (256, 256)  # 4 blocks of 250 -> 256
    assert default_block_sizes(2048, 2048, banded=True) == (256, 512)
    assert default_block_sizes(100, 100, banded=True) == (100, 100)
    assert default_block_sizes(1, 600, banded=True) == (1, 152)  # a decoding step: 4 of 150


@settings(max_examples=10, deadline=None)
@given(
    dims=st.tuples(
        st.integers(1, 2),
        st.integers(1, 9),
        st.integers(1, 9),
        st.sampled_from([1, 2]),
        st.sampled_from([1, 3]),
        st.integers(1, 4),
        st.integers(1, 5),
        st.integers(1, 5),
    ),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(dims, causal, seed):
    b, t, s, k_heads, groups, h, bq, bk = dims
    n = k_heads * groups
    q, k, v = _random(seed, (b, t, n, h), (b, s, k_heads, h), (b, s, k_heads, h))
    mask = np.random.default_rng(seed).random((b, n, t, s)) < 0.8
    out = blockwise_attention(
        q, k, v, mask=mask, is_causal=causal, query_block_size=bq, key_value_block_size=bk
    )
    full = reference.attention_mask(b, t, s, N=n, mask=mask, is_causal=causal)
    want, _ = reference.attention_forward(q, k, v, mask=full)
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


ERRORS = [
    (dict(return_weights=True), ValueError, r"cannot return_weights"),
    (dict(query_block_size=0), ValueError, r"query_block_size must be a positive int, got 0"),
    (dict(key_value_block_size=2.5), ValueError, r"key_value_block_size must be a positive int"),
    (dict(implementation="reference"), ValueError, r"must be None, 'xla' or 'blockwise'"),
    (dict(dropout_rate=0.1), ValueError, r"dropout_rng is required"),
    (
        dict(bias=np.zeros((B, 4, T, S))),
        ValueError,
        r"bias must broadcast to \[B, N, T, S\] = \[2, 6, 11, 13\], got shape \(2, 4, 11, 13\)",
    ),
    (
        dict(key_value_seq_lengths=np.array([13, 14], np.int32)),
        ValueError,
        r"key_value_seq_lengths must lie in \[0, S=13\], got values from 13 to 14",
    ),
]


@pytest.mark.parametrize("bad,error,message", ERRORS)
def test_bad_input_names_the_argument(inputs, bad, error, message):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    with pytest.raises(error, match=message):
        blockwise_attention(q, k, v, **bad)


# ---------------------------------------------------------------------------------------
# Additive (Bahdanau) attention, blockwise.

AB, AT, AS, AA, ADQ, ADV = 3, 5, 7, 11, 13, 19  # prime sizes, as in test_additive.py


@pytest.fixture(scope="module")
def additive_inputs():
    query, keys, values, w_query, v, d_context = _random(
        3, (AB, AT, ADQ), (AB, AS, AA), (AB, AS, ADV), (ADQ, AA), (AA,), (AB, AT, ADV)
    )
    mask = np.random.default_rng(4).random((AB, AT, AS)) < 0.7
    mask[0, 2] = False  # a query with no key
    return dict(
        query=query,
        projected_keys=keys,
        values=values,
        w_query=0.3 * w_query,
        v=v,
        d_context=d_context,
        mask=mask,
    )


def _additive_loss_and_grads(attention, inputs, mask, **kwargs):
    names = ("query", "projected_keys", "values", "w_query", "v")

    def loss(query, projected_keys, values, w_query, v):
        context = attention(
            query, projected_keys, values, w_query=w_query, v=v, mask=mask, **kwargs
        )
        return jnp.sum(context.astype(jnp.float32) * inputs["d_context"]), context

    grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(5)), has_aux=True))
    (_, context), grads = grad(*(inputs[n] for n in names))
    return context, grads


@pytest.mark.parametrize("mask_shape", [None, (AB, AT, AS), (AB, 1, AS)])
@pytest.mark.parametrize("blocks", [(2, 3), (AT, AS)])
def test_blockwise_additive_matches_additive_attention(additive_inputs, mask_shape, blocks):
    mask = None if mask_shape is None else additive_inputs["mask"][:, : mask_shape[1]]
    ours = _additive_loss_and_grads(
        blockwise_additive_attention,
        additive_inputs,
        mask,
        query_block_size=blocks[0],
        key_block_size=blocks[1],
    )
    theirs = _additive_loss_and_grads(additive_attention, additive_inputs, mask)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    if mask_shape == (AB, AT, AS):  # the query with no key: zero context, zero gradient
        np.testing.assert_array_equal(ours[0][0, 2], 0.0)
        np.testing.assert_array_equal(ours[1][0][0, 2], 0.0)


def test_blockwise_additive_unbatched_and_default_blocks(additive_inputs):
    names = ("query", "projected_keys", "values")
    one = [additive_inputs[n][1] for n in names]
    kwargs = dict(w_query=additive_inputs["w_query"], v=additive_inputs["v"])
    np.testing.assert_allclose(
        blockwise_additive_attention(*one, mask=additive_inputs["mask"][1], **kwargs),
        additive_attention(*one, mask=additive_inputs["mask"][1], **kwargs),
        atol=1e-6,
    )


def test_blockwise_additive_memory_does_not_grow_with_t_times_s():
    """The reference holds B*T*S*A hidden units; the blockwise kernel one block of them."""

    def temp_bytes(attention, length):
        query = jax.ShapeDtypeStruct((2, length, 16), jnp.float32)
        keys = jax.ShapeDtypeStruct((2, length, 32), jnp.float32)
        w_query, v = (
            jax.ShapeDtypeStruct((16, 32), jnp.float32),
            jax.ShapeDtypeStruct((32,), jnp.float32),
        )

        def loss(query, keys, w_query, v):
            return jnp.sum(attention(query, keys, keys, w_query=w_query, v=v))

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
        return grad.lower(query, keys, w_query, v).compile().memory_analysis().temp_size_in_bytes

    ours = temp_bytes(blockwise_additive_attention, 1024)
    theirs = temp_bytes(additive_attention, 1024)
    assert ours < 2 * 2**21 * 4 * 4, ours  # a few blocks' worth, independent of T*S
    assert theirs > 2 * 1024 * 1024 * 32 * 4  # the [B, T, S, A] hidden layer
