"""Every model speaks one protocol: encode / init_decode_state / step, decoded by zoo.decoding
with no adapter, the attention of each decoded token kept in the state when asked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo import decoding
from zoo.models.protocol import on_weights_kernel
from zoo.models.rnnsearch import RNNSearch, RNNSearchConfig
from zoo.models.show_attend_tell import ShowAttendTell, ShowAttendTellConfig
from zoo.models.transformer import Transformer, TransformerConfig, TransformerLM

B, L, V, W = 2, 5, 19, 3
BOS, EOS, PAD = 1, 2, 0
TINY = {"model_dim": 8, "ff_dim": 16, "num_heads": 2, "num_layers": 1, "dropout_rate": 0.0}


def _families():
    sources = jnp.array([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 0, 0, 0, 0]], jnp.int32)
    images = jax.random.uniform(jax.random.key(1), (B, 8, 8, 1))
    return {
        "rnnsearch": (
            RNNSearch(
                RNNSearchConfig(V, V, embed_dim=6, hidden_dim=7, attention_dim=5, maxout_dim=3),
                rngs=nnx.Rngs(0),
            ),
            sources,
        ),
        "rnnsearch_general": (
            RNNSearch(
                RNNSearchConfig(V, V, 6, 7, 5, 3, score="general", kernel="blockwise"),
                rngs=nnx.Rngs(0),
            ),
            sources,
        ),
        "sat": (
            ShowAttendTell(
                ShowAttendTellConfig(
                    V, 6, 7, 5, 5, image_channels=1, conv_channels=(3,), dropout_rate=0.0
                ),
                rngs=nnx.Rngs(0),
            ),
            images,
        ),
        "transformer": (Transformer(TransformerConfig(V, **TINY), rngs=nnx.Rngs(0)), sources),
        "lm": (TransformerLM(TransformerConfig(V, **TINY), rngs=nnx.Rngs(0)), sources[:, :3]),
    }


FAMILIES = _families()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_decoding_runs_through_the_protocol_alone(name):
    model, inputs = FAMILIES[name]
    # The language model's memory is its prompt: decoding starts from its last token.
    bos = inputs[:, -1] if name == "lm" else BOS
    ids = {"bos_id": bos, "eos_id": EOS, "pad_id": PAD, "max_length": L}

    graphdef, params = nnx.split(model)

    @jax.jit
    def search(params, inputs):
        model = nnx.merge(graphdef, params)  # nnx modules enter jit as state, not closures
        state = model.init_decode_state(model.encode(inputs), L + inputs.shape[1])
        greedy = decoding.greedy_search(model.step, state, **ids)
        beams = decoding.beam_search(model.step, state, beam_size=W, **ids)
        sampled = decoding.sample(model.step, state, jax.random.key(0), **ids)
        return greedy, beams.tokens, sampled

    greedy, beams, sampled = search(params, inputs)
    assert greedy.shape == sampled.shape == (B, L) and beams.shape == (B, W, L)
    # Greedy = the argmax of stepping by hand on its own output.
    state = model.init_decode_state(model.encode(inputs), L + inputs.shape[1])
    previous = jnp.broadcast_to(jnp.asarray(bos, jnp.int32), (B,))
    for t in range(int(decoding.sequence_lengths(greedy, eos_id=EOS).min())):
        logits, state = model.step(previous, state)
        np.testing.assert_array_equal(logits.argmax(-1), greedy[:, t])
        previous = greedy[:, t]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_state_keeps_each_tokens_attention_as_teacher_forcing_gives_it(name):
    model, inputs = FAMILIES[name]
    tokens = jnp.array([[1, 7, 8, 9], [1, 10, 11, 12]], jnp.int32)
    # The same parameters on the kernel that forms the weights (a blockwise one does not).
    model = on_weights_kernel(model)
    looking = model
    if name == "lm":
        sequence = jnp.concatenate([inputs, tokens], axis=1)
        _, weights = looking(sequence, return_weights=True)
        expected = weights["decoder_self"][0][:, :, 2:]  # the rows of the tokens stepped
        state = model.init_decode_state(model.encode(inputs), sequence.shape[1], keep_weights=True)
        fed = sequence[:, 2:]
    else:
        _, weights = looking(inputs, tokens, return_weights=True)
        expected = weights["cross"][0] if isinstance(weights, dict) else weights
        state = model.init_decode_state(model.encode(inputs), tokens.shape[1], keep_weights=True)
        fed = tokens
    for t in range(fed.shape[1]):
        _, state = model.step(fed[:, t], state)
    kept = state["weights"] if isinstance(state, dict) else state.weights[0]
    if name == "lm":
        kept = kept[:, :, 2:]
    np.testing.assert_allclose(kept, expected, atol=1e-5)
