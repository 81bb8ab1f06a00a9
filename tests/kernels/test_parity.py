"""Every kernel against the float64 reference: values, log-sum-exp and gradients, every option.

Kernels: ``KERNELS["reference"]``; ``KERNELS["blockwise"]`` with 4 x 3 blocks, which divide
neither T = 13 nor S = 11 (a partial last block on both sides); ``ring_attention`` on a
one-device mesh, for the options it takes (no mask, bias or dropout). N = 6 query
heads over K in {1, 2, 3, 6} key/value heads: MQA, G = 3, G = 2, MHA. Every case compares the
output, the log-sum-exp residual and the gradients of q, k, v and bias (summed to the bias's
own broadcast shape) with tests/kernels/reference.py, whose backward is derived by hand.

Compile time dominates on CPU, so two things cut it. Each kernel's cases are traced one by one
(a case that cannot even trace fails alone, with its own error), and the rest are compiled
together as one XLA program: 12 reference-kernel cases took 19.6 s of CPU one program each,
11.5 s as one. And LLVM does not optimize the machine code (``xla_backend_optimization_level
= 0``), which changes no semantics and cuts compile time another 2.7x (10.4 s -> 3.9 s for
those 12 cases; blockwise 11.7 -> 7.7 s); at these sizes the code runs in milliseconds either
way. Every case is still its own test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels import reference
from zoo.kernels import ring_attention

# Prime sizes where they can be, so a swapped axis cannot go unnoticed.
B, T, S, N, H = 2, 13, 11, 6, 5
BLOCKS = {"query_block_size": 4, "key_value_block_size": 3}
KERNEL_NAMES = ("reference", "blockwise", "ring")
# What ring_attention cannot take: each would need T x S memory.
RING_REFUSES = ("bias", "mask", "dropout_rate")
ATOL, RTOL = 2e-5, 2e-5  # float32 values and log-sum-exp against float64
GRAD_ATOL, GRAD_RTOL = 5e-5, 5e-5
# Unoptimized machine code: the same numbers, compiled several times faster (module docstring).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _kernel(name):
    """The function under test, with the placement or block sizes the tests use."""
    if name == "ring":
        mesh = jax.make_mesh((1,), ("seq",), devices=jax.devices()[:1])
        return functools.partial(ring_attention, mesh=mesh, axis_name="seq")
    from zoo.kernels import KERNELS  # here, so that the ring's tests run without it

    if name == "reference":
        return KERNELS["reference"]
    return functools.partial(KERNELS["blockwise"], **BLOCKS)


# --------------------------------------------------------------------------------------------
# The cases: K, the leading batch dims, and the keyword arguments of the call (numpy arrays
# are traced inputs; everything else is static).


def _cases():
    rng = np.random.default_rng(7)

    def mask(shape):
        m = rng.random(shape) < 0.7
        m[..., 2, :] = False  # query row 2 has no key to attend
        return m

    def values(m, choices, dtype):
        return np.where(m, rng.choice(choices, m.shape), 0).astype(dtype)

    def bias(shape):
        return rng.standard_normal(shape).astype(np.float32)

    def ids(*shape, segments=3):
        return np.sort(rng.integers(0, segments, shape), axis=-1).astype(np.int32)

    def lengths(*values):
        return np.array(values, np.int32)

    # Segments: example 1's query segment 2 has no key (its rows are dead); keys 0-2 of
    # example 0 are in a segment no query has.
    q_seg = np.array([[0] * 5 + [1] * 8, [0] * 4 + [1] * 3 + [2] * 6], np.int32)
    kv_seg = np.array([[3] * 3 + [0] * 4 + [1] * 4, [0] * 6 + [1] * 5], np.int32)
    with_inf = bias((B, N, T, S))
    with_inf[0, :, 4] = -np.inf  # a bias row that is -inf everywhere
    with_inf[1, 3, :, 5] = -np.inf  # and a masked-out key in one head
    with_inf[rng.random(with_inf.shape) < 0.1] = -np.inf
    batch2 = (2, 3)  # two leading batch dims

    return {
        # GQA: K = N (MHA), N / 2, N / 3 and 1 (MQA).
        "plain_K6": dict(K=6),
        "plain_K2": dict(K=2),
        "plain_K1": dict(K=1),
        # Positional masks.
        "causal": dict(K=3, is_causal=True),
        "causal_K1_scale": dict(K=1, is_causal=True, scale=1.3),
        "window_symmetric": dict(K=2, local_window_size=2),
        "window_left_only": dict(K=6, local_window_size=(3, 0)),
        "window_right_only": dict(K=3, local_window_size=(0, 2)),
        # Padding: example 1 of kv_lengths has no key at all (every row dead).
        "query_lengths": dict(K=3, query_seq_lengths=lengths(13, 6)),
        "key_lengths": dict(K=1, key_value_seq_lengths=lengths(11, 0)),
        "lengths_causal": dict(
            K=2,
            is_causal=True,
            query_seq_lengths=lengths(13, 9),
            key_value_seq_lengths=lengths(11, 3),
        ),
        "segments": dict(K=3, query_segment_ids=q_seg, key_value_segment_ids=kv_seg),
        # A user mask: bool, per head, [T, S], and float / int read as attend-where-nonzero.
        "mask": dict(K=3, mask=mask((B, 1, T, S))),
        "mask_per_head": dict(K=2, mask=mask((B, N, T, S))),
        "mask_2d": dict(K=6, mask=mask((T, S))),
        "mask_float": dict(
            K=3, mask=values(mask((B, 1, T, S)), [1.0, 0.5, -2.0, 3e-3], np.float32)
        ),
        "mask_int_no_batch": dict(K=1, mask=values(mask((N, T, S)), [1, 3, -1], np.int32)),
        # Bias, full and broadcast; -inf entries are masked keys, an all -inf row is dead.
        "bias": dict(K=3, bias=bias((B, N, T, S))),
        "bias_heads": dict(K=2, bias=bias((N, T, S))),
        "bias_2d": dict(K=6, bias=bias((T, S))),
        "bias_per_key": dict(K=1, bias=bias((1, N, 1, S))),
        "bias_per_query": dict(K=3, bias=bias((B, 1, T, 1))),
        "bias_neg_inf": dict(K=3, bias=with_inf),
        "bias_mask_causal": dict(
            K=2, is_causal=True, scale=0.7, bias=bias((B, 1, T, S)), mask=mask((B, N, T, S))
        ),
        # Everything at once.
        "all": dict(
            K=2,
            scale=0.37,
            is_causal=True,
            local_window_size=(5, 2),
            bias=bias((B, N, T, S)),
            mask=mask((B, 1, T, S)),
            query_seq_lengths=lengths(12, 13),
            key_value_seq_lengths=lengths(11, 7),
            query_segment_ids=ids(B, T, segments=2),
            key_value_segment_ids=ids(B, S, segments=2),
        ),
        "all_K1_not_causal": dict(
            K=1,
            local_window_size=3,
            bias=bias((N, T, S)),
            mask=values(mask((B, 1, T, S)), [1.0], np.float32),
            query_seq_lengths=lengths(13, 10),
            key_value_seq_lengths=lengths(8, 11),
            query_segment_ids=q_seg,
            key_value_segment_ids=kv_seg,
        ),
        "all_positional_K6": dict(
            K=6,
            is_causal=True,
            local_window_size=(2, 0),
            query_seq_lengths=lengths(11, 13),
            key_value_seq_lengths=lengths(10, 5),
            query_segment_ids=ids(B, T),
            key_value_segment_ids=ids(B, S),
        ),
        "every_row_dead": dict(K=3, bias=bias((B, N, T, S)), mask=np.zeros((B, 1, T, S), bool)),
        # Leading batch dims: none, and two.
        "unbatched": dict(
            K=3,
            batch=(),
            is_causal=True,
            key_value_seq_lengths=np.array(8, np.int32),
            query_segment_ids=q_seg[1],
            key_value_segment_ids=kv_seg[1],
        ),
        "unbatched_bias_mask": dict(
            K=2, batch=(), bias=bias((T, S)), mask=mask((N, T, S)).astype(np.float32)
        ),
        "two_batch_dims": dict(
            K=2,
            batch=batch2,
            local_window_size=(3, 1),
            bias=bias((3, N, T, S)),
            mask=mask((*batch2, 1, T, S)),
            query_seq_lengths=lengths(13, 12, 5, 13, 0, 9).reshape(batch2),
            key_value_seq_lengths=lengths(11, 4, 11, 7, 11, 1).reshape(batch2),
            query_segment_ids=ids(*batch2, T),
            key_value_segment_ids=ids(*batch2, S),
        ),
    }


CASES = _cases()


def _supports(kernel, case):
    if kernel != "ring":
        return True
    return not any(name in case for name in RING_REFUSES)


PARAMS = [(k, c) for k in KERNEL_NAMES for c in CASES if _supports(k, CASES[c])]


@functools.cache
def _inputs(case):
    """q, k, v, d_out (float32) and the call's keyword arguments of one case."""
    spec = dict(CASES[case])
    K, batch = spec.pop("K"), spec.pop("batch", (B,))
    rng = np.random.default_rng(list(CASES).index(case))
    q, k, v, d_out = (
        rng.standard_normal(s).astype(np.float32)
        for s in ((*batch, T, N, H), (*batch, S, K, H), (*batch, S, K, H), (*batch, T, N, H))
    )
    return q, k, v, d_out, spec


def _split(kwargs):
    arrays = {n: x for n, x in kwargs.items() if isinstance(x, np.ndarray) and n != "bias"}
    static = {n: x for n, x in kwargs.items() if not isinstance(x, np.ndarray)}
    return kwargs.get("bias"), arrays, static


def _value_and_grads(kernel, static, residual):
    """f(q, k, v, d_out, bias, arrays) -> (out, lse, grads): one program per call."""

    def f(q, k, v, d_out, bias, arrays):
        def loss(q, k, v, bias):
            extra = {} if bias is None else {"bias": bias}
            result = kernel(q, k, v, **extra, **arrays, **static, **residual)
            out, lse = result if residual else (result, None)
            return jnp.sum(out.astype(jnp.float32) * d_out), (out, lse)

        argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
        (_, (out, lse)), grads = jax.value_and_grad(loss, argnums, has_aux=True)(q, k, v, bias)
        return out, lse, grads

    return f


@functools.cache
def _results(kernel_name):
    """Every supported case of one kernel: (out, lse, grads), or the exception it raised."""
    kernel = _kernel(kernel_name)
    residual = {"return_residual": True}
    results, fns, args = {}, {}, {}
    for case in CASES:
        if not _supports(kernel_name, CASES[case]):
            continue
        q, k, v, d_out, kwargs = _inputs(case)
        bias, arrays, static = _split(kwargs)
        fn = _value_and_grads(kernel, static, residual)
        try:
            jax.eval_shape(fn, q, k, v, d_out, bias, arrays)
        except Exception as e:  # reported by this case's own test, not by its neighbours
            results[case] = e
            continue
        fns[case], args[case] = fn, (q, k, v, d_out, bias, arrays)
    together = _jit(lambda args: {case: fns[case](*a) for case, a in args.items()})
    results.update(jax.device_get(together(args)))
    return results


@functools.cache
def _expected(case):
    q, k, v, d_out, kwargs = _inputs(case)
    return reference.attention_call(q, k, v, d_out, **kwargs)


def _check(got, want, *, bias_shape):
    out, lse, grads = got
    assert out.shape == want["out"].shape and out.dtype == np.float32
    live = want["live"]
    np.testing.assert_allclose(out, want["out"], atol=ATOL, rtol=RTOL, err_msg="out")
    # Zoo convention: a row with nothing to attend is exactly zero, and so is its gradient.
    np.testing.assert_array_equal(out[~live], 0.0, err_msg="out of rows with no key")
    np.testing.assert_array_equal(grads[0][~live], 0.0, err_msg="dq of rows with no key")
    names = ["dq", "dk", "dv", "dbias"][: len(grads)]
    for name, g in zip(names, grads, strict=True):
        assert np.isfinite(g).all(), name
        assert g.shape == (bias_shape if name == "dbias" else want[name].shape), name
        np.testing.assert_allclose(g, want[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, err_msg=name)
    assert lse.shape == live.shape and lse.dtype == np.float32
    np.testing.assert_allclose(lse[live], want["lse"][live], atol=ATOL, rtol=RTOL)
    # No inf anywhere: a row with nothing to attend has a finite, very negative lse.
    assert np.isfinite(lse).all()
    assert (lse[~live] < -1e3).all(), lse[~live]


@pytest.mark.parametrize("kernel,case", PARAMS)
def test_values_residual_and_gradients_match_float64_reference(kernel, case):
    got = _results(kernel)[case]
    if isinstance(got, Exception):
        raise got
    bias = CASES[case].get("bias")
    _check(got, _expected(case), bias_shape=np.shape(bias))


def test_the_cases_cover_dead_rows_every_gqa_ratio_and_batch_rank():
    """The table above exercises what the module docstring promises."""
    assert {CASES[c]["K"] for c in CASES} == {1, 2, 3, 6}
    assert {len(CASES[c].get("batch", (B,))) for c in CASES} == {0, 1, 2}
    dead = [c for c in CASES if not _expected(c)["live"].all()]
    assert len(dead) >= 15, dead
    ring_dead = [c for c in dead if _supports("ring", CASES[c])]
    assert len(ring_dead) >= 4, ring_dead
    assert sum(_supports("ring", CASES[c]) for c in CASES) >= 12


def test_registry_holds_the_kernels_and_each_matches_the_reference():
    from zoo.kernels import KERNELS

    assert {"reference", "blockwise"} <= set(KERNELS)
    q, k, v, d_out, kwargs = _inputs("all")
    bias, arrays, static = _split(kwargs)
    # The reference is covered above; blockwise here with its default block sizes.
    for name, kernel in KERNELS.items():
        if name != "reference":
            fn = _jit(_value_and_grads(kernel, static, {"return_residual": True}))
            got = jax.device_get(fn(q, k, v, d_out, bias, arrays))
            _check(got, _expected("all"), bias_shape=bias.shape)


# --------------------------------------------------------------------------------------------
# Random masks, lengths, segments and bias (the positional masks are static: the table covers
# them). One compiled program per kernel, fed new arrays by every example.

K_PROP = 2


@functools.cache
def _property_fn(kernel_name):
    residual = {"return_residual": True}
    return _jit(_value_and_grads(_kernel(kernel_name), {}, residual))


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), density=st.floats(0.0, 1.0), segments=st.integers(1, 3))
def test_property_random_options_match_reference(kernel, seed, density, segments):
    rng = np.random.default_rng(seed)
    q, k, v, d_out = (
        rng.standard_normal(s).astype(np.float32)
        for s in ((B, T, N, H), (B, S, K_PROP, H), (B, S, K_PROP, H), (B, T, N, H))
    )
    arrays = {
        "query_seq_lengths": rng.integers(0, T + 1, B).astype(np.int32),
        "key_value_seq_lengths": rng.integers(0, S + 1, B).astype(np.int32),
        "query_segment_ids": rng.integers(0, segments, (B, T)).astype(np.int32),
        "key_value_segment_ids": rng.integers(0, segments, (B, S)).astype(np.int32),
    }
    bias = None
    if kernel != "ring":
        arrays["mask"] = rng.random((B, N, T, S)) < density
        bias = rng.standard_normal((B, 1, T, S)).astype(np.float32)
    got = jax.device_get(_property_fn(kernel)(q, k, v, d_out, bias, arrays))
    want = reference.attention_call(q, k, v, d_out, bias=bias, **arrays)
    _check(got, want, bias_shape=np.shape(bias))


# --------------------------------------------------------------------------------------------
# Dropout. The reference and blockwise kernels draw different patterns, so each is checked on
# its own: with the values the identity (H = S), the output row is the dropped weights row,
# which shows the pattern; then the gradients must be the reference's for that same pattern.

RATE = 0.3
DROP_K, DROP_H = 3, S


@functools.cache
def _dropout_inputs():
    rng = np.random.default_rng(11)
    q = rng.standard_normal((B, T, N, DROP_H)).astype(np.float32)
    k = rng.standard_normal((B, S, DROP_K, DROP_H)).astype(np.float32)
    v = np.broadcast_to(np.eye(S, dtype=np.float32)[:, None], (B, S, DROP_K, S)).copy()
    d_out = rng.standard_normal((B, T, N, DROP_H)).astype(np.float32)
    return q, k, v, d_out


@functools.cache
def _dropout_fn(kernel_name):
    """(q, k, v, d_out, rng) -> {broadcast: (out, (dq, dk, dv))} for broadcast True and False."""
    kernel = functools.partial(_kernel(kernel_name), is_causal=True, dropout_rate=RATE)

    def f(q, k, v, d_out, rng):
        def loss(q, k, v, broadcast):
            out = kernel(q, k, v, dropout_rng=rng, broadcast_dropout=broadcast)
            return jnp.sum(out * d_out), out

        results = {}
        for broadcast in (True, False):
            (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, broadcast)
            results[broadcast] = out, grads
        return results

    return _jit(f)


def _dropout_run(kernel_name, broadcast, seed):
    q, k, v, d_out = _dropout_inputs()
    results = _dropout_fn(kernel_name)(q, k, v, d_out, jax.random.key(seed))
    return jax.device_get(results[broadcast])


def _pattern(kernel_name, broadcast, seed):
    """(keep, out, grads): keep [B, N, T, S] is 0 (dropped), 1 (kept) or -1 (weight is 0)."""
    out, grads = _dropout_run(kernel_name, broadcast, seed)
    q, k, v, d_out = _dropout_inputs()
    weights = reference.attention_call(q, k, v, d_out, is_causal=True)["out"]
    seen = weights.transpose(0, 2, 1, 3) > 0  # identity values: out row = weights row
    ratio = out.transpose(0, 2, 1, 3) / np.where(seen, weights.transpose(0, 2, 1, 3), 1.0)
    # Each weight is dropped or scaled by 1 / (1 - rate); nothing in between.
    kept = np.abs(ratio * (1 - RATE) - 1) < 1e-3
    dropped = np.abs(ratio) < 1e-3
    assert (kept | dropped)[seen].all(), np.unique(ratio[seen & ~kept & ~dropped].round(4))
    return np.where(seen, kept.astype(int), -1), out, grads


@pytest.mark.parametrize("broadcast", [True, False], ids=["broadcast", "per_head"])
@pytest.mark.parametrize("kernel", ["reference", "blockwise"])
def test_dropout_pattern_statistics_and_gradients(kernel, broadcast):
    keep, out, grads = _pattern(kernel, broadcast, seed=0)
    seen = keep >= 0
    fraction = keep[seen].mean()
    shared = np.broadcast_to(keep[:1, :1], keep.shape)  # (the causal mask is the same for all)
    if broadcast:  # one [T, S] pattern for every example and head (as flax)
        np.testing.assert_array_equal(keep, shared)
        assert 0.45 < fraction < 0.95, fraction  # 88 draws: 5 standard deviations
    else:  # 12 x 88 independent draws: 0.06 is over 4 standard deviations
        assert (keep != shared).any()
        assert abs(fraction - (1 - RATE)) < 0.06, fraction
    # The backward pass uses the forward's pattern.
    q, k, v, d_out = _dropout_inputs()
    pattern = np.where(keep == 1, 1 / (1 - RATE), 0.0)
    want = reference.attention_call(q, k, v, d_out, is_causal=True, keep=pattern)
    np.testing.assert_allclose(out, want["out"], atol=ATOL, rtol=RTOL)
    for name, g in zip(("dq", "dk", "dv"), grads, strict=True):
        np.testing.assert_allclose(g, want[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, err_msg=name)


@pytest.mark.parametrize("kernel", ["reference", "blockwise"])
def test_dropout_is_a_function_of_the_key_and_off_when_deterministic(kernel):
    first, out, _ = _pattern(kernel, False, seed=0)
    _, out_again, _ = _pattern(kernel, False, seed=0)
    other, _, _ = _pattern(kernel, False, seed=1)
    np.testing.assert_array_equal(out, out_again)
    assert (first != other).mean() > 0.1  # independent patterns differ in ~26% of entries
    # deterministic=True turns dropout off (flax passes it; the key is then ignored).
    q, k, v, d_out = _dropout_inputs()
    off = _jit(
        lambda q, k, v, rng: _kernel(kernel)(
            q, k, v, is_causal=True, dropout_rate=RATE, dropout_rng=rng, deterministic=True
        )
    )(q, k, v, jax.random.key(0))
    want = reference.attention_call(q, k, v, d_out, is_causal=True)
    np.testing.assert_allclose(off, want["out"], atol=ATOL, rtol=RTOL)
