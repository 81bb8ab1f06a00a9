"""Sampling four trained contexts from a small Shakespeare LM with learned positions.

The model trains on windows of C tokens, so its position rows past C - 1 are untrained (it
has 4C of them, which lets the test also sample the old way, straight through them).
``experiments.sample`` slides the window: no position past C - 1 is fed, and the model,
scoring its samples over trained positions only (nanoGPT's crop: each token predicted from at
most the C tokens before it), finds the text past C as likely as the text inside C. The
sampler's own log-probabilities could not tell: a collapsed model is confident in its babble.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import run, runner, sample
from experiments.data.tokenizer import EOS_ID, PAD_ID
from zoo import decoding
from zoo.models.transformer import Embedding

C = 32  # data.context_length
ROWS = 8  # samples, one seed each


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lm_long")
    data_dir = tmp_path_factory.mktemp("data")
    overrides = {
        "data.data_dir": data_dir,
        "data.context_length": C,
        "model.max_length": 4 * C,
        "model.model_dim": 64,
        "model.ff_dim": 128,
        "model.num_heads": 4,
        "train.batch_size": 16,
        "train.learning_rate": 3e-3,
        "train.warmup_steps": 20,
        "train.eval_every": 800,
        "train.checkpoint_every": 800,
        "train.log_every": 400,
        "eval.windows": 8,
    }
    sets = [item for key, value in overrides.items() for item in ("--set", f"{key}={value}")]
    run.main(["lm", "--preset", "smoke", "--steps", "800", "--workdir", str(workdir), *sets])
    return runner.load_run(workdir)


def crop_nll(model, prompt, rows):
    """-log p of each token of ``rows [R, n]`` after ``prompt [P]``, predicted from at most the
    C tokens before it at positions 0 .. C - 1: ``[R, n]``."""
    sequences = np.concatenate([np.broadcast_to(prompt, (len(rows), len(prompt))), rows], 1)
    windows, ends, targets = [], [], []
    for sequence in sequences:
        for j in range(len(prompt), sequence.size):
            window = sequence[max(0, j - C) : j]
            windows.append(np.pad(window, (0, C - window.size)))
            ends.append(window.size - 1)
            targets.append(sequence[j])
    logits = _forward(*nnx.split(model), jnp.asarray(np.stack(windows), jnp.int32))
    log_probs = jax.nn.log_softmax(np.asarray(logits)[np.arange(len(ends)), ends], axis=-1)
    return -np.asarray(log_probs)[np.arange(len(targets)), targets].reshape(rows.shape)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _without_window(graphdef, state, prompt, rng, length):
    """Sampling straight through the untrained positions, as before the window."""
    model = nnx.merge(graphdef, state)
    cache = model.init_decode_state(prompt, prompt.shape[1] + length)
    return decoding.sample(
        model.step,
        cache,
        rng,
        bos_id=prompt[:, -1],
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        max_length=length,
    )


def inside_and_beyond(nll, P):
    """Mean NLL of the tokens at positions < C and of those at positions >= C."""
    return nll[:, : C - P].mean(), nll[:, C - P :].mean()


@pytest.mark.slow  # trains a small LM for 800 steps
def test_four_contexts_feed_no_untrained_position_and_do_not_collapse(trained, monkeypatch):
    model, data = trained.model, trained.setup.held_out.data
    assert trained.setup.config.data.context_length == C and model.config.positions == "learned"
    fed: list[np.ndarray] = []
    embed = Embedding.__call__

    def recording(self, tokens, positions, *, rngs):
        jax.debug.callback(lambda p: fed.append(np.asarray(p)), positions)
        return embed(self, tokens, positions, rngs=rngs)

    monkeypatch.setattr(Embedding, "__call__", recording)
    prompt = sample.encode_prompt(data, "ROMEO:")
    P, length = prompt.size, 4 * C - prompt.size  # four contexts, prompt included
    options = dict(method="sample", temperature=1.0, top_k=None, beam_size=1)
    rows = np.stack(
        [
            sample.continue_prompt(model, prompt, window=C, length=length, seed=seed, **options)
            for seed in range(ROWS)
        ]
    )
    jax.effects_barrier()
    monkeypatch.undo()
    assert fed and max(int(p.max()) for p in fed) == C - 1
    assert (rows != PAD_ID).all()  # a character stream never ends

    inside, beyond = inside_and_beyond(crop_nll(model, prompt, rows), P)
    assert abs(beyond / inside - 1) < 0.2, (inside, beyond)

    # The measure sees the collapse that the untrained positions cause.
    graphdef, state = nnx.split(model)
    old = np.stack(
        [
            np.asarray(
                _without_window(
                    graphdef, state, jnp.asarray(prompt[None]), jax.random.key(seed), length
                )[0]
            )
            for seed in range(ROWS)
        ]
    )
    old_inside, old_beyond = inside_and_beyond(crop_nll(model, prompt, old), P)
    assert old_beyond / old_inside > 1.2, (old_inside, old_beyond)
