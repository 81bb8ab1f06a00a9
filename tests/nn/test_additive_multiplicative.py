"""The attention modules own their parameters and run on any kernel of their registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo.kernels import additive_attention, multiplicative_attention
from zoo.nn import AdditiveAttention, MultiplicativeAttention

# Prime sizes, so a swapped axis fails loudly.
B, T, S, DQ, DK, A = 2, 3, 7, 5, 11, 13


@pytest.fixture(scope="module")
def inputs():
    keys = jax.random.split(jax.random.key(0), 3)
    query = jax.random.normal(keys[0], (B, T, DQ))
    annotations = jax.random.normal(keys[1], (B, S, DK))
    mask = jnp.arange(S)[None, None, :] < jnp.array([S, 4])[:, None, None]  # [B, 1, S]
    return query, annotations, mask


@pytest.mark.parametrize("kernel", ["auto", "additive", "blockwise_additive", "pallas_additive"])
def test_additive_module_equals_the_kernel_on_its_parameters(inputs, kernel):
    query, annotations, mask = inputs
    module = AdditiveAttention(DQ, DK, A, key_bias=True, kernel=kernel, rngs=nnx.Rngs(0))
    module.key_bias[...] = jax.random.normal(jax.random.key(5), (A,))  # not the zero init
    projected = module.project_keys(annotations)
    expected_keys = annotations @ module.key_proj[...] + module.key_bias[...]
    np.testing.assert_allclose(projected, expected_keys, atol=1e-5)
    context = module(query, projected, annotations, mask=mask)
    expected = additive_attention(
        query,
        expected_keys,
        annotations,
        w_query=module.query_proj[...],
        v=module.score[...],
        mask=mask,
        implementation="reference",
    )
    np.testing.assert_allclose(context, expected, atol=1e-5)


@pytest.mark.parametrize("score", ["dot", "general"])
@pytest.mark.parametrize("kernel", ["auto", "reference", "blockwise"])
def test_multiplicative_module_equals_luongs_scores(inputs, score, kernel):
    query, annotations, mask = inputs
    width = DK if score == "dot" else DQ
    query = jnp.pad(query, ((0, 0), (0, 0), (0, width - DQ)))
    module = MultiplicativeAttention(width, DK, score=score, kernel=kernel, rngs=nnx.Rngs(0))
    weight = None if module.weight is None else module.weight[...]
    expected, expected_weights = multiplicative_attention(
        query, annotations, annotations, weight=weight, mask=mask, return_weights=True
    )
    np.testing.assert_allclose(module(query, annotations, mask=mask), expected, atol=1e-5)
    if kernel != "blockwise":  # the blockwise kernel never forms the weights
        _, weights = module(query, annotations, mask=mask[:, 0], return_weights=True)
        np.testing.assert_allclose(weights, expected_weights, atol=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"kernel must be one of .*'blockwise_additive'"):
        AdditiveAttention(DQ, DK, A, kernel="blockwise", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"score must be one of \('dot', 'general'\)"):
        MultiplicativeAttention(DQ, DK, score="concat", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"dot score compares equal widths, got query_dim=5"):
        MultiplicativeAttention(DQ, DK, score="dot", rngs=nnx.Rngs(0))
    module = AdditiveAttention(DQ, DK, A, kernel="blockwise_additive", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="never forms the attention weights"):
        x = jnp.ones((B, 1, DQ))
        module(x, jnp.ones((B, S, A)), jnp.ones((B, S, DK)), return_weights=True)
