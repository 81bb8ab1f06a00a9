"""Show, Attend and Tell (Xu et al. 2015): shapes, attention, gate, penalty, decoding steps."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo import decoding
from zoo.models.show_attend_tell import (
    ShowAttendTell,
    ShowAttendTellConfig,
    doubly_stochastic_penalty,
    with_coordinates,
)

# Prime sizes so a swapped axis fails loudly. One pooling stage: 6 x 10 images -> 3 x 5 grid.
B, T, H, W, C = 3, 7, 6, 10, 2
GH, GW = 3, 5
L = GH * GW
CONFIG = ShowAttendTellConfig(
    vocab_size=23,
    embed_dim=13,
    hidden_dim=17,
    annotation_dim=7,
    attention_dim=11,
    image_channels=C,
    conv_channels=(5,),
    dropout_rate=0.5,
)


@nnx.jit
def forward(model, images, captions):
    return model(images, captions, return_weights=True)


@nnx.jit
def dropout_forward(model, images, captions, key):
    return model(images, captions, rngs=key)


@pytest.fixture(scope="module")
def model():
    return ShowAttendTell(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(B, H, W, C)).astype(np.float32)
    captions = rng.integers(1, CONFIG.vocab_size, (B, T)).astype(np.int32)
    captions[1, 4:] = CONFIG.pad_id  # a caption of 4 tokens
    return images, captions


@pytest.fixture(scope="module")
def outputs(model, batch):
    return forward(model, *batch)


def test_shapes_and_weights_are_distributions_over_the_grid(model, batch, outputs):
    images, _ = batch
    logits, weights = outputs
    assert logits.shape == (B, T, CONFIG.vocab_size)
    assert weights.shape == (B, T, L)
    assert model.grid_shape(H, W) == (GH, GW)
    assert model.annotate(images).shape == (B, L, CONFIG.annotation_dim)
    # Eq. (5): alpha_t is a softmax over the L cells, and it moves from word to word.
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert np.abs(np.diff(weights, axis=1)).max() > 1e-4


def test_decoding_steps_equal_teacher_forcing(model, batch, outputs):
    images, captions = batch
    full_logits, full_weights = outputs
    state = model.init_decode_state(model.encode(images), T, keep_weights=True)
    for t in range(T):
        logits, state = model.step(jnp.asarray(captions[:, t]), state)
        np.testing.assert_allclose(logits, full_logits[:, t], atol=1e-5)
    np.testing.assert_allclose(state["weights"], full_weights, atol=1e-6)


def test_outputs_depend_only_on_earlier_words(model, batch, outputs):
    images, captions = batch
    changed = captions.copy()
    changed[:, 3] = changed[:, 3] % (CONFIG.vocab_size - 1) + 1
    before, _ = outputs
    after, _ = forward(model, images, changed)
    # captions_in[:, 3] is y_{t-1} of step 3 (eq. (7) reads it directly): steps 0-2 cannot
    # see it, step 3 must.
    np.testing.assert_allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert np.abs(before[:, 3] - after[:, 3]).max() > 1e-6


def test_gate_is_in_the_unit_interval_and_scales_the_context(model, batch):
    images, captions = batch
    state = model.init_decode_state(model.encode(images), T)
    steps = []
    for t in range(T):
        _, state = model.step(jnp.asarray(captions[:, t]), state)
        steps.append(state["gate"])
    gates = np.stack(steps)
    assert gates.shape == (T, B)
    assert np.all((gates > 0) & (gates < 1)) and gates.std() > 1e-4

    # Two grids with the same mean annotation (so the same initial state, eq. (5)) but
    # different cells: with beta = 0 the cells cannot reach the words, with beta > 0 they do.
    annotations = np.asarray(model.annotate(images))
    shift = np.random.default_rng(1).normal(size=annotations.shape).astype(np.float32)
    other = annotations + shift - shift.mean(axis=1, keepdims=True)
    closed = nnx.clone(model)
    closed.selector.bias[...] = jnp.full((1,), -1e4)  # sigmoid(-1e4) == 0 in float32
    for gated, differ in ((model, True), (closed, False)):
        a, _ = forward(gated, annotations, captions)
        b, _ = forward(gated, other, captions)
        assert (np.abs(a - b).max() > 1e-4) == differ


def test_doubly_stochastic_penalty_equals_a_hand_computation():
    weights = np.array(
        [
            [[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]],  # the last step is padding
            [[0.1, 0.9], [0.3, 0.7], [0.6, 0.4]],
        ],
        np.float32,
    )
    mask = np.array([[True, True, False], [True, True, True]])
    # Row 0: sum_t alpha = [1.5, 0.5] -> 0.25 + 0.25; row 1: [1.0, 2.0] -> 0 + 1.
    penalty = doubly_stochastic_penalty(weights, mask, strength=2.0)
    np.testing.assert_allclose(penalty, [1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(
        doubly_stochastic_penalty(weights, mask.astype(np.int32)), [0.5, 1.0], rtol=1e-6
    )
    assert penalty.shape == (2,) and penalty.dtype == jnp.float32
    # A row of padding (a batch's filler) has no step, so no penalty, not one per cell.
    mask[0] = False
    np.testing.assert_allclose(doubly_stochastic_penalty(weights, mask), [0.0, 1.0], rtol=1e-6)


def test_coordinates_are_two_more_channels_of_each_pixels_row_and_column(model, batch):
    images, captions = batch
    out = np.asarray(with_coordinates(images))
    assert out.shape == (B, H, W, C + 2)
    np.testing.assert_array_equal(out[..., :C], images)
    np.testing.assert_allclose(out[1, :, 4, C], np.linspace(-1.0, 1.0, H), rtol=1e-6)
    np.testing.assert_allclose(out[0, 2, :, C + 1], np.linspace(-1.0, 1.0, W), rtol=1e-6)
    # config.coordinates: the same as a plain model of C + 2 channels given those images.
    config = dataclasses.replace(CONFIG, coordinates=True)
    coordconv = ShowAttendTell(config, rngs=nnx.Rngs(0))
    plain = ShowAttendTell(dataclasses.replace(CONFIG, image_channels=C + 2), rngs=nnx.Rngs(1))
    nnx.update(plain, nnx.state(coordconv))
    assert coordconv.convs[0].kernel.shape == (3, 3, C + 2, 5)
    np.testing.assert_allclose(
        forward(coordconv, images, captions)[0], forward(plain, out, captions)[0], atol=1e-6
    )
    with pytest.raises(ValueError, match=r"with C = 2 and H, W positive multiples of 2"):
        coordconv(out, captions)  # the coordinates are the model's to add


def test_every_parameter_gets_a_gradient(model, batch):
    images, captions = batch
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits, weights = nnx.merge(graphdef, params, rest)(images, captions, return_weights=True)
        return jnp.sum(logits**2) + doubly_stochastic_penalty(weights, captions != 0).sum()

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) == len(jax.tree.leaves(params)) > 20
    for path, grad in leaves:
        assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
        assert np.abs(grad).max() > 0, jax.tree_util.keystr(path)


def test_precomputed_annotations_replace_the_images(model, batch, outputs):
    images, captions = batch
    np.testing.assert_allclose(
        forward(model, model.annotate(images), captions)[0], outputs[0], atol=1e-5
    )

    # Without a CNN (image_channels=None) the model takes features of any grid size only.
    features_only = ShowAttendTell(
        ShowAttendTellConfig(**{**CONFIG.__dict__, "image_channels": None}), rngs=nnx.Rngs(0)
    )
    assert not hasattr(features_only, "convs")
    features = (
        np.random.default_rng(2).normal(size=(B, 13, CONFIG.annotation_dim)).astype(np.float32)
    )
    logits, weights = forward(features_only, features, captions)
    assert logits.shape == (B, T, CONFIG.vocab_size) and weights.shape == (B, T, 13)
    with pytest.raises(
        ValueError,
        match=r"images must be annotations \[B, L, D\] with D = 7, got shape \(3, 6, 10, 2\)",
    ):
        features_only(images, captions)


def test_dropout_only_with_rngs_and_no_rng_state(model, batch, outputs):
    images, captions = batch
    # The model stores parameters only: no RNG counters, no batch statistics.
    assert jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param))) == []
    one = dropout_forward(model, images, captions, jax.random.key(3))
    np.testing.assert_allclose(one, dropout_forward(model, images, captions, jax.random.key(3)))
    assert np.abs(one - outputs[0]).max() > 1e-3
    assert np.abs(one - dropout_forward(model, images, captions, jax.random.key(4))).max() > 1e-3
    # nnx.Rngs works too: its dropout stream is drawn once per call.
    np.testing.assert_allclose(
        model(images, captions, rngs=nnx.Rngs(dropout=5)),
        model(images, captions, rngs=nnx.Rngs(dropout=5)),
    )


def test_greedy_and_beam_search_run_on_the_step_function(model, batch):
    images, _ = batch

    step = model.step
    state = model.init_decode_state(model.encode(images), 5)
    greedy = decoding.greedy_search(step, state, bos_id=1, eos_id=2, pad_id=0, max_length=5)
    beams = decoding.beam_search(
        step, state, beam_size=2, bos_id=1, eos_id=2, pad_id=0, max_length=5
    )
    assert greedy.shape == (B, 5) and beams.tokens.shape == (B, 2, 5)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda m, x, y: m(x[..., :1], y),
            ValueError,
            r"images must be \[B, H, W, C\] with C = 2 and H, W positive multiples of 2 \(one 2x2 pool per conv stage\), got shape \(3, 6, 10, 1\)",
        ),
        (
            lambda m, x, y: m(x[:, :5], y),
            ValueError,
            r"images must be \[B, H, W, C\] with C = 2 and H, W positive multiples of 2 \(one 2x2 pool per conv stage\), got shape \(3, 5, 10, 2\)",
        ),
        (
            lambda m, x, y: m(x[:, :, :, 0], y),
            ValueError,
            r"images must be images \[B, H, W, C\] with C = 2, or annotations \[B, L, D\] with D = 7, got shape \(3, 6, 10\)",
        ),
        (
            lambda m, x, y: m(x.astype(np.int32), y),
            TypeError,
            r"images must be floating point, got dtype int32",
        ),
        (
            lambda m, x, y: m(x, y.astype(np.float32)),
            ValueError,
            r"captions_in must be int \[B, T\], got float32 \(3, 7\)",
        ),
        (
            lambda m, x, y: m(x, y[0]),
            ValueError,
            r"captions_in must be int \[B, T\], got int32 \(7,\)",
        ),
        (
            lambda m, x, y: m(x, y[:2]),
            ValueError,
            r"images \[B, ...\] and captions_in \[B, T\] must share B, got \(3, 6, 10, 2\) and \(2, 7\)",
        ),
        (
            lambda m, x, y: m.step(jnp.asarray(y[:, :1]), m.init_decode_state(m.encode(x), 2)),
            ValueError,
            r"tokens must be int \[B\], got int32 \(3, 1\)",
        ),
        (
            lambda m, x, y: doubly_stochastic_penalty(np.ones((3, 7)), y > 0),
            ValueError,
            r"weights must be \[B, T, L\], got shape \(3, 7\)",
        ),
        (
            lambda m, x, y: doubly_stochastic_penalty(np.ones((3, 7, 15)), y[:, :6] > 0),
            ValueError,
            r"caption_mask must be \[B, T\] = \[3, 7\] like weights, got shape \(3, 6\)",
        ),
        (
            lambda m, x, y: m.grid_shape(12, 15),
            ValueError,
            r"height and width must be positive multiples of 2 .* got 12 x 15",
        ),
        (
            lambda m, x, y: ShowAttendTell(
                ShowAttendTellConfig(dropout_rate=1.0), rngs=nnx.Rngs(0)
            ),
            ValueError,
            r"dropout_rate must be in \[0, 1\), got 1.0",
        ),
    ],
)
def test_bad_input_is_named(model, batch, call, error, message):
    with pytest.raises(error, match=message):
        call(model, *batch)


@pytest.mark.parametrize("dtype, param_dtype", [("bfloat16", "float32"), ("float16", "bfloat16")])
def test_dtypes_reach_parameters_outputs_and_states(batch, dtype, param_dtype):
    config = dataclasses.replace(CONFIG, dtype=dtype, param_dtype=param_dtype)
    model = nnx.eval_shape(lambda: ShowAttendTell(config, rngs=nnx.Rngs(0)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(param_dtype)}
    images, captions = batch[0], batch[1]
    logits, weights = nnx.eval_shape(
        lambda m: m(images, captions, return_weights=True, rngs=jax.random.key(0)), model
    )
    assert logits.dtype == dtype and weights.dtype == jnp.float32
    state = nnx.eval_shape(lambda m: m.init_decode_state(m.encode(images), T), model)
    assert state["annotations"].dtype == dtype
    # The LSTM memory and hidden state (and the analysis gate) stay float32.
    assert {state[k].dtype for k in ("memory", "hidden", "gate")} == {jnp.dtype(jnp.float32)}
    step_logits, new_state = nnx.eval_shape(
        lambda m, s: m.step(jnp.asarray(captions[:, 0]), s), model, state
    )
    assert step_logits.dtype == dtype
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
