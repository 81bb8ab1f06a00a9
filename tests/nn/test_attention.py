"""MultiHeadAttention: projections against a float64 hand computation, GQA, rotary, the cache."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo.kernels import dot_product_attention
from zoo.kernels.blockwise import blockwise_attention
from zoo.nn import KVCache, MultiHeadAttention

# Prime or pairwise-distinct sizes so a swapped axis fails loudly: G = N // K = 5 != K.
B, T, S, N, K, H = 3, 7, 11, 10, 2, 4
D = N * H


def make(**kwargs):
    kwargs = {"num_kv_heads": K, "use_bias": True, **kwargs}
    return MultiHeadAttention(D, N, rngs=nnx.Rngs(0), **kwargs)


# Jitted once per module configuration and shape: much faster than running op by op.
@functools.partial(nnx.jit, static_argnames=("is_causal", "return_weights"))
def attend(
    mha,
    x,
    context=None,
    *,
    mask=None,
    positions=None,
    is_causal=False,
    return_weights=False,
    rngs=None,
):
    return mha(
        x,
        context,
        mask=mask,
        positions=positions,
        is_causal=is_causal,
        return_weights=return_weights,
        rngs=rngs,
    )


@functools.partial(nnx.jit, static_argnames=("return_weights",))
def extend(mha, x, cache, *, return_weights=False):
    return mha.extend(x, cache, return_weights=return_weights)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    context = jnp.asarray(rng.normal(size=(B, S, D)), jnp.float32)
    return x, context


def reference(mha, x, context, mask=None):
    """float64 loops: head n reads key/value head n // G (Ainslie et al. 2023, GQA)."""
    p = {
        name: np.asarray(getattr(mha, name).kernel[...], np.float64)
        for name in ("query", "key", "value", "out")
    }
    b = {
        name: np.asarray(getattr(mha, name).bias[...], np.float64)
        for name in ("query", "key", "value", "out")
    }
    x, context = np.asarray(x, np.float64), np.asarray(context, np.float64)
    K, G = mha.num_kv_heads, N // mha.num_kv_heads
    q = (x @ p["query"] + b["query"]).reshape(B, -1, N, H)
    k = (context @ p["key"] + b["key"]).reshape(B, -1, K, H)
    v = (context @ p["value"] + b["value"]).reshape(B, -1, K, H)
    heads = np.zeros(q.shape)
    weights = np.zeros((B, N, q.shape[1], k.shape[1]))
    for i in range(B):
        for n in range(N):
            logits = q[i, :, n] @ k[i, :, n // G].T / np.sqrt(H)
            if mask is not None:
                logits = np.where(mask[i], logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            weights[i, n] = w
            heads[i, :, n] = w @ v[i, :, n // G]
    return heads.reshape(B, -1, N * H) @ p["out"] + b["out"], weights


def test_cross_attention_with_padding_equals_hand_computation(inputs):
    x, context = inputs
    mha = make()
    lengths = np.array([S, 4, 9])
    key_mask = np.arange(S)[None, :] < lengths[:, None]  # [B, S]
    out, weights = attend(
        mha, x, context, mask=jnp.asarray(key_mask)[:, None, None], return_weights=True
    )
    expected, expected_weights = reference(mha, x, context, mask=key_mask[:, None, :])
    assert out.shape == (B, T, D) and weights.shape == (B, N, T, S)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(weights[1, :, :, 4:], 0.0)


def test_causal_self_attention_equals_hand_computation(inputs):
    x, _ = inputs
    mha = make(num_kv_heads=None)
    out, weights = attend(mha, x, is_causal=True)
    assert weights is None
    causal = np.tril(np.ones((T, T), bool))
    expected, _ = reference(mha, x, x, mask=np.broadcast_to(causal, (B, T, T)))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_gqa_has_fewer_key_value_parameters():
    assert make().key.kernel.shape == (D, K * H)
    assert make().query.kernel.shape == (D, N * H)
    assert make(num_kv_heads=None).key.kernel.shape == (D, N * H)


def test_kernel_is_the_constructor_argument(inputs):
    x, context = inputs
    calls = []

    def spy(query, key, value, **kwargs):
        calls.append((query.shape, key.shape))
        return dot_product_attention(query, key, value, **kwargs)

    reference_out, _ = attend(make(), x, context)
    out, _ = attend(make(kernel=spy), x, context)
    blockwise_out, _ = attend(make(kernel=blockwise_attention), x, context)
    assert calls == [((B, T, N, H), (B, S, K, H))]
    np.testing.assert_allclose(out, reference_out, atol=0)
    np.testing.assert_allclose(blockwise_out, reference_out, atol=1e-5)
    # Decoding through the cache ([B, 1, T, M] mask) on the blockwise kernel too.
    reference_step, _, _ = extend(make(rotary=True), x, make().init_cache(B, T + 2))
    blockwise_step, _, _ = extend(
        make(rotary=True, kernel=blockwise_attention), x, make().init_cache(B, T + 2)
    )
    np.testing.assert_allclose(blockwise_step, reference_step, atol=1e-5)


def test_rotary_depends_only_on_relative_positions(inputs):
    x, _ = inputs
    mha = make(rotary=True)
    plain, _ = attend(make(), x, is_causal=True)
    at_zero, _ = attend(mha, x, is_causal=True)
    shifted, _ = attend(mha, x, is_causal=True, positions=jnp.arange(T) + 13)
    np.testing.assert_allclose(shifted, at_zero, atol=1e-5)
    assert np.abs(at_zero - plain).max() > 1e-3  # the rotation did something


@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
def test_cache_in_chunks_equals_causal_self_attention(inputs, rotary):
    x, _ = inputs
    mha = make(rotary=rotary)
    full, _ = attend(mha, x, is_causal=True)
    M = T + 2
    cache = mha.init_cache(B, M)
    outs = []
    for start, stop in ((0, 3), (3, 4), (4, T)):
        out, weights, cache = extend(mha, x[:, start:stop], cache, return_weights=True)
        assert weights.shape == (B, N, stop - start, M)
        np.testing.assert_array_equal(weights[..., stop:], 0.0)  # unwritten slots are unseen
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)
    np.testing.assert_array_equal(cache.length, [T] * B)
    assert cache.key.shape == (B, M, K, H)
    np.testing.assert_array_equal(cache.key[:, T:], 0.0)


def test_cache_rows_at_different_positions(inputs):
    """Each row writes and reads at its own length; slots past it are never seen."""
    x, _ = inputs
    mha = make(rotary=True)
    full, _ = attend(mha, x, is_causal=True)
    _, _, cache = extend(mha, x[:, :5], mha.init_cache(B, T))
    # Rewind the rows to different lengths: slots past length + 2 keep stale keys, unseen.
    prefix = np.array([1, 3, 2])
    cache = cache._replace(length=jnp.asarray(prefix, jnp.int32))
    new = jnp.stack([x[b, p : p + 2] for b, p in enumerate(prefix)])  # [B, 2, D]
    out, _, cache = extend(mha, new, cache)
    np.testing.assert_array_equal(cache.length, prefix + 2)
    for b, p in enumerate(prefix):
        np.testing.assert_allclose(out[b], full[b, p : p + 2], atol=1e-5)


def test_attention_dropout_needs_rngs_and_follows_the_key(inputs):
    x, context = inputs
    mha = make(dropout_rate=0.5)
    off, _ = attend(mha, x, context)
    np.testing.assert_allclose(off, attend(make(), x, context)[0], atol=0)
    a, _ = attend(mha, x, context, rngs=nnx.Rngs(dropout=1))
    again, _ = attend(mha, x, context, rngs=nnx.Rngs(dropout=1))
    other, _ = attend(mha, x, context, rngs=nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(a, again)
    assert np.abs(a - off).max() > 1e-3 and np.abs(a - other).max() > 1e-3


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m, x, c: m(x[..., :-1]),
            r"inputs must be \[B, length, D\] with D=40, got shape \(3, 7, 39\)",
        ),
        (
            lambda m, x, c: m(x[0]),
            r"inputs must be \[B, length, D\] with D=40, got shape \(7, 40\)",
        ),
        (
            lambda m, x, c: m(x, c[:2]),
            r"context \[B, S, D\] must share B .* \(2, 11, 40\) and \(3, 7, 40\)",
        ),
        (lambda m, x, c: m(x.astype(jnp.int32)), "inputs must be floating point, got dtype int32"),
        (
            lambda m, x, c: m.extend(x, m.init_cache(B, 5)),
            r"inputs \[B, T, D\] = \(3, 7, 40\) do not fit a cache of M=5",
        ),
        (
            lambda m, x, c: m.extend(x, m.init_cache(2, 9)),
            r"cache key and value must be \[B, M, K, H\] = \[3, M, 2, 4\] .* got \(2, 9, 2, 4\)",
        ),
        (lambda m, x, c: make(rotary=True)(x, c), "rotary positions are for self-attention"),
        (
            lambda m, x, c: MultiHeadAttention(D, 7, rngs=nnx.Rngs(0)),
            "num_heads N=7 must divide model_dim D=40",
        ),
        (
            lambda m, x, c: MultiHeadAttention(D, N, num_kv_heads=3, rngs=nnx.Rngs(0)),
            "num_kv_heads K=3 must divide num_heads N=10",
        ),
        (
            lambda m, x, c: MultiHeadAttention(30, 10, rotary=True, rngs=nnx.Rngs(0)),
            "rotary positions need an even head dim, got H = D / N = 3",
        ),
    ],
)
def test_bad_inputs_name_the_argument_and_shapes(inputs, call, message):
    x, context = inputs
    with pytest.raises((ValueError, TypeError), match=message):
        call(make(), x, context)


def test_cache_is_a_batch_first_pytree():
    cache = make().init_cache(B, 5)
    assert isinstance(cache, KVCache)
    assert [leaf.shape[0] for leaf in jax.tree.leaves(cache)] == [B, B, B]
    assert cache.length.dtype == jnp.int32


def test_jit_traces_extend_once(inputs):
    x, _ = inputs
    mha = make(rotary=True)

    @nnx.jit
    @chex.assert_max_traces(n=1)
    def step(mha, token, cache):
        out, _, cache = mha.extend(token, cache)
        return out, cache

    cache = mha.init_cache(B, T)
    outs = []
    for t in range(T):
        out, cache = step(mha, x[:, t : t + 1], cache)
        outs.append(out)
    np.testing.assert_allclose(
        jnp.concatenate(outs, 1), attend(mha, x, is_causal=True)[0], atol=1e-5
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_compute_dtype_keeps_float32_parameters_and_weights(inputs, dtype):
    x, context = inputs
    low, full = make(dtype=dtype), make()  # the same seed: the same float32 parameters
    params = jax.tree.leaves(nnx.state(low, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    out, weights = attend(low, x.astype(dtype), context.astype(dtype), return_weights=True)
    expected, expected_weights = attend(full, x, context, return_weights=True)
    assert out.dtype == dtype and weights.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=0.05, rtol=0.05)
    np.testing.assert_allclose(weights, expected_weights, atol=0.02)
    cache = low.init_cache(B, T)
    assert cache.key.dtype == cache.value.dtype == dtype
    out, _, cache = extend(low, x.astype(dtype), cache)
    assert out.dtype == cache.key.dtype == dtype


def test_param_dtype_sets_the_projections():
    mha = MultiHeadAttention(D, N, use_bias=True, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    params = jax.tree.leaves(nnx.state(mha, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.bfloat16)}
