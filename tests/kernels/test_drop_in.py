"""The zoo kernels as drop-in replacements: for flax.nnx's attention_fn, for jax.nn's call,
and under JAX's strict modes, transformations and an explicit-sharding mesh.

Kernels: ``dot_product_attention`` (the reference) and ``blockwise_attention`` with 4 x 3
blocks, which divide neither T = 13 nor S = 11. Each flax comparison builds one
``nnx.MultiHeadAttention`` and a clone of it (the same parameters) whose ``attention_fn`` is
the zoo kernel; the original keeps flax's default, which calls
``jax.nn.dot_product_attention`` (or, to sow weights or drop out, its own einsums).

Where zoo and jax.nn differ by design, only the rest is compared: a query row with nothing to
attend is zeros in zoo (jax.nn: the mean of the values), its log-sum-exp finite.

The multi-device check runs in a fresh process (tests/kernels/drop_in_worker.py): the CPU
device count is fixed when JAX starts.
"""

import functools
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.kernels import reference
from zoo.kernels import blockwise_attention, dot_product_attention, ring_attention

# Prime sizes where they can be; N = 6 query heads over K = 3 key/value heads.
B, T, S, N, K, H = 2, 13, 11, 6, 3, 5
D = 7  # model features of the flax modules
BLOCKS = {"query_block_size": 4, "key_value_block_size": 3}
ZOO = {
    "reference": dot_product_attention,
    "blockwise": functools.partial(blockwise_attention, **BLOCKS),
}
ATOL = RTOL = 2e-5  # float32
GRAD_TOL = 5e-5
# Unoptimized machine code: the same numbers, compiled ~2.7x faster (see test_parity.py).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

ROOT = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT = 300  # seconds: a hung worker fails the test instead of the whole run


def _random(seed, *shapes, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _qkv(seed=0, kv_heads=K, batch=(B,), dtype=np.float32):
    """q [*batch, T, N, H], k, v [*batch, S, K, H] and a cotangent like q."""
    return _random(
        seed,
        (*batch, T, N, H),
        (*batch, S, kv_heads, H),
        (*batch, S, kv_heads, H),
        (*batch, T, N, H),
        dtype=dtype,
    )


def _every_option(seed=1):
    """Every masking option at once, bias and mask below full rank; rows with no key."""
    rng = np.random.default_rng(seed)
    mask = rng.random((T, S)) < 0.8
    mask[4] = False  # query row 4 attends nothing
    return {
        "bias": rng.standard_normal((N, T, S)).astype(np.float32),
        "mask": mask,
        "is_causal": True,
        "local_window_size": (6, 2),
        "scale": 0.4,
        "query_seq_lengths": np.array([13, 10], np.int32),
        "key_value_seq_lengths": np.array([11, 0], np.int32),  # example 1 has no key at all
        "query_segment_ids": np.sort(rng.integers(0, 2, (B, T)), axis=1).astype(np.int32),
        "key_value_segment_ids": np.sort(rng.integers(0, 2, (B, S)), axis=1).astype(np.int32),
    }


def _value_and_grads(kernel, *, values_only=False, **static):
    """f(q, k, v, d_out, bias, arrays) -> (out, lse, (dq, dk, dv[, dbias]) or None)."""

    def f(q, k, v, d_out, bias, arrays):
        if values_only:
            extra = {} if bias is None else {"bias": bias}
            return (*kernel(q, k, v, **extra, **arrays, **static, return_residual=True), None)

        def loss(q, k, v, bias):
            extra = {} if bias is None else {"bias": bias}
            out, lse = kernel(q, k, v, **extra, **arrays, **static, return_residual=True)
            return jnp.sum(out.astype(jnp.float32) * d_out), (out, lse)

        argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
        (_, (out, lse)), grads = jax.value_and_grad(loss, argnums, has_aux=True)(q, k, v, bias)
        return out, lse, grads

    return f


def _split(options):
    arrays = {n: x for n, x in options.items() if isinstance(x, np.ndarray) and n != "bias"}
    static = {n: x for n, x in options.items() if not isinstance(x, np.ndarray)}
    return options.get("bias"), arrays, static


def _assert_matches_reference(got, q, k, v, d_out, options, *, tol=1.0):
    """(out, lse, grads) against the float64 reference; ``tol`` scales the float32 ones."""
    out, lse, grads = jax.device_get(got)
    want = reference.attention_call(q, k, v, d_out, **options)
    live = want["live"]
    np.testing.assert_allclose(out, want["out"], atol=tol * ATOL, rtol=tol * RTOL)
    np.testing.assert_array_equal(out[~live], 0.0)
    np.testing.assert_allclose(lse[live], want["lse"][live], atol=tol * ATOL, rtol=tol * RTOL)
    assert np.isfinite(lse).all() and (lse[~live] < -1e3).all()
    for name, g in zip(("dq", "dk", "dv", "dbias"), grads, strict=False):
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(
            g, want[name], atol=tol * GRAD_TOL, rtol=tol * GRAD_TOL, err_msg=name
        )


# --------------------------------------------------------------------------------------------
# flax.nnx.MultiHeadAttention(attention_fn=zoo kernel) against flax's default attention_fn.


def _numpy_init(key, shape, dtype=jnp.float32):
    """Weights drawn by NumPy from the key flax passes: eager JAX random draws would compile
    once per parameter shape, seconds per test on CPU."""
    seed = np.asarray(jax.random.key_data(key)).tolist()
    return jnp.asarray(0.4 * np.random.default_rng(seed).standard_normal(shape), dtype)


def _nnx_jit(fn):
    """``nnx.jit(fn)`` for ``fn(modules, *args)``, compiled like ``_jit`` (nnx.jit takes no
    compiler options): the modules' state goes in and comes back out, updated in place."""

    @functools.cache
    def compiled(graphdef):
        def pure(state, *args):
            modules = nnx.merge(graphdef, state)
            return fn(modules, *args), nnx.state(modules)

        return _jit(pure)

    def call(modules, *args):
        graphdef, state = nnx.split(modules)
        out, state = compiled(graphdef)(state, *args)
        nnx.update(modules, state)
        return out

    return call


def _mha_pair(kernel, **config):
    """(ours, theirs): one flax MultiHeadAttention and its clone; ours attends with
    ``kernel``, theirs with flax's default attention_fn."""
    config = {"num_heads": N, "in_features": D, "qkv_features": N * H, "decode": False} | config
    theirs = nnx.MultiHeadAttention(**config, kernel_init=_numpy_init, rngs=nnx.Rngs(0))
    ours = nnx.clone(theirs)
    ours.attention_fn = kernel
    return ours, theirs


def _tokens(lengths, length):
    """int tokens [*batch, length]: 1..9 for the first ``lengths`` positions, 0 (padding) after."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(int(lengths.sum()))
    real = np.arange(length) < lengths[..., None]
    return np.where(real, rng.integers(1, 10, real.shape), 0).astype(np.int32)


@pytest.mark.parametrize("kernel", ZOO)
def test_flax_mha_autoregressive_decoding_matches_flax_step_by_step(kernel):
    """decode=True: flax feeds one token at a time against its key/value cache, with a
    float32 mask of the cached positions; every step must agree with flax's attention."""
    ours, theirs = _mha_pair(ZOO[kernel], decode=True)
    (x,) = _random(2, (B, T, D))
    for module in (ours, theirs):
        module.init_cache(x.shape)
    step = _nnx_jit(lambda module, token: module(token))
    steps = []
    for t in range(T):
        got, want = step(ours, x[:, t : t + 1]), step(theirs, x[:, t : t + 1])
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=f"step {t}")
        steps.append(got)
    # The steps together are causal self-attention over the whole sequence.
    full = _nnx_jit(lambda module, x: module(x, decode=False, is_causal=True))(ours, x)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kernel", ZOO)
def test_flax_mha_with_flax_masks_matches_flax(kernel):
    """Masks from nnx.make_causal_mask, make_attention_mask and combine_masks (float32)."""
    ours, theirs = _mha_pair(ZOO[kernel])
    x, y = _random(3, (B, T, D), (B, S, D))
    q_tokens, kv_tokens = _tokens([13, 8], T), _tokens([11, 5], S)

    @_nnx_jit
    def attend(module, x, y, q_tokens, kv_tokens):
        causal = nnx.make_causal_mask(q_tokens)
        padding = nnx.make_attention_mask(q_tokens > 0, q_tokens > 0)
        return {
            "causal_and_padding": module(x, mask=nnx.combine_masks(causal, padding)),
            "is_causal_and_padding": module(x, mask=padding, is_causal=True),
            "cross_padding": module(
                x, y, mask=nnx.make_attention_mask(q_tokens > 0, kv_tokens > 0)
            ),
        }

    got = attend(ours, x, y, q_tokens, kv_tokens)
    want = attend(theirs, x, y, q_tokens, kv_tokens)
    for name in got:
        # A padding query attends nothing: zoo gives zeros, so the output projection gives
        # its bias (zero-initialized); flax averages the values. Compare the real queries.
        live = q_tokens > 0
        np.testing.assert_allclose(got[name][live], want[name][live], atol=ATOL, rtol=RTOL)
        np.testing.assert_array_equal(got[name][~live], 0.0, err_msg=name)


@pytest.mark.parametrize("kernel", ZOO)
def test_flax_mha_grouped_query_heads_matches_flax(kernel):
    if "num_kv_heads" not in inspect.signature(nnx.MultiHeadAttention.__init__).parameters:
        pytest.skip(
            "this flax's MultiHeadAttention has no num_kv_heads (test_same_numbers_"
            "as_jax_nn compares GQA directly)"
        )
    pairs = [_mha_pair(ZOO[kernel], num_kv_heads=kv) for kv in (1, 2)]  # MQA and G = 3
    (x,) = _random(4, (B, T, D))
    mask = nnx.make_causal_mask(_tokens([13, 13], T))
    attend = _nnx_jit(lambda modules, x: [m(x, mask=mask) for m in modules])
    got = attend([ours for ours, _ in pairs], x)
    want = attend([theirs for _, theirs in pairs], x)
    for kv, g, w in zip((1, 2), got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=RTOL, err_msg=f"num_kv_heads={kv}")


@pytest.mark.parametrize("kernel", ZOO)
def test_flax_mha_with_two_batch_dims_matches_flax(kernel):
    """Inputs [b1, b2, T, D]: flax's default reshapes them for jax.nn; zoo takes them as is."""
    ours, theirs = _mha_pair(ZOO[kernel])
    (x,) = _random(5, (2, 3, T, D))
    tokens = _tokens(np.array([[13, 7, 1], [13, 13, 10]]), T)
    mask = nnx.make_attention_mask(tokens > 0, tokens > 0)  # [2, 3, 1, T, T]

    attend = _nnx_jit(lambda module, x, mask: module(x, mask=mask, is_causal=True))
    got, want = attend(ours, x, mask), attend(theirs, x, mask)
    live = tokens > 0
    assert got.shape == (2, 3, T, D)
    np.testing.assert_allclose(got[live], want[live], atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(got[~live], 0.0)


def test_flax_mha_sow_weights_stores_what_flax_stores():
    """sow_weights=True passes module=; the reference kernel sows the weights as flax does
    (collected with nnx.capture, as flax 0.12 asks)."""
    ours, theirs = _mha_pair(dot_product_attention)
    (x,) = _random(6, (B, T, D))
    # Every query keeps key 0, so no row is empty (flax sows a uniform row there, zoo zeros).
    mask = nnx.make_attention_mask(np.ones((B, T)), _tokens([13, 6], T) > 0)
    attend = _nnx_jit(
        nnx.capture(
            lambda module, x: module(x, mask=mask, is_causal=True, sow_weights=True),
            nnx.Intermediate,
        )
    )
    (got_out, got), (want_out, want) = attend(ours, x), attend(theirs, x)
    np.testing.assert_allclose(got_out, want_out, atol=ATOL, rtol=RTOL)
    assert jax.tree.structure(got) == jax.tree.structure(want), (got, want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape == (B, N, T, T) and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=1e-6)


@pytest.mark.parametrize("kernel", ZOO)
def test_flax_mha_dropout_is_keyed_by_flax_rngs_and_off_when_deterministic(kernel):
    ours, theirs = _mha_pair(ZOO[kernel], dropout_rate=0.3)
    (x,) = _random(7, (B, T, D))

    @_nnx_jit
    def attend(module, x, key, other_key):
        return (
            module(x, deterministic=True),
            module(x, deterministic=False, rngs=nnx.Rngs(dropout=key)),
            module(x, deterministic=False, rngs=nnx.Rngs(dropout=other_key)),
        )

    keys = jax.random.key(0), jax.random.key(1)
    off, dropped, other = attend(ours, x, *keys)
    want = _nnx_jit(lambda module, x: module(x, deterministic=True))(theirs, x)
    np.testing.assert_allclose(off, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(dropped, attend(ours, x, *keys)[1])  # the key decides
    assert np.isfinite(dropped).all()
    assert np.abs(dropped - off).max() > 1e-3 and np.abs(dropped - other).max() > 1e-3


# --------------------------------------------------------------------------------------------
# A user's custom_vjp built on jax.nn's residual keeps working with a zoo kernel swapped in.


def _flash_style(attention, key_value_seq_lengths):
    """Attention whose backward recomputes the weights from the forward's log-sum-exp instead
    of storing them (FlashAttention-2, Dao 2023, Alg. 2: P = exp(S - L), D = rowsum(dO * O)).
    """
    G = N // K
    scale = H**-0.5

    def allowed():  # [B, 1, T, S]: causal, and the real keys
        causal = np.arange(S)[None, :] <= np.arange(T)[:, None]
        real = np.arange(S)[None, :] < key_value_seq_lengths[:, None]
        return (causal[None] & real[:, None])[:, None]

    def call(q, k, v, **kwargs):
        return attention(
            q, k, v, is_causal=True, key_value_seq_lengths=key_value_seq_lengths, **kwargs
        )

    @jax.custom_vjp
    def attend(q, k, v):
        return call(q, k, v)

    def forward(q, k, v):
        out, lse = call(q, k, v, return_residual=True)
        return out, (q, k, v, out, lse)

    def backward(residuals, d_out):
        q, k, v, out, lse = residuals
        k_n, v_n = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
        logits = jnp.einsum("BTNH,BSNH->BNTS", q, k_n) * scale
        lse = jnp.moveaxis(lse.astype(jnp.float32), 1, 2)[..., None]  # [B, N, T, 1]
        p = jnp.where(allowed(), jnp.exp(jnp.where(allowed(), logits - lse, 0.0)), 0.0)
        dv = jnp.einsum("BNTS,BTNH->BSNH", p, d_out)
        dp = jnp.einsum("BTNH,BSNH->BNTS", d_out, v_n)
        delta = jnp.moveaxis(jnp.sum(d_out * out, axis=-1), 1, 2)[..., None]
        ds = p * (dp - delta)
        dq = jnp.einsum("BNTS,BSNH->BTNH", ds, k_n) * scale
        dk = jnp.einsum("BNTS,BTNH->BSNH", ds, q) * scale
        heads = lambda x: x.reshape(B, S, K, G, H).sum(axis=3)  # noqa: E731
        return dq, heads(dk), heads(dv)

    attend.defvjp(forward, backward)
    return attend


@functools.cache
def _custom_vjp_gradients(kernel):
    """(out, grads) of sum(out * d_out) through the user's custom_vjp over ``kernel``; for
    ``"autodiff"``, jax.nn's own gradient without it."""
    q, k, v, d_out = _qkv(8)
    lengths = np.array([11, 6], np.int32)  # every query keeps key 0: no empty row
    if kernel == "autodiff":
        attend = functools.partial(
            jax.nn.dot_product_attention, is_causal=True, key_value_seq_lengths=lengths
        )
    else:
        attention = jax.nn.dot_product_attention if kernel == "jax.nn" else ZOO[kernel]
        attend = _flash_style(attention, lengths)

    def loss(q, k, v):
        out = attend(q, k, v)
        return jnp.sum(out * d_out), out

    (_, out), grads = _jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
    return jax.device_get((out, grads))


@pytest.mark.parametrize("kernel", ZOO)
def test_user_custom_vjp_on_the_residual_gives_the_same_gradients(kernel):
    theirs, their_grads = _custom_vjp_gradients("jax.nn")
    # The user's backward is right: over jax.nn, it gives jax.nn's own gradient.
    _, autodiff = _custom_vjp_gradients("autodiff")
    for name, g, w in zip(("dq", "dk", "dv"), their_grads, autodiff, strict=True):
        np.testing.assert_allclose(g, w, atol=GRAD_TOL, rtol=GRAD_TOL, err_msg=name)
    ours, our_grads = _custom_vjp_gradients(kernel)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=RTOL)
    for name, g, w in zip(("dq", "dk", "dv"), our_grads, their_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=GRAD_TOL, rtol=GRAD_TOL, err_msg=name)


# --------------------------------------------------------------------------------------------
# JAX's strict modes, x64, and the transformations.


@pytest.mark.parametrize("kernel", ZOO)
def test_under_strict_rank_promotion(kernel):
    """No implicit rank promotion inside the kernel: bias [N, T, S] and mask [T, S] given."""
    q, k, v, d_out = _qkv(9)
    options = _every_option()
    bias, arrays, static = _split(options)
    with jax.numpy_rank_promotion("raise"):
        got = _jit(_value_and_grads(ZOO[kernel], **static))(q, k, v, d_out, bias, arrays)
    _assert_matches_reference(got, q, k, v, d_out, options)


@pytest.mark.parametrize("kernel", ZOO)
def test_op_by_op_under_debug_nans_and_debug_infs(kernel):
    """Not jitted, so every operation's output is checked: no -inf stand-in for a masked
    logit, no inf or NaN in an empty row's softmax or log-sum-exp, forward or backward."""
    q, k, v, d_out = _qkv(10)
    # The options that make empty rows (each eager op compiles: the positional ones are left
    # to the jitted tests).
    everything = _every_option()
    options = {n: everything[n] for n in ("bias", "mask", "is_causal", "key_value_seq_lengths")}
    bias, arrays, static = _split(options)
    with jax.debug_nans(True), jax.debug_infs(True):
        got = _value_and_grads(ZOO[kernel], **static)(q, k, v, d_out, bias, arrays)
    _assert_matches_reference(got, q, k, v, d_out, options)


@pytest.mark.parametrize("kernel", ZOO)
def test_under_x64_float32_stays_float32(kernel):
    """x64 mode: float32 inputs are not promoted by a stray float64 constant, and int64
    lengths (x64's default int) are taken. (float64 inputs: test_same_numbers_as_jax_nn.)"""
    q, k, v, d_out = _qkv(11)
    options = _every_option()
    for name in ("query_seq_lengths", "key_value_seq_lengths"):
        options[name] = options[name].astype(np.int64)
    bias, arrays, static = _split(options)
    with jax.enable_x64(True):
        got = jax.device_get(
            _jit(_value_and_grads(ZOO[kernel], **static))(q, k, v, d_out, bias, arrays)
        )
    out, lse, grads = got
    assert out.dtype == lse.dtype == np.float32, (out.dtype, lse.dtype)
    assert [g.dtype for g in grads] == [np.float32] * 4
    _assert_matches_reference(got, q, k, v, d_out, options)


@pytest.mark.parametrize("kernel", ZOO)
def test_vmap_and_jit(kernel):
    """vmap over the batch (each example unbatched: lengths are scalars, segment ids [T]) and
    the batched call agree, gradients too; new lengths do not retrace the jitted function."""
    q, k, v, d_out = _qkv(12)
    options = _every_option()
    bias, per_example, static = _split(options)
    mask = per_example.pop("mask")  # [T, S]: shared by the examples, like the bias
    attend = functools.partial(ZOO[kernel], bias=bias, mask=mask, **static)

    def loss(q, k, v, per_example, vmapped):
        out = (
            jax.vmap(attend)(q, k, v, **per_example) if vmapped else attend(q, k, v, **per_example)
        )
        return jnp.sum(out * d_out), out

    chex.clear_trace_counter()  # (this test runs once per kernel)

    @_jit
    @chex.assert_max_traces(n=1)
    def both(q, k, v, per_example):
        grad = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)
        return grad(q, k, v, per_example, True), grad(q, k, v, per_example, False)

    ((_, vmapped), vmapped_grads), ((_, batched), batched_grads) = both(q, k, v, per_example)
    np.testing.assert_allclose(vmapped, batched, atol=1e-6)
    for a, b in zip(vmapped_grads, batched_grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    want = reference.attention_call(q, k, v, d_out, **options)
    np.testing.assert_allclose(batched, want["out"], atol=ATOL, rtol=RTOL)
    # Other lengths, the same shapes: no new trace (assert_max_traces), the new numbers.
    other = dict(per_example, key_value_seq_lengths=np.array([3, 11], np.int32))
    (_, out), _ = both(q, k, v, other)[1]
    want = reference.attention_call(q, k, v, d_out, **(options | other))
    np.testing.assert_allclose(out, want["out"], atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------
# The same numbers as jax.nn.dot_product_attention in every float dtype, on the rows that have
# something to attend. GQA ratios differ by dtype so that K = 1, 2, 3, 6 each meet jax.nn.

DTYPES = {  # dtype -> (key/value heads, tolerance relative to the largest magnitude)
    "float32": (1, 2e-5),
    "bfloat16": (2, 3e-2),
    "float16": (3, 5e-3),
    "float64": (6, 1e-6),  # jax.nn's softmax is float32 even for float64 inputs
}
# Compiled as one program per kernel; float64 needs x64 mode, so it is a program of its own.
GROUPS = {"float32": ("float32", "bfloat16", "float16"), "float64": ("float64",)}
GROUPS |= {dtype: GROUPS["float32"] for dtype in GROUPS["float32"]}


def _jax_nn_inputs(dtype):
    """q, k, v, d_out and bias in ``dtype``; the options; the rows with a key [B, T, N]."""
    kv_heads, _ = DTYPES[dtype]
    q, k, v, d_out, bias = _random(
        13, (B, T, N, H), (B, S, kv_heads, H), (B, S, kv_heads, H), (B, T, N, H), (B, N, T, S)
    )
    rng = np.random.default_rng(14)
    mask = rng.random((B, 1, T, S)) < 0.8
    mask[0, 0, 5] = False  # an empty row
    options = {
        "mask": mask,
        "is_causal": True,
        "local_window_size": (7, 3),
        "query_seq_lengths": np.array([13, 9], np.int32),
        "key_value_seq_lengths": np.array([10, 11], np.int32),
    }
    live = reference.attention_call(q, k, v, d_out, **options)["live"]
    d_out = np.where(live[..., None], d_out, 0.0)  # jax.nn's empty rows differ by design
    with jax.enable_x64(dtype == "float64"):
        return [jnp.asarray(x, dtype) for x in (q, k, v, d_out, bias)], options, live


@functools.cache
def _dtype_results(kernel, dtypes):
    """{dtype: (out, lse, grads)} of ``kernel`` ("jax.nn" or a zoo kernel), one program."""
    attention = jax.nn.dot_product_attention if kernel == "jax.nn" else ZOO[kernel]
    fns, args, results = {}, {}, {}
    for dtype in dtypes:
        (q, k, v, d_out, bias), options, _ = _jax_nn_inputs(dtype)
        _, arrays, static = _split(options)
        if kernel == "jax.nn" and dtype == "float16" and jax.default_backend() == "cpu":
            # jax.nn asks for an F16_F16_F32 dot, which XLA:CPU rejects. Run op by op, it
            # catches that and falls back; under jit the error comes later, at compile time.
            results[dtype] = _value_and_grads(attention, values_only=True, **static)(
                q, k, v, d_out, bias, arrays
            )
            continue
        fns[dtype] = _value_and_grads(attention, **static)
        args[dtype] = (q, k, v, d_out, bias, arrays)
    with jax.enable_x64(dtypes == ("float64",)):
        together = _jit(lambda args: {dtype: fns[dtype](*a) for dtype, a in args.items()})
        results |= together(args)
    return jax.device_get(results)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ZOO)
def test_same_numbers_as_jax_nn(kernel, dtype):
    _, tol = DTYPES[dtype]
    out, lse, grads = _dtype_results(kernel, GROUPS[dtype])[dtype]
    want, want_lse, want_grads = _dtype_results("jax.nn", GROUPS[dtype])[dtype]
    inputs, options, live = _jax_nn_inputs(dtype)
    if want_grads is None:  # (jax.nn, float16, CPU) the float64 reference's, same inputs
        q, k, v, d_out, bias = (np.asarray(x, np.float64) for x in inputs)
        want_grads = reference.attention_call(q, k, v, d_out, bias=bias, **options)
        want_grads = [want_grads[name] for name in ("dq", "dk", "dv", "dbias")]
    dtype = jnp.dtype(dtype)
    assert out.dtype == lse.dtype == want.dtype == want_lse.dtype == dtype
    assert [g.dtype for g in grads] == [dtype] * 4

    def close(got, want, name):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=tol * scale, rtol=tol, err_msg=name)

    close(out[live], want[live], "out")
    close(lse[live], want_lse[live], "lse")
    assert np.isfinite(np.asarray(lse, np.float64)).all()  # jax.nn's float16 lse has -inf
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), grads, want_grads, strict=True):
        close(g, w, name)


# --------------------------------------------------------------------------------------------
# implementation=, the optional outputs, and errors.


def test_implementation_names():
    q, k, v, _ = _qkv(15)
    mask = _every_option()["mask"]

    @_jit
    def every_name(q, k, v):
        return {
            **{
                f"dot_product_attention:{name}": dot_product_attention(
                    q, k, v, mask=mask, is_causal=True, implementation=name
                )
                for name in (None, "xla", "reference", "blockwise")
            },
            **{
                f"blockwise_attention:{name}": blockwise_attention(
                    q, k, v, mask=mask, is_causal=True, implementation=name
                )
                for name in (None, "xla", "blockwise")
            },
        }

    outs = every_name(q, k, v)
    want = outs["dot_product_attention:None"]
    for name, out in outs.items():
        np.testing.assert_allclose(out, want, atol=1e-6, err_msg=name)
    with pytest.raises(NotImplementedError, match=r"(?i)cudnn") as error:
        dot_product_attention(q, k, v, implementation="cudnn")
    message = str(error.value)  # cuDNN needs a GPU; and what to use instead
    assert re.search(r"(?i)\bgpu\b", message) and re.search("xla|reference|blockwise", message)
    with pytest.raises(ValueError) as error:
        dot_product_attention(q, k, v, implementation="flash")
    assert all(n in str(error.value) for n in ("flash", "xla", "reference", "blockwise", "cudnn"))
    for name in ("cudnn", "reference", "flash"):
        with pytest.raises(ValueError, match=name):
            blockwise_attention(q, k, v, implementation=name)


def test_reference_returns_out_weights_lse_in_that_order_and_dtype():
    batch = (2, 3)
    q, k, v, _ = (jnp.asarray(x, jnp.bfloat16) for x in _qkv(16, batch=batch))
    mask = _every_option()["mask"]
    attend = _jit(
        lambda q, k, v: (
            dot_product_attention(q, k, v, mask=mask, return_weights=True, return_residual=True),
            dot_product_attention(q, k, v, mask=mask, return_weights=True),
            dot_product_attention(q, k, v, mask=mask, return_residual=True),
        )
    )
    (out, weights, lse), (out_w, weights_w), (out_r, lse_r) = attend(q, k, v)
    assert out.shape == (*batch, T, N, H) and out.dtype == jnp.bfloat16
    assert weights.shape == (*batch, N, T, S) and weights.dtype == jnp.float32
    assert lse.shape == (*batch, T, N) and lse.dtype == jnp.bfloat16  # as jax.nn: key.dtype
    np.testing.assert_array_equal(out_w, out)
    np.testing.assert_array_equal(out_r, out)
    np.testing.assert_array_equal(weights_w, weights)
    np.testing.assert_array_equal(lse_r, lse)
    live = mask.any(-1)  # [T]
    np.testing.assert_allclose(
        weights.sum(-1), np.broadcast_to(live, weights.shape[:-1]), atol=1e-5
    )


@pytest.mark.parametrize("kernel", ["blockwise", "ring"])
def test_kernels_that_never_form_the_weights_refuse_weights_and_module(kernel):
    q, k, v, _ = _qkv(17)
    if kernel == "ring":
        mesh = jax.make_mesh((1,), ("seq",), devices=jax.devices()[:1])
        attend = functools.partial(ring_attention, mesh=mesh, axis_name="seq")
    else:
        attend = ZOO[kernel]
    with pytest.raises(ValueError, match="return_weights"):
        attend(q, k, v, return_weights=True)
    module = nnx.Linear(1, 1, rngs=nnx.Rngs(0))  # what flax passes to sow the weights into
    with pytest.raises(ValueError, match=r"module|sow"):
        attend(q, k, v, module=module)


def _shape_pattern(shape):
    """A shape as Python prints it, tuple or list: (2, 4, 13, 11) or [2, 4, 13, 11]."""
    inner = re.escape(", ".join(str(d) for d in shape)) + (",?" if len(shape) == 1 else "")
    return rf"[\(\[]{inner}[\)\]]"


def _bad(**changes):
    """The arguments of a good call (B=2, T=13, S=11, N=6, K=3, H=5) with some replaced."""
    q, k, v, _ = _qkv(18)
    args = {"query": q, "key": k, "value": v}
    for name, value in changes.items():
        args[name] = np.zeros(value, np.float32) if isinstance(value, tuple) else value
    return args


def _lengths(*values):
    return np.array(values, np.int32)


def _number(n):
    """A regex for the number ``n`` standing alone (not part of 12 or 1.5)."""
    return rf"(?<![\d.]){re.escape(str(n))}(?![\d.])"


# (arguments, the argument the message must name, the shape given, a regex it must match)
ERRORS = {
    "query_rank": (_bad(query=(T, H)), "query", (T, H), None),
    "key_batch": (_bad(key=(3, S, K, H), value=(3, S, K, H)), "key", (3, S, K, H), None),
    "key_rank": (_bad(key=(1, B, S, K, H), value=(1, B, S, K, H)), "key", (1, B, S, K, H), None),
    "value_shape": (_bad(value=(B, S, K, 4)), "value", (B, S, K, 4), None),
    "head_dim": (_bad(key=(B, S, K, 4), value=(B, S, K, 4)), "key", (B, S, K, 4), None),
    "heads_do_not_divide": (
        _bad(key=(B, S, 4, H), value=(B, S, 4, H)),
        "key",
        (B, S, 4, H),
        _number(N),
    ),
    "bias_shape": (_bad(bias=(B, 4, T, S)), "bias", (B, 4, T, S), _shape_pattern((B, N, T, S))),
    "mask_shape": (
        _bad(mask=np.ones((T, S + 1), bool)),
        "mask",
        (T, S + 1),
        _shape_pattern((B, N, T, S)),
    ),
    "query_lengths_shape": (
        _bad(query_seq_lengths=_lengths(1, 2, 3)),
        "query_seq_lengths",
        (3,),
        None,
    ),
    "query_segments_shape": (
        _bad(
            query_segment_ids=np.zeros((B, T + 1), np.int32),
            key_value_segment_ids=np.zeros((B, S), np.int32),
        ),
        "query_segment_ids",
        (B, T + 1),
        None,
    ),
    "key_segments_shape": (
        _bad(
            query_segment_ids=np.zeros((B, T), np.int32),
            key_value_segment_ids=np.zeros((B, S - 1), np.int32),
        ),
        "key_value_segment_ids",
        (B, S - 1),
        None,
    ),
    "key_lengths_negative": (
        _bad(key_value_seq_lengths=_lengths(-1, 3)),
        "key_value_seq_lengths",
        None,
        _number(-1),
    ),
    "key_lengths_above_S": (
        _bad(key_value_seq_lengths=_lengths(12, 3)),
        "key_value_seq_lengths",
        None,
        _number(12),
    ),
    "query_lengths_negative": (
        _bad(query_seq_lengths=_lengths(4, -2)),
        "query_seq_lengths",
        None,
        _number(-2),
    ),
    "query_lengths_above_T": (
        _bad(query_seq_lengths=_lengths(14, 3)),
        "query_seq_lengths",
        None,
        _number(14),
    ),
    "no_keys": (_bad(key=(B, 0, K, H), value=(B, 0, K, H)), "key", (B, 0, K, H), None),
}


@pytest.mark.parametrize("case", ERRORS)
@pytest.mark.parametrize("kernel", ZOO)
def test_bad_input_is_a_value_error_naming_argument_and_shapes(kernel, case):
    args, name, given, extra = ERRORS[case]
    with pytest.raises(ValueError) as error:
        ZOO[kernel](**args)
    message = str(error.value)
    assert re.search(rf"\b{name}\b", message), message
    if given is not None:
        assert re.search(_shape_pattern(given), message), message
    if extra is not None:
        assert re.search(extra, message), message


@pytest.mark.parametrize("name", BLOCKS)
def test_blockwise_block_sizes_must_be_positive(name):
    q, k, v, _ = _qkv(19)
    with pytest.raises(ValueError, match=name):
        blockwise_attention(q, k, v, **{name: 0})


# --------------------------------------------------------------------------------------------
# An explicit-sharding mesh, in a 4-device worker process.


def _worker_env():
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # The worker sets its own device count; a count inherited from XLA_FLAGS would clash.
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = flags.strip()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def explicit_mesh_results():
    """One worker run for every case (pytest keeps a failure too, for each case to report)."""
    command = [sys.executable, "-m", "tests.kernels.drop_in_worker", "--devices", "4"]
    try:
        done = subprocess.run(
            [*command, "explicit_mesh"],
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT,
            cwd=ROOT,
            env=_worker_env(),
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"worker did not finish in {WORKER_TIMEOUT} s:\n{e.stderr!r}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        pytest.fail(
            f"worker exited with {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))["explicit_mesh"]


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa_heads_sharded", "mqa_replicated"])
@pytest.mark.parametrize("kernel", ZOO)
def test_explicit_sharding_mesh_gives_the_unsharded_numbers(
    explicit_mesh_results, kernel, kv_heads
):
    got = explicit_mesh_results[f"{kernel}_K={kv_heads}"]
    assert "error" not in got, got.get("error")
    assert got["finite"]
    assert got["out_spec"] == ["data", None, "model", None]  # sharded like the query
    assert got["scale"] > 0.1  # not trivially zero
    assert got["out"] < 1e-5 and got["lse"] < 1e-5, got
    assert max(got["grads"]) < 5e-5, got["grads"]
