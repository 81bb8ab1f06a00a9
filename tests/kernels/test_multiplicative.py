"""zoo.kernels.multiplicative against a float64 NumPy reference of Luong et al. 2015.

Gradients are checked against central finite differences of the NumPy reference on every
coordinate (the inputs are small), so a bug cannot hide in a shared autodiff path.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.kernels.multiplicative import multiplicative_attention, multiplicative_scores

# Prime sizes, so a swapped axis cannot go unnoticed; D_k = D for 'dot'.
B, T, S, D, DK, DV = 3, 5, 7, 13, 17, 19
FULLY_MASKED = ((0, 2), (2, 4))  # (b, t) query rows with no key to attend
SCORES = ("dot", "general")


def reference(query, keys, values, weight, mask):
    """Sec. 3.1, eq. (7) and (8) in float64: (context, weights, scores)."""
    scores = np.zeros((B, T, S))
    for b in range(B):
        for t in range(T):
            for s in range(S):
                h_t = query[b, t] if weight is None else query[b, t] @ weight
                scores[b, t, s] = h_t @ keys[b, s]
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


@pytest.fixture(scope="module")
def inputs():
    """Per score: (query, keys, values, weight or None), mask and cotangent."""
    rng = np.random.default_rng(0)
    query = rng.standard_normal((B, T, D))
    values = rng.standard_normal((B, S, DV))
    dot = (query, rng.standard_normal((B, S, D)) / np.sqrt(D), values, None)
    general_keys = rng.standard_normal((B, S, DK))
    general = (query, general_keys, values, rng.standard_normal((D, DK)) / np.sqrt(D * DK))
    mask = rng.random((B, T, S)) < 0.6
    mask[np.arange(B)[:, None], np.arange(T)[None, :], rng.integers(0, S, (B, T))] = True
    for b, t in FULLY_MASKED:
        mask[b, t] = False
    cotangent = rng.standard_normal((B, T, DV))
    as32 = [
        tuple(None if x is None else x.astype(np.float32) for x in args) for args in (dot, general)
    ]
    return dict(zip(SCORES, as32, strict=True)), mask, cotangent


def attend(query, keys, values, weight, mask):
    return multiplicative_attention(
        query, keys, values, weight=weight, mask=mask, return_weights=True
    )


def _loss(cotangent):
    def loss(query, keys, values, weight, mask):
        context, _ = attend(query, keys, values, weight, mask)
        return jnp.sum(context * cotangent)

    return loss


def _argnums(score):
    return (0, 1, 2) if score == "dot" else (0, 1, 2, 3)


@pytest.fixture(scope="module")
def results(inputs):
    arrays, mask, cotangent = inputs
    out = {}
    for score in SCORES:
        context, weights = jax.jit(attend)(*arrays[score], mask)
        grads = jax.jit(jax.grad(_loss(cotangent), argnums=_argnums(score)))(*arrays[score], mask)
        out[score] = context, weights, grads
    return out


def _as64(args):
    return [None if x is None else np.asarray(x, np.float64) for x in args]


@pytest.mark.parametrize("score", SCORES)
def test_values_match_reference(inputs, results, score):
    arrays, mask, _ = inputs
    context, weights, _ = results[score]
    ref_context, ref_weights, _ = reference(*_as64(arrays[score]), mask)
    assert context.dtype == jnp.float32 and weights.dtype == jnp.float32
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context, ref_context, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("score", SCORES)
def test_gradients_match_finite_differences(inputs, results, score):
    arrays, mask, cotangent = inputs
    args = _as64(arrays[score])
    differentiable = args[: len(_argnums(score))]
    weight = None if score == "dot" else args[3]

    def loss(query, keys, values, weight=weight):
        return np.sum(reference(query, keys, values, weight, mask)[0] * cotangent)

    expected = finite_difference_grads(loss, differentiable)
    names = ("query", "keys", "values", "weight")
    for name, got, want in zip(names, results[score][2], expected, strict=False):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("score", SCORES)
def test_fully_masked_rows_are_zero_with_zero_gradients(results, score):
    context, weights, grads = results[score]
    for b, t in FULLY_MASKED:
        assert np.all(np.asarray(context[b, t]) == 0.0)
        assert np.all(np.asarray(weights[b, t]) == 0.0)
        assert np.all(np.asarray(grads[0][b, t]) == 0.0)  # d loss / d query row
    for grad in grads:
        assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("score", SCORES)
def test_scores_match_reference(inputs, score):
    arrays, mask, _ = inputs
    query, keys, _, weight = arrays[score]
    scores = multiplicative_scores(query, keys, weight=weight)
    _, _, ref_scores = reference(*_as64(arrays[score]), mask)
    assert scores.shape == (B, T, S) and scores.dtype == jnp.float32
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_dot_is_general_with_identity(inputs, results):
    arrays, mask, _ = inputs
    query, keys, values, _ = arrays["dot"]
    context, _ = attend(query, keys, values, np.eye(D, dtype=np.float32), mask)
    np.testing.assert_allclose(context, results["dot"][0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mask_shape", [None, (B, 1, S), (T, S)], ids=["none", "B1S", "TS"])
def test_broadcast_masks(inputs, mask_shape):
    arrays, _, _ = inputs
    rng = np.random.default_rng(1)
    mask = None if mask_shape is None else rng.random(mask_shape) < 0.7
    full = np.ones((B, T, S), bool) if mask is None else np.broadcast_to(mask, (B, T, S))
    context, weights = attend(*arrays["general"], mask)
    ref_context, ref_weights, _ = reference(*_as64(arrays["general"]), full)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context, ref_context, rtol=1e-5, atol=1e-5)


def test_unbatched_and_vmap_match_batched(inputs, results):
    arrays, mask, _ = inputs
    query, keys, values, weight = arrays["general"]
    context, weights, _ = results["general"]
    vmapped = jax.vmap(lambda q, k, x, m: attend(q, k, x, weight, m))
    v_context, v_weights = vmapped(query, keys, values, mask)
    np.testing.assert_allclose(v_context, context, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v_weights, weights, rtol=1e-6, atol=1e-6)
    one, one_weights = attend(query[1], keys[1], values[1], weight, mask[1])
    assert one.shape == (T, DV) and one_weights.shape == (T, S)
    np.testing.assert_allclose(one, context[1], rtol=1e-6, atol=1e-6)
    assert multiplicative_scores(query[1], keys[1], weight=weight).shape == (T, S)


def test_checkpoint_gives_the_same_gradients(inputs, results):
    arrays, mask, cotangent = inputs
    loss = jax.checkpoint(_loss(cotangent))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*arrays["general"], mask)
    for got, want in zip(grads, results["general"][2], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs(inputs, dtype):
    arrays, mask, cotangent = inputs
    low = [jnp.asarray(x, dtype) for x in arrays["general"]]
    context, weights = jax.jit(attend)(*low, mask)
    assert context.dtype == dtype and weights.dtype == jnp.float32
    ref_context, _, _ = reference(*_as64(low), mask)
    np.testing.assert_allclose(np.asarray(context, np.float64), ref_context, rtol=0.05, atol=0.05)
    grads = jax.jit(jax.grad(_loss(jnp.asarray(cotangent, dtype)), argnums=(0, 3)))(*low, mask)
    for grad in grads:
        assert grad.dtype == dtype and np.all(np.isfinite(np.asarray(grad, np.float32)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_huge_logits_do_not_overflow(inputs, dtype):
    """Scores far above 1e4, and above float16's 65504 unless accumulated in float32."""
    arrays, mask, cotangent = inputs
    query, keys, values, _ = arrays["dot"]
    low = [jnp.asarray(x, dtype) for x in (300 * query, 300 * keys, values)]
    context, weights = jax.jit(attend)(*low, None, mask)
    _, _, ref_scores = reference(*_as64(low), None, mask)
    assert np.abs(ref_scores).max() > 65504
    assert np.all(np.isfinite(np.asarray(context, np.float32)))
    sums = np.asarray(weights).sum(-1)
    np.testing.assert_allclose(sums, mask.any(-1).astype(np.float32), rtol=1e-5)
    if dtype == jnp.float32:
        ref_context, _, _ = reference(*_as64(low), None, mask)
        np.testing.assert_allclose(context, ref_context, rtol=1e-4, atol=1e-4)
    loss = _loss(jnp.asarray(cotangent, dtype))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*low, None, mask)
    for grad in grads:
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def _call(weight=(D, DK), **changes):
    """Run the kernels eagerly on float32 inputs with some arguments replaced."""
    args = {
        "query": np.zeros((B, T, D), np.float32),
        "keys": np.zeros((B, S, DK), np.float32),
        "values": np.zeros((B, S, DV), np.float32),
        "weight": None if weight is None else np.zeros(weight, np.float32),
        "mask": None,
    }
    args.update(changes)
    multiplicative_attention(
        args["query"], args["keys"], args["values"], weight=args["weight"], mask=args["mask"]
    )


def _zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype)


ERRORS = [
    (
        dict(keys=_zeros((S,))),
        ValueError,
        r"keys must be \[B, S, D_k\] or \[S, D_k\], got shape \(7,\)",
    ),
    (
        dict(query=_zeros((B + 1, T, D))),
        ValueError,
        r"query must be \[B, T, D\] = \[3, T, D\], got shape \(4, 5, 13\)",
    ),
    (
        dict(query=_zeros((T, D))),
        ValueError,
        r"query must be \[B, T, D\] = \[3, T, D\], got shape \(5, 13\)",
    ),
    (
        dict(weight=(D, DK + 1)),
        ValueError,
        r"weight must be \[D, D_k\] = \[13, 17\], got shape \(13, 18\)",
    ),
    (
        dict(weight=(D + 1, DK)),
        ValueError,
        r"weight must be \[D, D_k\] = \[13, 17\], got shape \(14, 17\)",
    ),
    (
        dict(weight=None),
        ValueError,
        r"the 'dot' score \(weight=None\) needs keys \[B, S, D_k\] with D_k = D = 13, got keys shape \(3, 7, 17\); pass weight \[D, D_k\]",
    ),
    (
        dict(values=_zeros((B, S + 1, DV))),
        ValueError,
        r"values must be \[B, S, D_v\] = \[3, 7, D_v\], got shape \(3, 8, 19\)",
    ),
    (
        dict(mask=np.ones((B, S), bool)),
        ValueError,
        r"mask must broadcast to \[B, T, S\] = \[3, 5, 7\], got shape \(3, 7\)",
    ),
    (
        dict(mask=np.ones((B, T, S), np.int32)),
        TypeError,
        r"mask must be bool \(True = attend\), got dtype int32",
    ),
    (
        dict(keys=_zeros((B, S, DK), np.int32)),
        TypeError,
        r"keys must be floating point, got dtype int32",
    ),
    (
        dict(weight=None, keys=_zeros((B, S, D), jnp.bfloat16)),
        TypeError,
        r"keys must have dtype float32 .*got bfloat16",
    ),
    (
        dict(values=_zeros((B, S, DV), np.float16)),
        TypeError,
        r"values must have dtype float32 .*got float16",
    ),
    (dict(keys=_zeros((S, DK))), ValueError, r"query must be \[T, D\], got shape \(3, 5, 13\)"),
    (
        dict(
            keys=_zeros((S, DK)),
            query=_zeros((T, D)),
            values=_zeros((S, DV)),
            mask=np.ones((B, T, S), bool),
        ),
        ValueError,
        r"mask must broadcast to \[T, S\] = \[5, 7\], got shape \(3, 5, 7\)",
    ),
    (
        dict(weight=None, keys=_zeros((S, DK)), query=_zeros((T, D))),
        ValueError,
        r"needs keys \[S, D_k\] with D_k = D = 13, got keys shape \(7, 17\)",
    ),
]


@pytest.mark.parametrize(("changes", "error", "message"), ERRORS)
def test_bad_inputs_raise_naming_the_argument(changes, error, message):
    with pytest.raises(error, match=message):
        _call(**changes)


def test_multiplicative_scores_checks_its_inputs():
    with pytest.raises(
        ValueError, match=r"weight must be \[D, D_k\] = \[13, 17\], got shape \(17, 13\)"
    ):
        multiplicative_scores(_zeros((B, T, D)), _zeros((B, S, DK)), weight=_zeros((DK, D)))
