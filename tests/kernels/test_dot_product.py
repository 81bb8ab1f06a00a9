"""zoo.kernels.dot_product_attention against the float64 reference, jax.nn and flax.nnx."""

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels import reference
from zoo.kernels import dot_product_attention

# Prime sizes, so a swapped axis cannot go unnoticed; N = 6 query heads over K = 3.
B, T, S, N, K, H = 2, 5, 7, 6, 3, 11


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


def _loss_and_grads(q, k, v, bias, d_out, **kwargs):
    def loss(q, k, v, bias):
        out = dot_product_attention(q, k, v, bias, **kwargs)
        return jnp.sum(out.astype(jnp.float32) * d_out), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, bias)
    return out, grads


OPTIONS = {
    "plain": {},
    "mask": {"mask": True},
    "causal": {"is_causal": True},
    "window": {"local_window_size": (2, 1)},
    "lengths": {
        "query_seq_lengths": np.array([5, 3], np.int32),
        "key_value_seq_lengths": np.array([7, 2], np.int32),
    },
    "segments": {
        "query_segment_ids": np.array([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]], np.int32),
        "key_value_segment_ids": np.array([[0, 0, 0, 1, 1, 1, 2], [1, 1, 1, 1, 2, 2, 3]], np.int32),
    },
    "all": {
        "mask": True,
        "is_causal": True,
        "local_window_size": 3,
        "key_value_seq_lengths": np.array([6, 4], np.int32),
        "scale": 0.37,
    },
}


def _reference_mask(inputs, opts):
    window = opts.get("local_window_size")
    if isinstance(window, int):
        window = (window, window)
    return reference.attention_mask(
        B,
        T,
        S,
        N=N,
        mask=inputs["mask"] if opts.get("mask") else None,
        is_causal=opts.get("is_causal", False),
        window=window,
        q_lengths=opts.get("query_seq_lengths"),
        kv_lengths=opts.get("key_value_seq_lengths"),
        q_segments=opts.get("query_segment_ids"),
        kv_segments=opts.get("key_value_segment_ids"),
    )


def _kernel_kwargs(inputs, opts):
    kwargs = dict(opts)
    if kwargs.pop("mask", False):
        kwargs["mask"] = inputs["mask"]
    return kwargs


def test_fully_masked_rows_give_zeros_and_zero_gradients(inputs):
    q, k, v, bias, d_out = (inputs[n] for n in ("q", "k", "v", "bias", "d_out"))
    mask = np.ones((B, 1, T, S), bool)
    mask[1, 0, 3] = False
    out, (dq, dk, dv, dbias) = _loss_and_grads(q, k, v, bias, d_out, mask=mask)
    for x in (out, dq, dk, dv, dbias):
        assert np.isfinite(np.asarray(x)).all()
    np.testing.assert_array_equal(out[1, 3], 0.0)
    np.testing.assert_array_equal(dq[1, 3], 0.0)
    np.testing.assert_array_equal(dbias[1, :, 3], 0.0)
    assert np.abs(out[1, 2]).sum() > 0


def test_gqa_and_mqa_match_repeated_heads(inputs):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    for kv_heads in (3, 1):
        k_, v_ = k[:, :, :kv_heads], v[:, :, :kv_heads]
        repeated = [np.repeat(x, N // kv_heads, axis=2) for x in (k_, v_)]
        np.testing.assert_allclose(
            dot_product_attention(q, k_, v_), dot_product_attention(q, *repeated), atol=1e-6
        )


@pytest.mark.parametrize("name", ["plain", "causal", "window", "lengths", "all"])
def test_same_numbers_as_jax_nn(inputs, name):
    opts = _kernel_kwargs(inputs, OPTIONS[name])
    q, k, v, bias = (inputs[n] for n in ("q", "k", "v", "bias"))
    ours, lse = dot_product_attention(q, k, v, bias, return_residual=True, **opts)
    theirs, their_lse = jax.nn.dot_product_attention(q, k, v, bias, return_residual=True, **opts)
    # jax.nn averages the values of a fully masked row; we return zeros. Compare the rest.
    live = _reference_mask(inputs, OPTIONS[name]).any(-1).transpose(0, 2, 1)  # [B, T, N]
    np.testing.assert_allclose(
        np.where(live[..., None], ours, 0), np.where(live[..., None], theirs, 0), atol=1e-6
    )
    np.testing.assert_allclose(np.where(live, lse, 0), np.where(live, their_lse, 0), atol=1e-5)


def test_as_flax_nnx_attention_fn(inputs):
    x = inputs["q"].reshape(B, T, N * H)[..., :13]
    mask = np.asarray(inputs["mask"])[..., :T].copy()  # self-attention: [B, 1, T, T]
    mask[..., 0] = True  # no fully masked rows: flax returns a uniform average there
    kwargs = dict(num_heads=N, in_features=13, qkv_features=2 * N, decode=False)
    ours = nnx.MultiHeadAttention(**kwargs, attention_fn=dot_product_attention, rngs=nnx.Rngs(0))
    theirs = nnx.MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(ours(x, mask=mask), theirs(x, mask=mask), atol=1e-6)
    np.testing.assert_allclose(ours(x, is_causal=True), theirs(x, is_causal=True), atol=1e-6)


def test_bfloat16_inputs_keep_their_dtype(inputs):
    q, k, v, bias = (inputs[n] for n in ("q", "k", "v", "bias"))
    out, weights = dot_product_attention(
        *(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)),
        bias,
        mask=inputs["mask"],
        return_weights=True,
    )
    assert out.dtype == jnp.bfloat16 and weights.dtype == jnp.float32
    mask = reference.attention_mask(B, T, S, N=N, mask=inputs["mask"])
    ref_out, _ = reference.attention_forward(q, k, v, bias=bias, mask=mask)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=5e-2, rtol=5e-2)


def test_huge_logits_do_not_overflow(inputs):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    out, (dq, dk, dv, dbias) = _loss_and_grads(
        q, k, v, 1e4 * inputs["bias"], inputs["d_out"], mask=inputs["mask"]
    )
    for x in (out, dq, dk, dv, dbias):
        assert np.isfinite(np.asarray(x)).all()
    # With logits this far apart each live row picks its single largest logit.
    bias = np.where(np.broadcast_to(inputs["mask"], (B, N, T, S)), inputs["bias"], -np.inf)
    top = np.argmax(bias[0, 0, 0])
    np.testing.assert_allclose(out[0, 0, 0], v[0, top, 0], atol=1e-5)


def test_returned_weights_are_the_distribution_used(inputs):
    q, k, v, mask = inputs["q"], inputs["k"], inputs["v"], inputs["mask"]
    out, weights = dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert weights.shape == (B, N, T, S)
    live = np.broadcast_to(mask, weights.shape).any(-1)
    np.testing.assert_allclose(weights.sum(-1), live.astype(np.float32), atol=1e-6)
    v_heads = np.repeat(v, N // K, axis=2)
    np.testing.assert_allclose(np.einsum("bnts,bsnh->btnh", weights, v_heads), out, atol=1e-5)


def test_dropout_is_explicit_and_unbiased(inputs):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    drop = jax.jit(lambda rng: dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng))
    a, b = drop(jax.random.key(0)), drop(jax.random.key(1))
    np.testing.assert_array_equal(a, drop(jax.random.key(0)))
    assert np.abs(a - b).max() > 1e-3
    plain = dot_product_attention(q, k, v)
    off = dot_product_attention(
        q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0), deterministic=True
    )
    np.testing.assert_array_equal(off, plain)
    mean = jnp.mean(jax.vmap(drop)(jax.random.split(jax.random.key(2), 2000)), axis=0)
    np.testing.assert_allclose(mean, plain, atol=0.08)


def test_broadcast_dropout_shares_one_pattern_across_batch_and_heads(inputs):
    q = np.broadcast_to(inputs["q"][:1, :, :1], (B, T, N, H))
    k = np.broadcast_to(inputs["k"][:1, :, :1], (B, S, K, H))
    v = np.broadcast_to(inputs["v"][:1, :, :1], (B, S, K, H))
    rng = jax.random.key(3)
    shared = dot_product_attention(q, k, v, dropout_rate=0.3, dropout_rng=rng)
    np.testing.assert_allclose(shared, np.broadcast_to(shared[:1, :, :1], shared.shape), atol=1e-6)
    apart = dot_product_attention(
        q, k, v, dropout_rate=0.3, dropout_rng=rng, broadcast_dropout=False
    )
    assert np.abs(apart - apart[:1, :, :1]).max() > 1e-3


def test_composes_with_jit_vmap_grad_and_checkpoint(inputs):
    q, k, v, mask = inputs["q"], inputs["k"], inputs["v"], inputs["mask"]
    batched = dot_product_attention(q, k, v, mask=mask, is_causal=True)
    per_example = jax.vmap(
        lambda q, k, v, m: dot_product_attention(q, k, v, mask=m, is_causal=True)
    )(q, k, v, mask)
    np.testing.assert_allclose(per_example, batched, atol=1e-6)

    def loss(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, mask=mask) ** 2)

    plain = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(plain, remat, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_same_shapes_do_not_recompile(inputs):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def attend(q, k, v, mask):
        return dot_product_attention(q, k, v, mask=mask)

    q, k, v, mask = inputs["q"], inputs["k"], inputs["v"], inputs["mask"]
    for scale in (1.0, 2.0, 3.0):
        attend(q * scale, k, v, mask)


@settings(max_examples=20, deadline=None)
@given(
    dims=st.tuples(
        st.integers(1, 2),
        st.integers(1, 4),
        st.integers(1, 5),
        st.sampled_from([1, 2, 3]),
        st.sampled_from([1, 2]),
        st.integers(1, 3),
    ),
    data=st.data(),
)
def test_property_matches_reference(dims, data):
    b, t, s, k_heads, groups, h = dims
    n = k_heads * groups
    q, k, v = _random(
        data.draw(st.integers(0, 2**16)), (b, t, n, h), (b, s, k_heads, h), (b, s, k_heads, h)
    )
    mask = data.draw(hnp.arrays(np.bool_, (b, n, t, s)))
    causal = data.draw(st.booleans())
    out = dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    full = reference.attention_mask(b, t, s, N=n, mask=mask, is_causal=causal)
    want, _ = reference.attention_forward(q, k, v, mask=full)
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


ERRORS = [
    (
        dict(q=(T, H)),
        ValueError,
        r"query must be \[\*batch, T, N, H\] \(e.g. \[B, T, N, H\] or \[T, N, H\]\), got shape \(5, 11\)",
    ),
    (
        dict(k=(S, K, H)),
        ValueError,
        r"key must be \[B, S, K, H\] = \[2, S, K, H\] with query's batch dims, got shape \(7, 3, 11\)",
    ),
    (dict(v=(B, S, K, 4)), ValueError, r"value must have key's shape .* got \(2, 7, 3, 4\)"),
    (
        dict(k=(3, S, K, H), v=(3, S, K, H)),
        ValueError,
        r"key must be \[B, S, K, H\] = \[2, S, K, H\] with query's batch dims, got shape \(3, 7",
    ),
    (
        dict(k=(B, S, K, 4), v=(B, S, K, 4)),
        ValueError,
        r"key head dim must equal query head dim H=11",
    ),
    (
        dict(k=(B, S, 4, H), v=(B, S, 4, H)),
        ValueError,
        r"key/value heads K=4 must divide query heads N=6",
    ),
    (
        dict(bias=(B, 4, T, S)),
        ValueError,
        r"bias must broadcast to \[B, N, T, S\] = \[2, 6, 5, 7\], got shape \(2, 4, 5, 7\)",
    ),
    (
        dict(mask=(T, S + 1)),
        ValueError,
        r"mask must broadcast to \[B, N, T, S\] = \[2, 6, 5, 7\], got shape \(5, 8\)",
    ),
    (dict(mask_dtype=np.complex64), TypeError, r"mask must be bool or real"),
    (
        dict(query_seq_lengths_values=(3, 6)),
        ValueError,
        r"query_seq_lengths must lie in \[0, T=5\], got values from 3 to 6",
    ),
    (dict(k=(B, 0, K, H), v=(B, 0, K, H)), ValueError, r"key length S must be positive"),
    (
        dict(query_seq_lengths=(B + 1,)),
        ValueError,
        r"query_seq_lengths must be \[B\] = \[2\], got shape \(3,\)",
    ),
    (dict(query_segment_ids=(B, T)), ValueError, r"must be given together"),
    (dict(implementation="flash"), ValueError, r"implementation must be None, one of \("),
    (dict(implementation="cudnn"), NotImplementedError, r"cudnn: needs an NVIDIA GPU"),
    (dict(dropout_rate=0.1), ValueError, r"dropout_rng is required"),
    (dict(dropout_rate=1.0, dropout_rng=True), ValueError, r"dropout_rate must be in \[0, 1\)"),
    (
        dict(local_window_size=(1, 2, 3)),
        ValueError,
        r"local_window_size must be an int or a \(left, right\) pair",
    ),
    (dict(k_dtype=np.float16), TypeError, r"query, key and value must share one dtype"),
]


@pytest.mark.parametrize("bad,error,message", ERRORS)
def test_bad_input_names_the_argument_and_shapes(bad, error, message):
    shapes = dict(q=(B, T, N, H), k=(B, S, K, H), v=(B, S, K, H))
    shapes.update({n: bad[n] for n in ("q", "k", "v") if n in bad})
    q, k, v = (np.zeros(shapes[n], np.float32) for n in ("q", "k", "v"))
    if "k_dtype" in bad:
        k = k.astype(bad["k_dtype"])
    kwargs = {}
    if "bias" in bad:
        kwargs["bias"] = np.zeros(bad["bias"], np.float32)
    if "mask" in bad:
        kwargs["mask"] = np.ones(bad["mask"], bool)
    if "mask_dtype" in bad:
        kwargs["mask"] = np.ones((T, S), bad["mask_dtype"])
    for name in ("query_seq_lengths", "query_segment_ids"):
        if name in bad:
            kwargs[name] = np.zeros(bad[name], np.int32)
    for name in ("implementation", "local_window_size", "dropout_rate"):
        if name in bad:
            kwargs[name] = bad[name]
    if "query_seq_lengths_values" in bad:
        kwargs["query_seq_lengths"] = np.array(bad["query_seq_lengths_values"], np.int32)
    if bad.get("dropout_rng"):
        kwargs["dropout_rng"] = jax.random.key(0)
    with pytest.raises(error, match=message):
        dot_product_attention(q, k, v, **kwargs)
