"""FeedForward: eq. (2) of Vaswani et al. 2017, computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo.nn import FeedForward

B, T, D, F = 2, 3, 5, 7


@pytest.mark.parametrize(
    "activation, numpy_activation",
    [
        (jax.nn.relu, lambda h: np.maximum(h, 0.0)),
        (
            jax.nn.gelu,
            lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))),
        ),
    ],
    ids=["relu", "gelu"],
)
def test_equals_two_linear_maps_around_the_activation(activation, numpy_activation):
    ffn = FeedForward(D, F, activation=activation, rngs=nnx.Rngs(0))
    # Non-zero biases, so that a dropped bias would show.
    ffn.hidden.bias[...] = jnp.linspace(-1.0, 1.0, F)
    ffn.output.bias[...] = jnp.linspace(0.5, -0.5, D)
    x = np.random.default_rng(0).normal(size=(B, T, D))
    w1, b1 = (
        np.asarray(ffn.hidden.kernel[...], np.float64),
        np.asarray(ffn.hidden.bias[...], np.float64),
    )
    w2, b2 = (
        np.asarray(ffn.output.kernel[...], np.float64),
        np.asarray(ffn.output.bias[...], np.float64),
    )
    expected = numpy_activation(x @ w1 + b1) @ w2 + b2
    np.testing.assert_allclose(ffn(jnp.asarray(x, jnp.float32)), expected, atol=1e-5)
    assert ffn.hidden.kernel.shape == (D, F) and ffn.output.kernel.shape == (F, D)


def test_no_bias_and_separate_output_init():
    ffn = FeedForward(D, F, use_bias=False, out_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
    assert ffn.hidden.bias is None and ffn.output.bias is None
    np.testing.assert_array_equal(ffn(jnp.ones((B, T, D))), 0.0)
    assert np.abs(np.asarray(ffn.hidden.kernel[...])).max() > 0


def test_compute_and_parameter_dtypes():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, D)), jnp.float32)
    low = FeedForward(D, F, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    full = FeedForward(D, F, rngs=nnx.Rngs(0))  # the same float32 parameters
    assert {p.dtype for p in jax.tree.leaves(nnx.state(low, nnx.Param))} == {jnp.dtype(jnp.float32)}
    out = low(x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), full(x), atol=0.05, rtol=0.05)
    half = FeedForward(D, F, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
    assert {p.dtype for p in jax.tree.leaves(nnx.state(half, nnx.Param))} == {
        jnp.dtype(jnp.float16)
    }
