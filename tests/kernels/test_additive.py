"""zoo.kernels.additive against a float64 NumPy reference of Bahdanau et al. 2014.

Gradients are checked against central finite differences of the NumPy reference on every
coordinate (the inputs are small), so a bug cannot hide in a shared autodiff path.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.kernels.additive import additive_attention, additive_scores, project_keys

# Prime sizes, so a swapped axis cannot go unnoticed.
B, T, S, A, DQ, DK, DV = 3, 5, 7, 11, 13, 17, 19
FULLY_MASKED = ((0, 2), (2, 4))  # (b, t) query rows with no key to attend
NAMES = ("query", "keys", "values", "w_query", "w_key", "bias", "v")


def reference(query, keys, values, w_query, w_key, bias, v, mask):
    """Eq. (5), (6) and appendix A.1.2 in float64: (context, weights, scores)."""
    projected_keys = keys @ w_key + bias  # U_a h_j
    hidden = np.tanh((query @ w_query)[:, :, None, :] + projected_keys[:, None, :, :])
    scores = hidden @ v  # [B, T, S]
    masked = np.where(mask, scores, -np.inf)
    row_max = masked.max(-1, keepdims=True)
    exp = np.exp(masked - np.where(np.isfinite(row_max), row_max, 0.0))
    total = exp.sum(-1, keepdims=True)
    weights = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
    return weights @ values, weights, scores


def finite_difference_grads(f, args, eps=1e-6):
    """Central differences of the scalar ``f(*args)`` on every coordinate of every arg."""
    grads = []
    for i, x in enumerate(args):
        grad = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            shifted = [list(args), list(args)]
            for sign, row in zip((1, -1), shifted, strict=True):
                moved = x.copy()
                moved[index] += sign * eps
                row[i] = moved
            grad[index] = (f(*shifted[0]) - f(*shifted[1])) / (2 * eps)
        grads.append(grad)
    return grads


def attend(query, keys, values, w_query, w_key, bias, v, mask):
    projected = project_keys(keys, w_key, bias)
    return additive_attention(
        query, projected, values, w_query=w_query, v=v, mask=mask, return_weights=True
    )


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    arrays = {
        "query": rng.standard_normal((B, T, DQ)),
        "keys": rng.standard_normal((B, S, DK)),
        "values": rng.standard_normal((B, S, DV)),
        "w_query": rng.standard_normal((DQ, A)) / np.sqrt(DQ),
        "w_key": rng.standard_normal((DK, A)) / np.sqrt(DK),
        "bias": 0.1 * rng.standard_normal(A),
        "v": rng.standard_normal(A),
    }
    mask = rng.random((B, T, S)) < 0.6
    mask[np.arange(B)[:, None], np.arange(T)[None, :], rng.integers(0, S, (B, T))] = True
    for b, t in FULLY_MASKED:
        mask[b, t] = False
    cotangent = rng.standard_normal((B, T, DV))
    return {k: x.astype(np.float32) for k, x in arrays.items()}, mask, cotangent


def _loss(cotangent):
    def loss(*args):
        context, _ = attend(*args)
        return jnp.sum(context * cotangent)

    return loss


@pytest.fixture(scope="module")
def results(inputs):
    arrays, mask, cotangent = inputs
    args = [arrays[k] for k in NAMES]
    context, weights = jax.jit(attend)(*args, mask)
    grads = jax.jit(jax.grad(_loss(cotangent), argnums=tuple(range(7))))(*args, mask)
    return context, weights, grads


def test_values_match_reference(inputs, results):
    arrays, mask, _ = inputs
    context, weights, _ = results
    ref_context, ref_weights, _ = reference(*(arrays[k].astype(np.float64) for k in NAMES), mask)
    assert context.dtype == jnp.float32 and weights.dtype == jnp.float32
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context, ref_context, rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences(inputs, results):
    arrays, mask, cotangent = inputs
    args64 = [arrays[k].astype(np.float64) for k in NAMES]
    expected = finite_difference_grads(
        lambda *a: np.sum(reference(*a, mask)[0] * cotangent), args64
    )
    for name, got, want in zip(NAMES, results[2], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_fully_masked_rows_are_zero_with_zero_gradients(results):
    context, weights, grads = results
    for b, t in FULLY_MASKED:
        assert np.all(np.asarray(context[b, t]) == 0.0)
        assert np.all(np.asarray(weights[b, t]) == 0.0)
        assert np.all(np.asarray(grads[0][b, t]) == 0.0)  # d loss / d query row
    for name, grad in zip(NAMES, grads, strict=True):
        assert np.all(np.isfinite(grad)), name
    # The other rows are proper distributions.
    sums = np.asarray(weights).sum(-1)
    sums[tuple(np.array(FULLY_MASKED).T)] = 1.0
    np.testing.assert_allclose(sums, 1.0, rtol=1e-6)


def test_scores_match_reference(inputs):
    arrays, mask, _ = inputs
    projected = project_keys(arrays["keys"], arrays["w_key"], arrays["bias"])
    scores = additive_scores(arrays["query"], projected, w_query=arrays["w_query"], v=arrays["v"])
    _, _, ref_scores = reference(*(arrays[k].astype(np.float64) for k in NAMES), mask)
    assert scores.shape == (B, T, S) and scores.dtype == jnp.float32
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mask_shape", [None, (B, 1, S), (T, S), (S,)], ids=["none", "B1S", "TS", "S"]
)
def test_broadcast_masks(inputs, mask_shape):
    arrays, _, _ = inputs
    rng = np.random.default_rng(1)
    mask = None if mask_shape is None else rng.random(mask_shape) < 0.7
    full = np.ones((B, T, S), bool) if mask is None else np.broadcast_to(mask, (B, T, S))
    context, weights = attend(*(arrays[k] for k in NAMES), mask)
    ref_context, ref_weights, _ = reference(*(arrays[k].astype(np.float64) for k in NAMES), full)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context, ref_context, rtol=1e-5, atol=1e-5)


def test_unbatched_and_vmap_match_batched(inputs, results):
    arrays, mask, _ = inputs
    context, weights, _ = results
    per_example = (arrays[k] for k in ("query", "keys", "values"))
    params = [arrays[k] for k in ("w_query", "w_key", "bias", "v")]
    vmapped = jax.vmap(lambda q, k, x, m: attend(q, k, x, *params, m))
    v_context, v_weights = vmapped(*per_example, mask)
    np.testing.assert_allclose(v_context, context, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v_weights, weights, rtol=1e-6, atol=1e-6)
    one = attend(*(arrays[k][1] for k in ("query", "keys", "values")), *params, mask[1])
    assert one[0].shape == (T, DV) and one[1].shape == (T, S)
    np.testing.assert_allclose(one[0], context[1], rtol=1e-6, atol=1e-6)
    projected = project_keys(arrays["keys"][1], arrays["w_key"], arrays["bias"])
    scores = additive_scores(arrays["query"][1], projected, w_query=params[0], v=params[3])
    assert scores.shape == (T, S)


def test_decoder_steps_reuse_projected_keys(inputs, results):
    """Appendix A.1.2: U_a h_j computed once, then one T = 1 call per decoder step."""
    arrays, mask, _ = inputs
    context, _, _ = results
    projected = project_keys(arrays["keys"], arrays["w_key"], arrays["bias"])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(query, mask):
        return additive_attention(
            query, projected, arrays["values"], w_query=arrays["w_query"], v=arrays["v"], mask=mask
        )

    for t in range(T):
        out = step(arrays["query"][:, t : t + 1], mask[:, t : t + 1])
        np.testing.assert_allclose(out, context[:, t : t + 1], rtol=1e-6, atol=1e-6)


def test_checkpoint_gives_the_same_gradients(inputs, results):
    arrays, mask, cotangent = inputs
    loss = jax.checkpoint(_loss(cotangent))
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(7))))(*(arrays[k] for k in NAMES), mask)
    for name, got, want in zip(NAMES, grads, results[2], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs(inputs, dtype):
    arrays, mask, cotangent = inputs
    low = [jnp.asarray(arrays[k], dtype) for k in NAMES]
    context, weights = jax.jit(attend)(*low, mask)
    assert context.dtype == dtype and weights.dtype == jnp.float32
    ref_context, _, _ = reference(*(np.asarray(x, np.float64) for x in low), mask)
    np.testing.assert_allclose(np.asarray(context, np.float64), ref_context, rtol=0.05, atol=0.05)
    grads = jax.jit(jax.grad(_loss(jnp.asarray(cotangent, dtype)), argnums=(0, 6)))(*low, mask)
    for grad in grads:
        assert grad.dtype == dtype and np.all(np.isfinite(np.asarray(grad, np.float32)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_huge_logits_do_not_overflow(inputs, dtype):
    """|e| well above 1e4, and above float16's 65504 unless accumulated in float32."""
    arrays, mask, cotangent = inputs
    low = [jnp.asarray(dict(arrays, v=np.full(A, 6e4))[k], dtype) for k in NAMES]
    context, weights = jax.jit(attend)(*low, mask)
    _, _, ref_scores = reference(*(np.asarray(x, np.float64) for x in low), mask)
    assert np.abs(ref_scores).max() > 65504
    assert np.all(np.isfinite(np.asarray(context, np.float32)))
    sums = np.asarray(weights).sum(-1)
    np.testing.assert_allclose(sums, mask.any(-1).astype(np.float32), rtol=1e-5)
    if dtype == jnp.float32:
        ref_context, _, _ = reference(*(np.asarray(x, np.float64) for x in low), mask)
        np.testing.assert_allclose(context, ref_context, rtol=1e-4, atol=1e-4)
    grads = jax.jit(jax.grad(_loss(jnp.asarray(cotangent, dtype)), argnums=tuple(range(7))))(
        *low, mask
    )
    for name, grad in zip(NAMES, grads, strict=True):
        assert np.all(np.isfinite(np.asarray(grad, np.float32))), name


def _call(**changes):
    """Run the kernels eagerly on float32 inputs with some arguments replaced."""
    rng = np.random.default_rng(2)
    args = {
        "query": rng.standard_normal((B, T, DQ)),
        "projected_keys": rng.standard_normal((B, S, A)),
        "values": rng.standard_normal((B, S, DV)),
        "w_query": rng.standard_normal((DQ, A)),
        "v": rng.standard_normal(A),
        "mask": None,
        "keys": rng.standard_normal((B, S, DK)),
        "w_key": rng.standard_normal((DK, A)),
        "bias": None,
    }
    args = {k: x.astype(np.float32) if isinstance(x, np.ndarray) else x for k, x in args.items()}
    args.update(changes)
    project_keys(args["keys"], args["w_key"], args["bias"])
    additive_attention(
        args["query"],
        args["projected_keys"],
        args["values"],
        w_query=args["w_query"],
        v=args["v"],
        mask=args["mask"],
    )


def _zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype)


ERRORS = [
    # project_keys
    (
        dict(keys=_zeros((S,))),
        ValueError,
        r"keys must be \[B, S, D_k\] or \[S, D_k\], got shape \(7,\)",
    ),
    (
        dict(w_key=_zeros((DQ, A))),
        ValueError,
        r"w_key must be \[D_k, A\] = \[17, A\], got shape \(13, 11\)",
    ),
    (dict(bias=_zeros((A + 1,))), ValueError, r"bias must be \[A\] = \[11\], got shape \(12,\)"),
    (
        dict(keys=_zeros((B, S, DK), np.int32)),
        TypeError,
        r"keys must be floating point, got dtype int32",
    ),
    (
        dict(w_key=_zeros((DK, A), jnp.bfloat16)),
        TypeError,
        r"w_key must have dtype float32 .*got bfloat16",
    ),
    # additive_attention
    (
        dict(projected_keys=_zeros((1, B, S, A))),
        ValueError,
        r"projected_keys must be \[B, S, A\] or \[S, A\], got shape \(1, 3, 7, 11\)",
    ),
    (
        dict(query=_zeros((2, T, DQ))),
        ValueError,
        r"query must be \[B, T, D_q\] = \[3, T, D_q\], got shape \(2, 5, 13\)",
    ),
    (
        dict(query=_zeros((T, DQ))),
        ValueError,
        r"query must be \[B, T, D_q\] = \[3, T, D_q\], got shape \(5, 13\)",
    ),
    (
        dict(w_query=_zeros((DQ, A + 1))),
        ValueError,
        r"w_query must be \[D_q, A\] = \[13, 11\], got shape \(13, 12\)",
    ),
    (
        dict(w_query=_zeros((DQ + 1, A))),
        ValueError,
        r"w_query must be \[D_q, A\] = \[13, 11\], got shape \(14, 11\)",
    ),
    (dict(v=_zeros((A, 1))), ValueError, r"v must be \[A\] = \[11\], got shape \(11, 1\)"),
    (
        dict(values=_zeros((B, S - 1, DV))),
        ValueError,
        r"values must be \[B, S, D_v\] = \[3, 7, D_v\], got shape \(3, 6, 19\)",
    ),
    (
        dict(values=_zeros((B + 1, S, DV))),
        ValueError,
        r"values must be \[B, S, D_v\] = \[3, 7, D_v\], got shape \(4, 7, 19\)",
    ),
    (
        dict(mask=np.ones((B, S), bool)),
        ValueError,
        r"mask must broadcast to \[B, T, S\] = \[3, 5, 7\], got shape \(3, 7\)",
    ),
    (
        dict(mask=np.ones((B, 1, T, S), bool)),
        ValueError,
        r"mask must broadcast to \[B, T, S\] = \[3, 5, 7\], got shape \(3, 1, 5, 7\)",
    ),
    (
        dict(mask=np.ones((B, T, S), np.float32)),
        TypeError,
        r"mask must be bool \(True = attend\), got dtype float32",
    ),
    (
        dict(query=_zeros((B, T, DQ), np.int32)),
        TypeError,
        r"query must be floating point, got dtype int32",
    ),
    (
        dict(values=_zeros((B, S, DV), np.float16)),
        TypeError,
        r"values must have dtype float32 .*got float16",
    ),
    (dict(v=_zeros((A,), jnp.bfloat16)), TypeError, r"v must have dtype float32 .*got bfloat16"),
    # unbatched: the rank of projected_keys decides
    (
        dict(projected_keys=_zeros((S, A))),
        ValueError,
        r"query must be \[T, D_q\], got shape \(3, 5, 13\)",
    ),
    (
        dict(projected_keys=_zeros((S, A)), query=_zeros((T, DQ)), values=_zeros((S + 1, DV))),
        ValueError,
        r"values must be \[S, D_v\] = \[7, D_v\], got shape \(8, 19\)",
    ),
    (
        dict(
            projected_keys=_zeros((S, A)),
            query=_zeros((T, DQ)),
            values=_zeros((S, DV)),
            mask=np.ones((B, T, S), bool),
        ),
        ValueError,
        r"mask must broadcast to \[T, S\] = \[5, 7\], got shape \(3, 5, 7\)",
    ),
]


@pytest.mark.parametrize(("changes", "error", "message"), ERRORS)
def test_bad_inputs_raise_naming_the_argument(changes, error, message):
    with pytest.raises(error, match=message):
        _call(**changes)


def test_additive_scores_checks_its_inputs():
    with pytest.raises(ValueError, match=r"v must be \[A\] = \[11\], got shape \(12,\)"):
        additive_scores(
            _zeros((B, T, DQ)), _zeros((B, S, A)), w_query=_zeros((DQ, A)), v=_zeros((12,))
        )
