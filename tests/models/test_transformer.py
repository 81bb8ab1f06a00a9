"""The Transformer (Vaswani et al. 2017): encoder-decoder and decoder-only language model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo import decoding
from zoo.kernels import dot_product_attention, sinusoidal_positions
from zoo.kernels.blockwise import blockwise_attention
from zoo.models.protocol import on_weights_kernel
from zoo.models.transformer import (
    BASE,
    BIG,
    GPT2_SMALL,
    Block,
    Embedding,
    Transformer,
    TransformerConfig,
    TransformerLM,
    count_parameters,
)
from zoo.nn import MultiHeadAttention

# Prime sizes where they can be, so a swapped axis fails loudly.
B, S, T, V, L = 2, 7, 5, 37, 2
PAD = 0
# The paper's model, shrunk: post-LN, sinusoidal positions, tied and scaled embeddings.
SEQ2SEQ = TransformerConfig(
    vocab_size=V, model_dim=12, ff_dim=17, num_heads=3, num_layers=L, dropout_rate=0.1
)
# A modern LM: pre-LN, rotary, GQA (N=6 query heads on K=2 key/value heads), untied, GELU.
LM_ROTARY = TransformerConfig(
    vocab_size=V,
    model_dim=24,
    ff_dim=17,
    num_heads=6,
    num_kv_heads=2,
    num_layers=L,
    pre_norm=True,
    positions="rotary",
    tie_embeddings=False,
    scale_embeddings=False,
    attention_bias=True,
    activation="gelu",
    init_std=0.02,
)
# GPT-2's shape, shrunk: learned positions, tied embeddings, pre-LN.
LM_LEARNED = dataclasses.replace(
    GPT2_SMALL, vocab_size=V, model_dim=12, ff_dim=17, num_heads=3, num_layers=L, max_length=11
)


@nnx.jit
def seq2seq_forward(model, source, target):
    return model(source, target, return_weights=True)


@nnx.jit
def lm_forward(model, tokens):
    return model(tokens, return_weights=True)


@nnx.jit
def encode(model, source):
    return model.encode(source)["memory"]


@nnx.jit
def init_decode_state(model, source):
    return model.init_decode_state(model.encode(source), T + 2)


@nnx.jit
def step(model, tokens, state):
    return model.step(tokens, state)


@nnx.jit
def prefill(model, prompt, state):
    return model.prefill(prompt, state)


def sharing_parameters(model, config):
    """A model of ``config`` holding ``model``'s parameters (any new ones stay abstract)."""
    copy = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
    nnx.update(copy, nnx.state(model, nnx.Param))
    return copy


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    source = rng.integers(1, V, (B, S)).astype(np.int32)
    source[1, 4:] = PAD  # a padded sentence of 4 tokens
    target = rng.integers(1, V, (B, T)).astype(np.int32)
    return jnp.asarray(source), jnp.asarray(target)


@pytest.fixture(scope="module")
def seq2seq():
    return Transformer(SEQ2SEQ, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def seq2seq_outputs(seq2seq, data):
    return seq2seq_forward(seq2seq, *data)


@pytest.fixture(scope="module")
def rotary_lm():
    return TransformerLM(LM_ROTARY, rngs=nnx.Rngs(1))


@pytest.fixture(scope="module")
def learned_lm():
    return TransformerLM(LM_LEARNED, rngs=nnx.Rngs(1))


@pytest.fixture(params=["rotary-gqa", "learned-tied"])
def lm(request, rotary_lm, learned_lm):
    return rotary_lm if request.param == "rotary-gqa" else learned_lm


def test_seq2seq_shapes_and_attention_weights(seq2seq_outputs):
    logits, weights = seq2seq_outputs
    N = SEQ2SEQ.num_heads
    assert logits.shape == (B, T, V)
    expected = {"encoder_self": (B, N, S, S), "decoder_self": (B, N, T, T), "cross": (B, N, T, S)}
    assert {name: [w.shape for w in ws] for name, ws in weights.items()} == {
        name: [shape] * L for name, shape in expected.items()
    }
    for ws in weights.values():
        np.testing.assert_allclose(np.stack(ws).sum(-1), 1.0, atol=1e-5)
    future = np.triu(np.ones((T, T), bool), k=1)
    for layer in range(L):
        # Nothing attends the padding of sentence 1; decoders never attend the future.
        np.testing.assert_array_equal(weights["encoder_self"][layer][1, :, :, 4:], 0.0)
        np.testing.assert_array_equal(weights["cross"][layer][1, :, :, 4:], 0.0)
        np.testing.assert_array_equal(weights["decoder_self"][layer][:, :, future], 0.0)


def test_lm_shapes_and_attention_weights(lm, data):
    _, tokens = data
    logits, weights = lm_forward(lm, tokens)
    assert logits.shape == (B, T, V)
    assert [w.shape for w in weights["decoder_self"]] == [(B, lm.config.num_heads, T, T)] * L
    np.testing.assert_allclose(np.stack(weights["decoder_self"]).sum(-1), 1.0, atol=1e-5)


def causal_jacobian_check(decoder_fn, D):
    """d hidden[b, t] / d x[b', s] is exactly zero unless b' = b and s <= t (and not all zero)."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, D)), jnp.float32)
    jac = np.asarray(jax.jit(jax.jacrev(decoder_fn))(x))  # [B, T, D, B, T, D]
    influence = np.abs(jac).max(axis=(2, 5))  # [B, T, B, T]
    allowed = (
        np.eye(B, dtype=bool)[:, None, :, None] & np.tril(np.ones((T, T), bool))[None, :, None, :]
    )
    np.testing.assert_array_equal(influence[~allowed], 0.0)
    assert influence[allowed].min() > 0.0  # every allowed path really carries information


def test_encoder_decoder_has_no_path_from_the_future(seq2seq, data):
    source, _ = data
    memory = encode(seq2seq, source)
    causal_jacobian_check(
        lambda x: seq2seq.decoder(x, memory=memory, memory_mask=source != PAD)[0], SEQ2SEQ.model_dim
    )


def test_lm_has_no_path_from_the_future(lm):
    causal_jacobian_check(lambda x: lm.decoder(x)[0], lm.config.model_dim)


def test_changing_a_target_token_changes_only_later_logits(seq2seq, seq2seq_outputs, data):
    source, target = data
    changed = target.at[:, 3].set((target[:, 3] + 1) % V)
    before, _ = seq2seq_outputs
    after, _ = seq2seq_forward(seq2seq, source, changed)
    np.testing.assert_array_equal(before[:, :3], after[:, :3])
    assert np.abs(before[:, 3:] - after[:, 3:]).min(axis=-1).max() > 0


def test_padding_does_not_change_the_encoding_or_the_translation(seq2seq, seq2seq_outputs, data):
    source, target = data
    logits, weights = seq2seq_outputs
    longer = jnp.pad(source, ((0, 0), (0, 4)), constant_values=PAD)  # [B, S + 4]
    longer_logits, longer_weights = seq2seq_forward(seq2seq, longer, target)
    np.testing.assert_allclose(longer_logits, logits, atol=1e-5)
    np.testing.assert_allclose(encode(seq2seq, longer)[:, :S], encode(seq2seq, source), atol=1e-5)
    for layer in range(L):
        np.testing.assert_allclose(
            longer_weights["cross"][layer][..., :S], weights["cross"][layer], atol=1e-6
        )
    # The pad id is what is masked: the same positions read as real words change the output.
    real, _ = seq2seq_forward(seq2seq, source.at[1, 4:].set(5), target)
    np.testing.assert_allclose(real[0], logits[0], atol=1e-5)
    assert np.abs(real[1] - logits[1]).max() > 1e-4


def test_cached_decoding_equals_teacher_forcing_seq2seq(seq2seq, seq2seq_outputs, data):
    source, target = data
    logits, _ = seq2seq_outputs
    state = init_decode_state(seq2seq, source)
    for t in range(T):
        out, state = step(seq2seq, target[:, t], state)
        np.testing.assert_allclose(out, logits[:, t], atol=1e-5)
    np.testing.assert_array_equal(state.position, [T] * B)


def test_cached_decoding_after_prefill_equals_full_forward_lm(lm, data):
    _, tokens = data
    full, _ = lm_forward(lm, tokens)
    state = lm.init_cache(B, max_length=T + 1)
    prefix, state = prefill(lm, tokens[:, :3], state)
    np.testing.assert_allclose(prefix, full[:, :3], atol=1e-5)
    for t in range(3, T):
        out, state = step(lm, tokens[:, t], state)
        np.testing.assert_allclose(out, full[:, t], atol=1e-5)
    K = lm.config.num_kv_heads or lm.config.num_heads
    assert state.caches[0].key.shape == (B, T + 1, K, lm.config.head_dim)


def test_greedy_and_beam_search_run_on_the_step_function(seq2seq, data):
    source, _ = data
    W = 3

    @jax.jit
    def search(source):
        state = seq2seq.init_decode_state(seq2seq.encode(source), T)
        greedy = decoding.greedy_search(
            seq2seq.step, state, bos_id=1, eos_id=2, pad_id=PAD, max_length=T
        )
        beams = decoding.beam_search(
            seq2seq.step, state, beam_size=W, bos_id=1, eos_id=2, pad_id=PAD, max_length=T
        )
        return greedy, beams

    tokens, beams = search(source)
    # Greedy decoding picks the argmax of teacher forcing on its own output.
    target_in = jnp.concatenate([jnp.ones((B, 1), jnp.int32), tokens[:, :-1]], axis=1)
    logits, _ = seq2seq_forward(seq2seq, source, target_in)
    length = decoding.sequence_lengths(tokens, eos_id=2)
    for b in range(B):
        np.testing.assert_array_equal(tokens[b, : length[b]], logits[b, : length[b]].argmax(-1))
    assert beams.tokens.shape == (B, W, T)
    assert np.all(np.diff(np.asarray(beams.scores), axis=1) <= 0)


def test_lm_generation_continues_a_prefilled_prompt(rotary_lm, data):
    _, tokens = data
    lm, prompt = rotary_lm, tokens[:, :3]

    @jax.jit
    def generate(prompt):
        _, state = lm.prefill(prompt[:, :-1], lm.init_cache(B, T))
        return decoding.greedy_search(
            lm.step, state, bos_id=prompt[:, -1], eos_id=V - 1, pad_id=PAD, max_length=3
        )

    generated = generate(prompt)
    logits, _ = lm_forward(lm, jnp.concatenate([prompt, generated[:, :-1]], axis=1))  # [B, T, V]
    np.testing.assert_array_equal(generated, logits[:, 2:].argmax(-1))


def test_lm_slides_its_window_and_never_feeds_a_position_past_it(learned_lm, data, monkeypatch):
    lm, C = learned_lm, LM_LEARNED.max_length  # every learned position is in the window
    fed: list[np.ndarray] = []
    embed = Embedding.__call__

    def recording(self, tokens, positions, *, rngs):
        jax.debug.callback(lambda p: fed.append(np.asarray(p)), positions)
        return embed(self, tokens, positions, rngs=rngs)

    monkeypatch.setattr(Embedding, "__call__", recording)
    _, tokens = data
    prompt, T = tokens[:, :3], 4 * C

    @jax.jit
    def generate(prompt):
        start = decoding.sliding_window(
            lambda p: lm.init_decode_state(lm.encode(p), C), lm.step, prompt, window=C
        )
        return decoding.greedy_search(
            start.step_fn,
            start.init_state,
            bos_id=start.bos_id,
            eos_id=V - 1,
            pad_id=PAD,
            max_length=T,
        )

    generated = np.asarray(generate(prompt))
    jax.effects_barrier()
    assert fed and max(int(p.max()) for p in fed) == C - 1
    # Each token is the argmax of a fresh forward pass over its window: the prompt, then the
    # last C // 2 tokens and those after them whenever C tokens fill the cache.
    lengths = np.asarray(decoding.sequence_lengths(generated, eos_id=V - 1))
    assert lengths.max() > 2 * C
    windows, ends, kept = [], [], []
    for b in range(B):
        window = list(np.asarray(prompt[b]))
        for token in generated[b, : lengths[b]]:
            windows.append(window + [PAD] * (C - len(window)))
            ends.append(len(window) - 1)
            kept.append(int(token))
            window = (window[C - C // 2 :] if len(window) == C else window) + [int(token)]
    logits, _ = lm_forward(lm, jnp.asarray(windows, jnp.int32))
    np.testing.assert_array_equal(kept, np.asarray(logits)[np.arange(len(ends)), ends].argmax(-1))


def test_tied_embedding_is_one_parameter_trained_by_both_uses(seq2seq, data):
    source, target = data
    untied = sharing_parameters(seq2seq, dataclasses.replace(SEQ2SEQ, tie_embeddings=False))
    untied.head.kernel.set_value(seq2seq.embed.tokens.embedding[...].T)
    assert seq2seq.head is None
    assert count_parameters(untied) - count_parameters(seq2seq) == V * SEQ2SEQ.model_dim

    def loss(model):
        logits = model(source, target)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    tied_loss, tied_grads = nnx.jit(nnx.value_and_grad(loss))(seq2seq)
    untied_loss, untied_grads = nnx.jit(nnx.value_and_grad(loss))(untied)
    np.testing.assert_allclose(tied_loss, untied_loss, atol=1e-6)
    as_input = np.asarray(untied_grads["embed"]["tokens"]["embedding"][...])
    as_output = np.asarray(untied_grads["head"]["kernel"][...]).T
    assert np.abs(as_input).max() > 0 and np.abs(as_output).max() > 0
    np.testing.assert_allclose(
        tied_grads["embed"]["tokens"]["embedding"][...], as_input + as_output, atol=1e-6
    )


def test_blockwise_kernel_gives_the_same_logits(seq2seq, seq2seq_outputs, data):
    source, target = data
    logits, _ = seq2seq_outputs
    swapped = sharing_parameters(seq2seq, dataclasses.replace(SEQ2SEQ, kernel="blockwise"))
    np.testing.assert_allclose(
        nnx.jit(lambda m, s, t: m(s, t))(swapped, source, target), logits, atol=1e-5
    )
    with pytest.raises(ValueError, match="cannot return_weights"):
        jax.eval_shape(lambda: swapped(source, target, return_weights=True))
    # The pictures of a blockwise run: the same state on the reference kernel's graph.
    logits_again, weights = on_weights_kernel(swapped)(source, target, return_weights=True)
    np.testing.assert_allclose(logits_again, logits, atol=1e-5)
    for name, expected in seq2seq_outputs[1].items():
        for got, want in zip(weights[name], expected, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_kernel_argument_is_what_runs(data):
    _, tokens = data
    shapes = []

    def spy(query, key, value, **kwargs):
        shapes.append((query.shape, key.shape))
        return blockwise_attention(query, key, value, **kwargs)

    # Traced, not run: the abstract model is enough to see which kernel its blocks call.
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: TransformerLM(LM_ROTARY, kernel=spy, rngs=nnx.Rngs(1)))
    )
    jax.eval_shape(lambda state, tokens: nnx.merge(graphdef, state)(tokens), state, tokens)
    N, K, H = LM_ROTARY.num_heads, LM_ROTARY.num_kv_heads, LM_ROTARY.head_dim
    assert shapes == [((B, T, N, H), (B, T, K, H))] * L


def test_dropout_is_off_without_rngs_and_follows_the_key(seq2seq, seq2seq_outputs, data):
    source, target = data
    logits, _ = seq2seq_outputs
    forward = nnx.jit(lambda model, key: model(source, target, rngs=key))
    assert not jax.tree.leaves(nnx.state(seq2seq, nnx.RngState))  # no RNG state in the model
    a = forward(seq2seq, jax.random.key(1))
    np.testing.assert_array_equal(a, forward(seq2seq, jax.random.key(1)))
    assert np.abs(a - forward(seq2seq, jax.random.key(2))).max() > 1e-3
    assert np.abs(a - logits).max() > 1e-3
    # rngs=None is deterministic (the fixture's logits came from a jitted call without rngs).
    np.testing.assert_array_equal(seq2seq_forward(seq2seq, source, target)[0], logits)
    # Attention dropout (not in the paper) reaches every attention module; tests/nn checks
    # that MultiHeadAttention applies it.
    config = dataclasses.replace(SEQ2SEQ, attention_dropout_rate=0.3)
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    modules = [m for _, m in nnx.iter_graph(model) if isinstance(m, MultiHeadAttention)]
    assert len(modules) == 3 * L and all(m.dropout_rate == 0.3 for m in modules)


@pytest.mark.parametrize("pre_norm", [False, True], ids=["post-LN", "pre-LN"])
def test_block_is_wired_as_in_the_paper(pre_norm):
    config = dataclasses.replace(SEQ2SEQ, pre_norm=pre_norm)
    block = Block(config, causal=True, cross=True, kernel=dot_product_attention, rngs=nnx.Rngs(2))
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(B, T, 12)), jnp.float32)
    memory = jnp.asarray(rng.normal(size=(B, S, 12)), jnp.float32)

    @nnx.jit
    def run(block, x, memory):
        def self_attention(h):
            return block.self_attention(h, is_causal=True)[0]

        def cross_attention(h):
            return block.cross_attention(h, memory)[0]

        expected = x
        for sublayer, norm in (
            (self_attention, block.self_attention_norm),
            (cross_attention, block.cross_attention_norm),
            (block.feed_forward, block.feed_forward_norm),
        ):
            if pre_norm:  # x + Sublayer(LayerNorm(x))
                expected = expected + sublayer(norm(expected))
            else:  # LayerNorm(x + Sublayer(x)), sec. 3.1
                expected = norm(expected + sublayer(expected))
        return block(x, memory=memory)[0], expected

    out, expected = run(block, x, memory)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_embeddings_are_scaled_and_get_sinusoids(seq2seq, data):
    _, target = data
    x = seq2seq.embed(target, jnp.arange(T), rngs=None)
    table = np.asarray(seq2seq.embed.tokens.embedding[...])
    expected = table[np.asarray(target)] * np.sqrt(12) + np.asarray(
        sinusoidal_positions(jnp.arange(T), 12)
    )
    np.testing.assert_allclose(x, expected, atol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m, lm, s, t: m(s.astype(jnp.float32), t),
            r"source must be int \[B, length\], got float32 \(2, 7\)",
        ),
        (lambda m, lm, s, t: m(s, t[0]), r"target_in must be int \[B, length\], got int32 \(5,\)"),
        (
            lambda m, lm, s, t: m(s[:1], t),
            r"source \[B, S\] and target_in \[B, T\] must share B, got \(1, 7\) and \(2, 5\)",
        ),
        (
            lambda m, lm, s, t: m.step(
                t[:, :1], jax.eval_shape(lambda: m.init_decode_state(m.encode(s), T))
            ),
            r"tokens must be int \[B\], got int32 \(2, 1\)",
        ),
        (
            lambda m, lm, s, t: m.step(
                t[0, :3], jax.eval_shape(lambda: m.init_decode_state(m.encode(s), T))
            ),
            r"tokens \[B\] = \(3,\) must share B with the decoding state, B=2",
        ),
        (
            lambda m, lm, s, t: lm.prefill(t, lm.init_cache(B, 3)),
            r"prompt \[B, T\] = \(2, 5\) does not fit the cache of M=3",
        ),
        (
            lambda m, lm, s, t: lm(jnp.ones((B, 12), jnp.int32)),
            "tokens length T=12 exceeds the 11 learned positions",
        ),
        (
            lambda m, lm, s, t: lm.init_cache(B, 12),
            "max_length=12 exceeds the 11 learned positions",
        ),
        (
            lambda m, lm, s, t: Transformer(
                dataclasses.replace(SEQ2SEQ, positions="learned", max_length=11),
                rngs=nnx.Rngs(0),
            ).init_decode_state({"memory": jnp.zeros((B, S, 12)), "source_mask": s != PAD}, 12),
            "max_length=12 exceeds the 11 learned positions",
        ),
        (
            lambda m, lm, s, t: TransformerConfig(model_dim=12, num_heads=5),
            "num_heads N=5 must divide model_dim D=12",
        ),
        (
            lambda m, lm, s, t: TransformerConfig(num_kv_heads=3),
            "num_kv_heads K=3 must divide num_heads N=8",
        ),
        (
            lambda m, lm, s, t: TransformerConfig(positions="alibi"),
            "positions must be one of .* got 'alibi'",
        ),
        (
            lambda m, lm, s, t: TransformerConfig(kernel="flash"),
            "kernel must be one of .* got 'flash'",
        ),
        (
            lambda m, lm, s, t: TransformerConfig(dropout_rate=1.0),
            r"dropout_rate must be in \[0, 1\), got 1.0",
        ),
    ],
)
def test_bad_inputs_name_the_argument_and_shapes(seq2seq, learned_lm, data, call, message):
    source, target = data
    with pytest.raises(ValueError, match=message):
        call(seq2seq, learned_lm, source, target)


def expected_count(config, encoder_decoder):
    """Parameters by hand: embeddings, attention (4 D^2 [+ 4 D]), FFN (2 D F + F + D), norms."""
    D, F, V_ = config.model_dim, config.ff_dim, config.vocab_size
    attention = 4 * D * D + (4 * D if config.attention_bias else 0)
    ffn = 2 * D * F + F + D
    norm = 2 * D
    embeddings = V_ * D + (config.max_length * D if config.positions == "learned" else 0)
    final_norms = (2 if encoder_decoder else 1) * norm if config.pre_norm else 0
    decoder = config.num_layers * (
        attention * (2 if encoder_decoder else 1) + ffn + norm * (3 if encoder_decoder else 2)
    )
    encoder = config.num_layers * (attention + ffn + 2 * norm) if encoder_decoder else 0
    return embeddings + encoder + decoder + final_norms


@pytest.mark.parametrize(
    "name, config, model_class, paper",
    [
        ("base", BASE, Transformer, 65e6),
        ("big", BIG, Transformer, 213e6),
        ("gpt2-small", GPT2_SMALL, TransformerLM, 124e6),
    ],
)
def test_parameter_counts_next_to_the_papers(name, config, model_class, paper):
    abstract = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
    count = count_parameters(abstract)
    print(f"{name}: {count:,} parameters (paper: {paper / 1e6:.0f}M)")
    assert count == expected_count(config, model_class is Transformer)
    # With the 37,000-token shared vocabulary the paper's counts are matched to within 3.1%.
    assert abs(count / paper - 1) < 0.031


@pytest.mark.parametrize(
    "model_class, config, dtype, param_dtype",
    [
        (Transformer, SEQ2SEQ, "bfloat16", "float32"),
        (Transformer, SEQ2SEQ, "float16", "bfloat16"),
        (TransformerLM, LM_ROTARY, "bfloat16", "float32"),
        (TransformerLM, LM_LEARNED, "bfloat16", "float32"),
    ],
    ids=["seq2seq-bf16", "seq2seq-f16-bf16-params", "rotary-gqa-bf16", "learned-tied-bf16"],
)
def test_dtypes_reach_parameters_outputs_and_caches(data, model_class, config, dtype, param_dtype):
    config = dataclasses.replace(config, dtype=dtype, param_dtype=param_dtype)
    model = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(param_dtype)}
    source, target = data
    if model_class is Transformer:
        logits, weights = nnx.eval_shape(lambda m: m(source, target, return_weights=True), model)
        state = nnx.eval_shape(lambda m: m.init_decode_state(m.encode(source), T + 2), model)
        assert state.memory.dtype == dtype
    else:
        logits, weights = nnx.eval_shape(lambda m: m(target, return_weights=True), model)
        state = nnx.eval_shape(lambda m: m.init_cache(B, T + 2), model)
    assert logits.dtype == dtype
    # The kernels' softmax is float32, and so are the weights drawn in the pictures.
    assert {w.dtype for ws in weights.values() for w in ws} == {jnp.dtype(jnp.float32)}
    assert (
        {c.key.dtype for c in state.caches}
        == {c.value.dtype for c in state.caches}
        == {jnp.dtype(dtype)}
    )
    step_logits, new_state = nnx.eval_shape(lambda m, s: m.step(target[:, 0], s), model, state)
    assert step_logits.dtype == dtype
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
