"""RNNsearch / RNNencdec (Bahdanau et al. 2014): shapes, padding, alignment, decoding steps."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo.models.rnnsearch import RNNSearch, RNNSearchConfig

# Prime sizes so a swapped axis fails loudly.
B, S, T = 3, 7, 5
CONFIG = RNNSearchConfig(
    source_vocab_size=37,
    target_vocab_size=41,
    embed_dim=13,
    hidden_dim=17,
    attention_dim=11,
    maxout_dim=7,
)


@nnx.jit
def forward(model, source, target):
    return model(source, target, return_weights=True)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    source = rng.integers(1, CONFIG.source_vocab_size, (B, S)).astype(np.int32)
    source[1, 4:] = CONFIG.pad_id  # a padded sentence of length 4
    target = rng.integers(1, CONFIG.target_vocab_size, (B, T)).astype(np.int32)
    return source, target


@pytest.fixture(scope="module", params=[True, False], ids=["rnnsearch", "rnnencdec"])
def model(request):
    config = RNNSearchConfig(**{**CONFIG.__dict__, "attention": request.param})
    return RNNSearch(config, rngs=nnx.Rngs(0))


def test_shapes_and_alignment_weights(model, batch):
    source, target = batch
    logits, weights = forward(model, source, target)
    assert logits.shape == (B, T, CONFIG.target_vocab_size)
    assert weights.shape == (B, T, S)
    if model.config.attention:
        # Each target word's alignment is a distribution over the real source words (eq. 6).
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(weights[1, :, 4:], 0.0)
    else:
        np.testing.assert_array_equal(weights, 0.0)


def test_padding_does_not_change_the_translation(model, batch):
    source, target = batch
    short = model(source[1:2, :4], target[1:2])
    padded = model(source[1:2], target[1:2])
    np.testing.assert_allclose(short, padded, atol=1e-5)


def test_decoding_steps_equal_teacher_forcing(model, batch):
    source, target = batch
    full, full_weights = forward(model, source, target)
    state = model.init_decode_state(model.encode(source), T, keep_weights=True)
    for t in range(T):
        logits, state = model.step(jnp.asarray(target[:, t]), state)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
    # The state kept every step's alignment, as teacher forcing returns it.
    np.testing.assert_allclose(state["weights"], full_weights, atol=1e-6)


def test_outputs_depend_only_on_earlier_target_words(model, batch):
    source, target = batch
    changed = np.array(target)
    changed[:, 3] = (changed[:, 3] + 1) % CONFIG.target_vocab_size
    before, _ = forward(model, source, target)
    after, _ = forward(model, source, changed)
    # target_in[:, 3] is the previous word of step 3: steps 0-2 cannot see it.
    np.testing.assert_allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert np.abs(before[:, 3] - after[:, 3]).max() > 1e-6


def test_every_parameter_gets_a_gradient(model, batch):
    source, target = batch
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, rest)(source, target) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(grad)), path
        assert np.abs(grad).max() > 0, jax.tree_util.keystr(path)


def test_bad_input_is_named(model, batch):
    source, target = batch
    with pytest.raises(ValueError, match=r"source must be int \[B, length\]"):
        model(source.astype(np.float32), target)
    with pytest.raises(ValueError, match=r"must share B"):
        model(source, target[:2])


@pytest.mark.parametrize("attention", [True, False], ids=["rnnsearch", "rnnencdec"])
@pytest.mark.parametrize("dtype, param_dtype", [("bfloat16", "float32"), ("float16", "bfloat16")])
def test_dtypes_reach_parameters_outputs_and_states(batch, attention, dtype, param_dtype):
    config = dataclasses.replace(CONFIG, attention=attention, dtype=dtype, param_dtype=param_dtype)
    model = nnx.eval_shape(lambda: RNNSearch(config, rngs=nnx.Rngs(0)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(param_dtype)}
    source, target = batch
    logits, weights = nnx.eval_shape(lambda m: m(source, target, return_weights=True), model)
    assert logits.dtype == dtype and weights.dtype == jnp.float32
    carry = nnx.eval_shape(lambda m: m.init_decode_state(m.encode(source), T), model)
    assert carry["state"].dtype == jnp.float32  # the GRU state stays float32
    step_logits, new_carry = nnx.eval_shape(
        lambda m, c: m.step(jnp.asarray(target[:, 0]), c), model, carry
    )
    assert step_logits.dtype == dtype
    assert jax.tree.map(lambda x: x.dtype, new_carry) == jax.tree.map(lambda x: x.dtype, carry)
