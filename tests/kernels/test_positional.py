"""zoo.kernels.positional against the papers' formulas, written as plain float64 loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.kernels.positional import alibi_bias, alibi_slopes, apply_rotary, sinusoidal_positions

# Prime sizes where the maths allows (D and H must be even).
B, T, N, H, D = 3, 5, 7, 22, 26


# ----------------------------------------------------------------------------- sinusoidal


def sinusoidal_reference(positions, dim):
    """Vaswani et al. 2017, sec. 3.5, one entry at a time."""
    out = np.zeros((*positions.shape, dim))
    for index in np.ndindex(positions.shape):
        pos = float(positions[index])
        for i in range(dim // 2):
            out[(*index, 2 * i)] = np.sin(pos / 10000 ** (2 * i / dim))
            out[(*index, 2 * i + 1)] = np.cos(pos / 10000 ** (2 * i / dim))
    return out


def test_sinusoidal_matches_the_paper():
    positions = np.random.default_rng(0).integers(0, 512, (B, T)).astype(np.int32)
    got = sinusoidal_positions(positions, D)
    assert got.shape == (B, T, D) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, sinusoidal_reference(positions, D), atol=1e-4)
    unbatched = sinusoidal_positions(positions[1], D)
    assert unbatched.shape == (T, D)
    np.testing.assert_allclose(unbatched, got[1], atol=0)


def test_sinusoidal_known_values():
    got = np.asarray(sinusoidal_positions(jnp.arange(2), 4))
    # Position 0 is (sin 0, cos 0, ...); position 1 has frequencies 1 and 1/100.
    np.testing.assert_allclose(got[0], [0, 1, 0, 1], atol=0)
    np.testing.assert_allclose(
        got[1], [np.sin(1), np.cos(1), np.sin(0.01), np.cos(0.01)], atol=1e-6
    )


# ---------------------------------------------------------------------------------- rotary


def rotary_reference(x, positions, base=10000.0):
    """Rotate-half RoPE: channel i pairs with i + H/2, angle m * base^(-2i / H)."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    positions = np.broadcast_to(positions, x.shape[:-2])
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        m = positions[index[:-1]]
        for i in range(half):
            angle = m * base ** (-2 * i / x.shape[-1])
            a, b = x[(*index, i)], x[(*index, i + half)]
            out[(*index, i)] = a * np.cos(angle) - b * np.sin(angle)
            out[(*index, i + half)] = b * np.cos(angle) + a * np.sin(angle)
    return out


def roformer_eq34(x, m, base=10000.0):
    """Su et al. 2021, eq. (34), on one vector: rotations of adjacent pairs (x_2i, x_2i+1)."""
    theta = np.repeat(base ** (-2 * np.arange(len(x) // 2) / len(x)), 2)
    rotated = np.stack([-x[1::2], x[0::2]], axis=-1).reshape(-1)
    return x * np.cos(m * theta) + rotated * np.sin(m * theta)


@pytest.fixture(scope="module")
def rotary_inputs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, N, H)).astype(np.float32)
    positions = rng.integers(0, 100, (B, T)).astype(np.int32)
    return x, positions


def test_rotary_matches_reference(rotary_inputs):
    x, positions = rotary_inputs
    got = jax.jit(apply_rotary)(x, positions)
    assert got.shape == x.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, rotary_reference(x, positions), atol=1e-4)
    shared = apply_rotary(x, positions[0])  # [T] positions shared by the batch
    np.testing.assert_allclose(shared, rotary_reference(x, positions[0]), atol=1e-4)
    unbatched = apply_rotary(x[2], positions[2])
    np.testing.assert_allclose(unbatched, got[2], atol=1e-6)


def test_rotary_is_roformer_eq34_up_to_a_channel_permutation():
    """Rotate-half on channels (i, i + H/2) is eq. (34) on pairs (2i, 2i + 1), permuted."""
    x = np.random.default_rng(2).standard_normal(H)
    # Interleaved channel 2i is rotate-half channel i; 2i + 1 is channel i + H/2.
    to_half = np.stack([np.arange(H // 2), np.arange(H // 2) + H // 2], axis=-1).reshape(-1)
    got = np.asarray(apply_rotary(x[None, None, :].astype(np.float32), np.array([9])))[0, 0]
    np.testing.assert_allclose(got[to_half], roformer_eq34(x[to_half], 9), atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, H)).astype(np.float32)
    positions = np.arange(12, dtype=np.int32)
    rq = apply_rotary(np.broadcast_to(q, (12, 1, H)), positions)[:, 0]
    rk = apply_rotary(np.broadcast_to(k, (12, 1, H)), positions)[:, 0]
    scores = np.asarray(rq @ rk.T, np.float64)  # scores[m, n] = <R_m q, R_n k>
    # Constant along every diagonal m - n = const ...
    np.testing.assert_allclose(scores[1:, 1:], scores[:-1, :-1], rtol=1e-5, atol=1e-5)
    # ... but not constant overall: the positions are really there.
    assert abs(scores[3, 0] - scores[0, 3]) > 1e-2
    np.testing.assert_allclose(scores[0, 0], q @ k, rtol=1e-5)  # R_0 is the identity


def test_rotary_gradient_is_the_inverse_rotation(rotary_inputs):
    """R_m is orthogonal, so d<c, R_m x>/dx = R_m^T c = R_{-m} c."""
    x, positions = rotary_inputs
    cotangent = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)

    def loss(x):
        return jnp.sum(apply_rotary(x, positions) * cotangent)

    for f in (loss, jax.checkpoint(loss)):
        grad = jax.jit(jax.grad(f))(x)
        np.testing.assert_allclose(grad, apply_rotary(cotangent, -positions), atol=1e-5)


def test_rotary_vmap_matches_batched(rotary_inputs):
    x, positions = rotary_inputs
    np.testing.assert_allclose(
        jax.vmap(apply_rotary)(x, positions), apply_rotary(x, positions), atol=1e-6
    )


def test_rotary_low_precision_keeps_dtype(rotary_inputs):
    x, positions = rotary_inputs
    for dtype in (jnp.bfloat16, jnp.float16):
        low = jnp.asarray(x, dtype)
        got = apply_rotary(low, positions)
        assert got.dtype == dtype
        want = rotary_reference(np.asarray(low, np.float64), positions)
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_for_eight_heads():
    np.testing.assert_array_equal(alibi_slopes(8), [2.0**-k for k in range(1, 9)])


def test_alibi_slopes_non_power_of_two():
    # 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope.
    np.testing.assert_array_equal(alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    # 12 heads: the 8-head slopes, then slopes 1, 3, 5, 7 of the 16-head 2^(-k/2).
    want = [2.0**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    np.testing.assert_allclose(alibi_slopes(12), want, rtol=1e-7)
    np.testing.assert_array_equal(alibi_slopes(1), [2.0**-8])
    assert alibi_slopes(12).dtype == jnp.float32


def test_alibi_bias_matches_definition():
    S, offset = 11, 3
    got = alibi_bias(N, T, S, query_offset=offset)
    assert got.shape == (1, N, T, S) and got.dtype == jnp.float32
    slopes = np.asarray(alibi_slopes(N), np.float64)
    want = np.zeros((1, N, T, S))
    for n in range(N):
        for t in range(T):
            for s in range(S):
                i = offset + t
                # -m (i - j) for the causal part, as in the paper; -m |i - j| past it.
                want[0, n, t, s] = -slopes[n] * (i - s if s <= i else s - i)
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_alibi_bias_decoding_step_matches_full_sequence():
    """A one-token query at the cache length sees the last row of the full bias."""
    S = 13
    full = alibi_bias(N, S, S)
    step = jax.jit(lambda offset: alibi_bias(N, 1, S, query_offset=offset))
    for offset in (0, 6, S - 1):
        np.testing.assert_array_equal(step(jnp.int32(offset)), full[:, :, offset : offset + 1])


def test_alibi_bias_as_a_dot_product_bias():
    """The [1, N, T, S] bias broadcasts over the batch in jax.nn.dot_product_attention."""
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((3, B, T, N, 4)).astype(np.float32)
    bias = alibi_bias(N, T, T)
    got = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True)
    logits = np.einsum("BTNH,BSNH->BNTS", q, k) / 2.0 + np.asarray(bias)
    logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, np.einsum("BNTS,BSNH->BTNH", weights, v), atol=1e-5)


# ---------------------------------------------------------------------------------- errors

X = np.zeros((B, T, N, H), np.float32)
POSITIONS = np.zeros((B, T), np.int32)

ERRORS = [
    (lambda: sinusoidal_positions(np.arange(T), 7), ValueError, r"dim \(D\) must be even, got 7"),
    (lambda: sinusoidal_positions(np.arange(T), 0), ValueError, r"dim must be positive, got 0"),
    (lambda: sinusoidal_positions(np.arange(T), 8.0), TypeError, r"dim must be an int, got 8.0"),
    (
        lambda: sinusoidal_positions(np.arange(T, dtype=np.float32), 8),
        TypeError,
        r"positions must be an integer array, got dtype float32",
    ),
    (
        lambda: sinusoidal_positions(np.zeros((B, T, 1), np.int32), 8),
        ValueError,
        r"positions must be \[T\] or \[B, T\], got shape \(3, 5, 1\)",
    ),
    (
        lambda: apply_rotary(X[..., :-1], POSITIONS),
        ValueError,
        r"the head dim of x \(H\) must be even, got 21",
    ),
    (
        lambda: apply_rotary(X.astype(np.int32), POSITIONS),
        TypeError,
        r"x must be floating point, got dtype int32",
    ),
    (
        lambda: apply_rotary(X[0, 0], POSITIONS),
        ValueError,
        r"x must be \[B, T, N, H\] or \[T, N, H\], got shape \(7, 22\)",
    ),
    (
        lambda: apply_rotary(X, POSITIONS.astype(np.float32)),
        TypeError,
        r"positions must be an integer array, got dtype float32",
    ),
    (
        lambda: apply_rotary(X, POSITIONS[:, :-1]),
        ValueError,
        r"positions must be \[T\] = \[5\] or \[B, T\] = \[3, 5\] for x \(3, 5, 7, 22\), got \(3, 4\)",
    ),
    (
        lambda: apply_rotary(X, np.zeros((T + 1,), np.int32)),
        ValueError,
        r"positions must be \[T\] = \[5\] or \[B, T\] = \[3, 5\] .*got \(6,\)",
    ),
    (
        lambda: apply_rotary(X[0], POSITIONS),
        ValueError,
        r"positions must be \[T\] = \[5\] for x \(5, 7, 22\), got \(3, 5\)",
    ),
    (lambda: alibi_slopes(0), ValueError, r"num_heads must be positive, got 0"),
    (lambda: alibi_slopes(2.5), TypeError, r"num_heads must be an int, got 2.5"),
    (lambda: alibi_slopes(True), TypeError, r"num_heads must be an int, got True"),
    (lambda: alibi_bias(N, 0, T), ValueError, r"query_length must be positive, got 0"),
    (lambda: alibi_bias(N, T, -1), ValueError, r"key_length must be positive, got -1"),
    (
        lambda: alibi_bias(N, T, T, query_offset=1.5),
        TypeError,
        r"query_offset must be an int scalar, got shape \(\) dtype float32",
    ),
    (
        lambda: alibi_bias(N, T, T, query_offset=np.arange(2)),
        TypeError,
        r"query_offset must be an int scalar, got shape \(2,\)",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_bad_inputs_raise_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
