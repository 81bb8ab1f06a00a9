"""zoo.decoding against float64 NumPy references on a toy model built from random tables.

The toy decoder's state is a pytree of three [B, ...] leaves, so a decoder that threads or
reorders the state wrongly produces different tokens and scores than the reference:

    h         float32 [B, D]  an RNN vector, h' = tanh(h W + E[token])
    prev      int32 [B]       the token before the input (second-order Markov)
    position  int32 [B]       a step counter

    logits = bigram[prev, token] + position_bias[position] + h' U

Every search is compared with a plain-Python reference: greedy and sampling step by step,
beam search with exhaustive enumeration (where the beam is wide enough to be exact) and with
a list-based beam search without early stopping.
"""

import dataclasses
import functools
import itertools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.decoding import (
    beam_search,
    greedy_search,
    sample,
    sequence_lengths,
    sliding_window,
    tile_beams,
)

PAD, EOS = 0, 1
D = 5  # RNN width, prime like every other size here
MAX_POSITIONS = 16


@dataclasses.dataclass(frozen=True)
class Toy:
    bigram: np.ndarray  # [V, V, V] logits of next given (prev, token)
    position_bias: np.ndarray  # [MAX_POSITIONS, V]
    w_h: np.ndarray  # [D, D]
    embed: np.ndarray  # [V, D]
    out: np.ndarray  # [D, V]

    @property
    def V(self):
        return self.bigram.shape[-1]

    def params(self):
        return {k: jnp.asarray(v, jnp.float32) for k, v in dataclasses.asdict(self).items()}


def make_toy(V, seed, eos_bias=0.0, scale=1.5):
    rng = np.random.default_rng(seed)
    bigram = scale * rng.standard_normal((V, V, V))
    bigram[..., EOS] += eos_bias
    bigram[..., PAD] -= 3.0  # pad is a legal token, just a rare one
    # float32-exact values, so the float64 reference sees the very numbers the model does
    f32 = lambda x: np.asarray(x, np.float32).astype(np.float64)  # noqa: E731
    return Toy(
        bigram=f32(bigram),
        position_bias=f32(0.5 * rng.standard_normal((MAX_POSITIONS, V))),
        w_h=f32(rng.standard_normal((D, D)) / np.sqrt(D)),
        embed=f32(rng.standard_normal((V, D))),
        out=f32(rng.standard_normal((D, V))),
    )


def step_from(params, *, normalized=False):
    """The jax step function; ``normalized`` returns log-probabilities instead of logits."""

    def step_fn(tokens, state):
        h = jnp.tanh(state["h"] @ params["w_h"] + params["embed"][tokens])
        logits = (
            params["bigram"][state["prev"], tokens]
            + params["position_bias"][state["position"]]
            + h @ params["out"]
        )
        if normalized:
            logits = jax.nn.log_softmax(logits)
        return logits, {"h": h, "prev": tokens, "position": state["position"] + 1}

    return step_fn


def init_state(bos, seed=1, shared_h=False):
    bos = np.asarray(bos)
    rows = 1 if shared_h else len(bos)
    h = np.random.default_rng(seed).standard_normal((rows, D)).astype(np.float32)
    h = np.broadcast_to(h, (len(bos), D))
    return {
        "h": jnp.asarray(h),
        "prev": jnp.asarray(bos, jnp.int32),
        "position": jnp.zeros(len(bos), jnp.int32),
    }


@functools.partial(jax.jit, static_argnames=("search", "normalized", "options"))
def _run(params, state, bos, rng, *, search, normalized, options):
    step_fn = step_from(params, normalized=normalized)
    kw = dict(options, bos_id=bos, eos_id=EOS, pad_id=PAD)
    if search == "greedy":
        return greedy_search(step_fn, state, **kw)
    if search == "beam":
        return beam_search(step_fn, state, **kw)
    return sample(step_fn, state, rng, **kw)


def run(search, toy, state, bos, rng=None, *, normalized=False, **options):
    """Decode under jit, compiled once per configuration (the models differ by value only)."""
    rng = jax.random.key(0) if rng is None else rng
    options = tuple(sorted(options.items()))
    return _run(
        toy.params(),
        state,
        jnp.asarray(bos),
        rng,
        search=search,
        normalized=normalized,
        options=options,
    )


# ---------------------------------------------------------------- float64 references


def ref_step(toy, token, state):
    """One row: (log-probs [V], new state) in float64."""
    h, prev, position = state
    h = np.tanh(h @ toy.w_h + toy.embed[token])
    logits = toy.bigram[prev, token] + toy.position_bias[position] + h @ toy.out
    logits = logits - logits.max()
    return logits - np.log(np.exp(logits).sum()), (h, token, position + 1)


def ref_init(state, b):
    return (np.asarray(state["h"][b], np.float64), int(state["prev"][b]), 0)


def ref_log_prob(toy, state, b, bos, tokens):
    """log p of one hypothesis (up to its first EOS, or all of it)."""
    s, last, total = ref_init(state, b), bos, 0.0
    for token in tokens:
        log_probs, s = ref_step(toy, last, s)
        total += log_probs[token]
        last = token
        if token == EOS:
            break
    return total


def lp(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


def strip(tokens):
    """A row of decoder output -> the hypothesis as a tuple (through the first EOS)."""
    tokens = [int(t) for t in tokens]
    return tuple(tokens[: tokens.index(EOS) + 1]) if EOS in tokens else tuple(tokens)


def ref_greedy(toy, state, b, bos, T):
    s, last, out = ref_init(state, b), bos, []
    for _ in range(T):
        log_probs, s = ref_step(toy, last, s)
        last = int(np.argmax(log_probs))
        out.append(last)
        if last == EOS:
            break
    return tuple(out)


def ref_exhaustive(toy, state, b, bos, T, alpha):
    """Every hypothesis of length <= T, scored, best first."""
    words = [v for v in range(toy.V) if v != EOS]
    hyps = [(*p, EOS) for n in range(T) for p in itertools.product(words, repeat=n)]
    hyps += list(itertools.product(words, repeat=T))
    scored = [(ref_log_prob(toy, state, b, bos, y) / lp(len(y), alpha), y) for y in hyps]
    return sorted(scored, reverse=True)


def ref_beam(toy, state, b, bos, W, T, alpha):
    """Plain beam search with the same bookkeeping and no early stopping."""
    alive = [((), 0.0, ref_init(state, b), bos)]
    finished = []
    for t in range(T):
        candidates = []
        for tokens, total, s, last in alive:
            log_probs, s = ref_step(toy, last, s)
            candidates += [((*tokens, v), total + log_probs[v], s, v) for v in range(toy.V)]
        candidates = sorted(candidates, key=lambda c: -c[1])[: 2 * W]
        for tokens, total, _, last in candidates:
            if last == EOS or t == T - 1:
                finished.append((total / lp(t + 1, alpha), tokens))
        alive = [c for c in candidates if c[3] != EOS][:W]
    return sorted(finished, reverse=True)[:W]


def assert_padded(tokens):
    """After the first EOS every position is PAD."""
    for row in np.asarray(tokens).reshape(-1, tokens.shape[-1]):
        hyp = strip(row)
        if hyp and hyp[-1] == EOS:
            assert (row[len(hyp) :] == PAD).all(), row


# ---------------------------------------------------------------- greedy


def test_greedy_matches_reference_with_early_and_truncated_rows():
    toy, bos, T = make_toy(V=7, seed=0, eos_bias=1.0), np.array([2, 3, 4, 5, 6]), 6
    state = init_state(bos)
    tokens = run("greedy", toy, state, bos, max_length=T)
    assert tokens.shape == (5, T) and tokens.dtype == jnp.int32
    expected = [ref_greedy(toy, state, b, int(bos[b]), T) for b in range(5)]
    assert [strip(row) for row in np.asarray(tokens)] == expected
    lengths = [len(e) for e in expected]
    assert min(lengths) < T and max(lengths) == T  # both endings are exercised
    np.testing.assert_array_equal(sequence_lengths(tokens, eos_id=EOS), lengths)
    assert_padded(tokens)


def test_greedy_jits_once_for_two_models_of_one_shape():
    bos = np.array([2, 3, 4])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def decode(params, state, bos):
        return greedy_search(
            step_from(params), state, bos_id=bos, eos_id=EOS, pad_id=PAD, max_length=7
        )

    for seed in (10, 11):
        toy, state = make_toy(V=7, seed=seed, eos_bias=0.5), init_state(bos, seed=seed)
        tokens = decode(toy.params(), state, jnp.asarray(bos))
        expected = [ref_greedy(toy, state, b, int(bos[b]), 7) for b in range(3)]
        assert [strip(row) for row in np.asarray(tokens)] == expected


def test_logits_and_log_probs_decode_alike():
    toy, bos = make_toy(V=7, seed=2, eos_bias=0.5), np.array([2, 3, 4])
    state = init_state(bos)
    for search, options in (("greedy", {}), ("beam", {"beam_size": 3})):
        raw = run(search, toy, state, bos, max_length=6, **options)
        norm = run(search, toy, state, bos, normalized=True, max_length=6, **options)
        chex.assert_trees_all_close(raw, norm, rtol=1e-5)


def test_eagerly_with_a_scalar_bos_the_state_gives_the_batch_size():
    toy, state = make_toy(V=7, seed=3), init_state([4, 4])
    step_fn = step_from(toy.params())
    kw = dict(bos_id=4, eos_id=EOS, pad_id=PAD, max_length=5)
    expected = [ref_greedy(toy, state, b, 4, 5) for b in range(2)]
    tokens = greedy_search(step_fn, state, **kw)
    assert [strip(row) for row in np.asarray(tokens)] == expected
    beams = beam_search(step_fn, state, beam_size=3, length_penalty=0.0, **kw).tokens
    assert [strip(row) for row in np.asarray(beams[:, 0])] == [
        ref_beam(toy, state, b, 4, 3, 5, 0.0)[0][1] for b in range(2)
    ]


# ---------------------------------------------------------------- beam search


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_is_the_exhaustive_optimum(alpha):
    # V = 4 (PAD, EOS and two words), T = 4: a beam of (V - 1) ** (T - 1) = 27 holds every
    # unfinished prefix, so its 27 results must be exactly the 27 best of all 121 hypotheses.
    toy, bos, T, W = make_toy(V=4, seed=4, eos_bias=0.5), np.array([2, 3]), 4, 27
    state = init_state(bos)
    result = run("beam", toy, state, bos, beam_size=W, max_length=T, length_penalty=alpha)
    assert result.tokens.shape == (2, W, T) and result.scores.shape == (2, W)
    for b in range(2):
        best = ref_exhaustive(toy, state, b, int(bos[b]), T, alpha)[:W]
        assert [strip(row) for row in np.asarray(result.tokens[b])] == [y for _, y in best]
        np.testing.assert_allclose(result.scores[b], [s for s, _ in best], rtol=2e-5)
    assert_padded(result.tokens)


def test_length_penalty_changes_the_winner():
    """Guards the test above: its three alphas must not all pick the same best hypothesis."""
    toy, bos = make_toy(V=4, seed=4, eos_bias=0.5), np.array([2, 3])
    state = init_state(bos)
    winners = {
        alpha: [ref_exhaustive(toy, state, b, int(bos[b]), 4, alpha)[0][1] for b in range(2)]
        for alpha in (0.0, 0.6, 2.0)
    }
    assert winners[0.0] != winners[2.0]


# A strong length penalty keeps every alive hypothesis in the running to the end.
@pytest.mark.parametrize(("alpha", "stops_early"), [(0.0, True), (0.6, True), (2.0, False)])
def test_beam_matches_a_reference_beam_and_stops_early(alpha, stops_early):
    toy, bos, T, W = make_toy(V=11, seed=5, eos_bias=2.5), np.array([2, 3, 4]), 12, 4
    state = init_state(bos)
    steps = []

    def counted(tokens, s):
        jax.debug.callback(lambda: steps.append(1))
        return step_from(toy.params())(tokens, s)

    result = jax.jit(
        lambda state: beam_search(
            counted,
            state,
            beam_size=W,
            bos_id=bos,
            eos_id=EOS,
            pad_id=PAD,
            max_length=T,
            length_penalty=alpha,
        )
    )(state)
    jax.effects_barrier()
    assert (len(steps) < T) == stops_early
    # and the early stop loses nothing:
    for b in range(3):
        expected = ref_beam(toy, state, b, int(bos[b]), W, T, alpha)
        assert [strip(row) for row in np.asarray(result.tokens[b])] == [y for _, y in expected]
        np.testing.assert_allclose(result.scores[b], [s for s, _ in expected], rtol=2e-5)


def test_beam_scores_are_sorted_distinct_and_recomputable():
    toy, bos, T, W, alpha = make_toy(V=11, seed=6, eos_bias=0.3), np.array([2, 3, 4]), 8, 5, 1.5
    state = init_state(bos)
    result = run("beam", toy, state, bos, beam_size=W, max_length=T, length_penalty=alpha)
    scores = np.asarray(result.scores)
    assert (np.diff(scores, axis=1) <= 0).all()
    lengths = np.asarray(sequence_lengths(result.tokens, eos_id=EOS))
    assert lengths.min() < T and lengths.max() == T
    for b in range(3):
        hyps = [strip(row) for row in np.asarray(result.tokens[b])]
        assert len(set(hyps)) == W
        recomputed = [
            ref_log_prob(toy, state, b, int(bos[b]), y) / lp(n, alpha)
            for y, n in zip(hyps, lengths[b], strict=True)
        ]
        np.testing.assert_allclose(scores[b], recomputed, rtol=2e-5)
    assert_padded(result.tokens)


def test_beam_of_one_without_eos_is_greedy():
    toy, bos, T = make_toy(V=7, seed=7, eos_bias=-50.0), np.array([2, 3, 4]), 6
    state = init_state(bos)
    greedy = np.asarray(run("greedy", toy, state, bos, max_length=T))
    for alpha in (0.0, 0.6):
        beam = run("beam", toy, state, bos, beam_size=1, max_length=T, length_penalty=alpha)
        np.testing.assert_array_equal(beam.tokens[:, 0], greedy)
        expected = [
            ref_log_prob(toy, state, b, int(bos[b]), greedy[b]) / lp(T, alpha) for b in range(3)
        ]
        np.testing.assert_allclose(beam.scores[:, 0], expected, rtol=2e-5)


def test_beam_of_one_is_greedy_or_an_earlier_ending_of_it():
    # With EOS possible, the one finished slot also sees "greedy prefix + EOS" hypotheses
    # and keeps the best of them (and of the greedy hypothesis itself).
    toy, bos, T = make_toy(V=7, seed=8, eos_bias=1.0), np.arange(2, 7), 7
    state = init_state(bos)
    beam = run("beam", toy, state, bos, beam_size=1, max_length=T, length_penalty=0.0)
    greedy_won = []
    for b in range(len(bos)):
        greedy = ref_greedy(toy, state, b, int(bos[b]), T)
        ends = [(*greedy[:n], EOS) for n in range(len(greedy)) if EOS not in greedy[:n]]
        options = {y: ref_log_prob(toy, state, b, int(bos[b]), y) for y in {*ends, greedy}}
        best = max(options, key=options.__getitem__)
        assert strip(np.asarray(beam.tokens[b, 0])) == best
        greedy_won.append(best == greedy)
    assert any(greedy_won) and not all(greedy_won)  # both cases are exercised


def test_fewer_hypotheses_than_beams_leaves_low_scored_filler():
    # V = 3, T = 1: only 3 hypotheses exist for a beam of 5.
    toy, bos = make_toy(V=3, seed=9), np.array([2])
    result = run("beam", toy, init_state(bos), bos, beam_size=5, max_length=1)
    scores = np.asarray(result.scores[0])
    assert sorted(int(t) for t in result.tokens[0, :3, 0]) == [0, 1, 2]
    assert (scores[:3] > -30).all() and (scores[3:] < -1e8).all()


def test_tile_beams_repeats_each_example():
    tree = {"a": jnp.arange(6).reshape(3, 2), "b": (jnp.arange(3.0),)}
    tiled = tile_beams(tree, 2)
    np.testing.assert_array_equal(tiled["a"], [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]])
    np.testing.assert_array_equal(tiled["b"][0], [0, 0, 1, 1, 2, 2])


def test_sequence_lengths():
    tokens = jnp.array([[5, EOS, PAD, PAD], [5, 6, 7, 8], [EOS, PAD, PAD, PAD]])
    np.testing.assert_array_equal(sequence_lengths(tokens, eos_id=EOS), [2, 4, 1])


# ---------------------------------------------------------------- sampling


def test_sampling_is_a_function_of_the_key_and_well_formed():
    toy, bos = make_toy(V=7, seed=12, eos_bias=1.0), np.arange(2, 7).repeat(20)
    state = init_state(bos)
    first = run("sample", toy, state, bos, jax.random.key(0), max_length=9)
    np.testing.assert_array_equal(
        first, run("sample", toy, state, bos, jax.random.key(0), max_length=9)
    )
    assert (first != run("sample", toy, state, bos, jax.random.key(1), max_length=9)).any()
    assert_padded(first)
    lengths = np.asarray(sequence_lengths(first, eos_id=EOS))
    assert lengths.min() < 9 and lengths.max() == 9
    # Sampling is not greedy here (else the tests below would prove little).
    assert (first != run("greedy", toy, state, bos, max_length=9)).any()


def test_every_step_draws_afresh_and_a_stateless_model_needs_only_bos():
    # Uniform next-token distribution; the batch size comes from bos_id alone.
    V, B = 7, 500
    uniform = lambda tokens, state: (jnp.zeros((tokens.shape[0], V)), state)  # noqa: E731
    bos = jnp.full(B, 2, jnp.int32)
    tokens = np.asarray(
        sample(uniform, (), jax.random.key(7), bos_id=bos, max_length=2, eos_id=EOS, pad_id=PAD)
    )
    first, second = tokens[tokens[:, 0] != EOS].T
    assert 0.05 < np.mean(first == second) < 0.25  # 1 / V if the steps' draws are independent
    assert set(first) == set(range(V)) - {EOS}


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, 1), (1e-4, None)])
def test_top_1_and_cold_sampling_are_greedy(temperature, top_k):
    toy, bos = make_toy(V=7, seed=13, eos_bias=0.5), np.arange(2, 7).repeat(4)
    state = init_state(bos)
    sampled = run(
        "sample",
        toy,
        state,
        bos,
        jax.random.key(3),
        max_length=8,
        temperature=temperature,
        top_k=top_k,
    )
    np.testing.assert_array_equal(sampled, run("greedy", toy, state, bos, max_length=8))


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.5, 3)])
def test_first_token_frequencies_match_the_distribution(temperature, top_k):
    toy, N = make_toy(V=7, seed=14), 20_000
    state = init_state(np.full(N, 3), shared_h=True)  # N draws from one distribution
    tokens = run(
        "sample",
        toy,
        state,
        3,
        jax.random.key(5),
        max_length=1,
        temperature=temperature,
        top_k=top_k,
    )
    log_probs, _ = ref_step(toy, 3, ref_init(state, 0))
    logits = log_probs / temperature
    if top_k is not None:
        logits = np.where(logits >= np.sort(logits)[-top_k], logits, -np.inf)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    freq = np.bincount(np.asarray(tokens[:, 0]), minlength=toy.V) / N
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / N) + 1e-9)
    if top_k is not None:
        assert (freq[p == 0] == 0).all() and (p > 0).sum() == top_k


# ---------------------------------------------------------------- sliding window

WINDOW = 5  # C: the windowed toy knows positions 0 .. C - 1 only
SEEN: list[np.ndarray] = []  # every position a windowed toy was fed, appended on the host


def window_toy(table):
    """A model with a cache of C tokens: ``logits = sum_j table[j, window[j]]``, NaN logits
    at a position past C - 1; ``init_fn`` and ``step_fn`` as ``sliding_window`` wants them."""
    C = table.shape[0]

    def init_fn(prompt):  # the cache holds all of prompt but its last token
        B, P = prompt.shape
        jax.debug.callback(lambda p: SEEN.append(np.asarray(p)), jnp.arange(P - 1))
        cache = jnp.zeros((B, C), jnp.int32).at[:, : P - 1].set(prompt[:, :-1])
        return {"cache": cache, "length": jnp.full((B,), P - 1, jnp.int32)}

    def step_fn(tokens, state):
        position = state["length"]
        jax.debug.callback(lambda p: SEEN.append(np.asarray(p)), position)
        cache = jnp.where(jnp.arange(C) == position[:, None], tokens[:, None], state["cache"])
        per_slot = table[jnp.arange(C), cache]  # [B, C, V]
        seen = (jnp.arange(C) <= position[:, None])[..., None]
        logits = jnp.where(seen, per_slot, 0.0).sum(axis=1)
        logits = jnp.where((position < C)[:, None], logits, jnp.nan)
        return logits, {"cache": cache, "length": position + 1}

    return init_fn, step_fn


@functools.partial(jax.jit, static_argnames=("search", "keep", "options"))
def _run_window(table, prompt, rng, *, search, keep, options):
    init_fn, step_fn = window_toy(table)
    start = sliding_window(init_fn, step_fn, prompt, window=table.shape[0], keep=keep)
    kw = dict(options, bos_id=start.bos_id, eos_id=EOS, pad_id=PAD)
    if search == "greedy":
        return greedy_search(start.step_fn, start.init_state, **kw)
    if search == "beam":
        return beam_search(start.step_fn, start.init_state, **kw)
    return sample(start.step_fn, start.init_state, rng, **kw)


def run_window(search, table, prompt, *, keep=None, rng=None, **options):
    rng = jax.random.key(0) if rng is None else rng
    return _run_window(
        jnp.asarray(table),
        jnp.asarray(prompt, jnp.int32),
        rng,
        search=search,
        keep=keep,
        options=tuple(sorted(options.items())),
    )


def window_table(V, seed):
    return np.random.default_rng(seed).standard_normal((WINDOW, V, V)).astype(np.float32)


def ref_windows(prompt, tokens, *, C, keep):
    """The window each of ``tokens`` is predicted from, by the rule of ``sliding_window``."""
    window, out = list(prompt[-C:]), []
    for token in tokens:
        out.append(window)
        window = (window[C - keep :] if len(window) == C else window) + [int(token)]
    return out


def ref_log_probs(table, window):
    logits = table.astype(np.float64)[np.arange(len(window)), window].sum(axis=0)
    logits -= logits.max()
    return logits - np.log(np.exp(logits).sum())


@pytest.mark.parametrize("keep", [0, 2, WINDOW - 1, None])
@pytest.mark.parametrize("P", [3, 2 * WINDOW - 1])  # a short prompt and one cropped to C
def test_sliding_window_predicts_from_the_window_and_feeds_no_position_past_it(keep, P):
    C, T = WINDOW, 4 * WINDOW + 1
    table = window_table(V=7, seed=20)
    prompt = np.random.default_rng(21).integers(2, 7, (3, P))
    SEEN.clear()
    tokens = np.asarray(run_window("greedy", table, prompt, keep=keep, max_length=T))
    jax.effects_barrier()
    assert max(int(p.max(initial=0)) for p in SEEN) == C - 1  # reached, never passed
    for b in range(len(prompt)):
        row = [int(t) for t in tokens[b]]
        row = row[: row.index(EOS) + 1] if EOS in row else row
        windows = ref_windows(list(prompt[b]), row, C=C, keep=C // 2 if keep is None else keep)
        assert [int(np.argmax(ref_log_probs(table, w))) for w in windows] == row
        if keep == C - 1:  # nanoGPT's crop: the last C tokens of everything so far
            sequence = [*prompt[b], *row]
            assert windows == [sequence[max(0, P + t - C) : P + t] for t in range(len(row))]


def test_sampling_and_beam_search_run_through_the_window():
    C, T = WINDOW, 3 * WINDOW
    table = window_table(V=7, seed=22)
    prompt = np.random.default_rng(23).integers(2, 7, (4, 3))
    greedy = run_window("greedy", table, prompt, max_length=T)
    top_1 = run_window("sample", table, prompt, rng=jax.random.key(4), max_length=T, top_k=1)
    np.testing.assert_array_equal(top_1, greedy)
    drawn = run_window("sample", table, prompt, rng=jax.random.key(4), max_length=T)
    assert (np.asarray(drawn) != np.asarray(greedy)).any()
    # Beam search reorders the window's tokens with its hypotheses: every score is the log
    # probability of its hypothesis, each token predicted from its own window.
    result = run_window("beam", table, prompt, max_length=T, beam_size=3, length_penalty=0.0)
    for b in range(len(prompt)):
        for hyp, score in zip(result.tokens[b], result.scores[b], strict=True):
            hyp = strip(hyp)
            windows = ref_windows(list(prompt[b]), hyp, C=C, keep=C // 2)
            total = sum(ref_log_probs(table, w)[t] for w, t in zip(windows, hyp, strict=True))
            np.testing.assert_allclose(score, total, rtol=1e-5, atol=1e-5)


def test_sliding_window_jits_once_for_new_prompts_and_models():
    table = window_table(V=7, seed=24)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def decode(table, prompt):
        init_fn, step_fn = window_toy(table)
        start = sliding_window(init_fn, step_fn, prompt, window=WINDOW)
        return greedy_search(
            start.step_fn,
            start.init_state,
            bos_id=start.bos_id,
            eos_id=EOS,
            pad_id=PAD,
            max_length=4 * WINDOW,
        )

    prompt = jnp.asarray([[2, 3, 4]], jnp.int32)
    decode(jnp.asarray(table), prompt)
    decode(jnp.asarray(table[::-1]), prompt + 1)


# ---------------------------------------------------------------- errors


def _bad_step(kind):
    def step_fn(tokens, state):
        logits = jnp.zeros((tokens.shape[0], 7))
        if kind == "logits":
            return logits[:, None], state
        if kind == "int logits":
            return jnp.zeros((tokens.shape[0], 7), jnp.int32), state
        if kind == "structure":
            return logits, {"h": state["h"]}
        if kind == "shape":
            return logits, {**state, "h": state["h"][:, :2]}
        return logits, state

    return step_fn


def _state():
    return {"h": jnp.zeros((3, D)), "prev": jnp.zeros(3, jnp.int32)}


ids = dict(bos_id=2, eos_id=EOS, pad_id=PAD)
ok = _bad_step("ok")
key = jax.random.key(0)
ERRORS = [
    (
        lambda: beam_search(ok, _state(), beam_size=0, max_length=3, **ids),
        ValueError,
        "beam_size must be >= 1, got 0",
    ),
    (
        lambda: beam_search(ok, _state(), beam_size=2.0, max_length=3, **ids),
        TypeError,
        "beam_size must be an int, got 2.0",
    ),
    (
        lambda: greedy_search(ok, _state(), max_length=0, **ids),
        ValueError,
        "max_length must be >= 1, got 0",
    ),
    (
        lambda: beam_search(ok, _state(), beam_size=2, max_length=0, **ids),
        ValueError,
        "max_length must be >= 1, got 0",
    ),
    (
        lambda: beam_search(
            ok, _state(), beam_size=2, max_length=3, length_penalty=float("nan"), **ids
        ),
        ValueError,
        "length_penalty must be a finite number >= 0, got nan",
    ),
    (
        lambda: beam_search(ok, _state(), beam_size=2, max_length=3, length_penalty=-0.5, **ids),
        ValueError,
        "length_penalty must be a finite number >= 0, got -0.5",
    ),
    (
        lambda: sample(ok, _state(), key, max_length=3, temperature=0.0, **ids),
        ValueError,
        "temperature must be a finite number > 0, got 0.0",
    ),
    (
        lambda: sample(ok, _state(), key, max_length=3, temperature=-1.0, **ids),
        ValueError,
        "temperature must be a finite number > 0, got -1.0",
    ),
    (
        lambda: sample(ok, _state(), key, max_length=3, top_k=0, **ids),
        ValueError,
        "top_k must be >= 1, got 0",
    ),
    (
        lambda: greedy_search(
            ok, {"c": jnp.zeros((4, 2)), "h": jnp.zeros((3, D))}, max_length=3, **ids
        ),
        ValueError,
        "init_state['h'] must have the batch axis first, [B=4 (from init_state['c']), ...], got shape (3, 5)",
    ),
    (
        lambda: greedy_search(
            ok, {"h": jnp.zeros((3, D)), "t": jnp.zeros(())}, max_length=3, **ids
        ),
        ValueError,
        "init_state['t'] must have the batch axis first, [B=3 (from init_state['h']), ...], got shape ()",
    ),
    (
        lambda: greedy_search(
            ok, [jnp.zeros((3, D))], max_length=3, bos_id=jnp.array([2, 2]), eos_id=EOS, pad_id=PAD
        ),
        ValueError,
        "init_state[0] must have the batch axis first, [B=2 (from bos_id), ...], got shape (3, 5)",
    ),
    (
        lambda: greedy_search(ok, (), max_length=3, **ids),
        ValueError,
        "cannot tell the batch size B",
    ),
    (
        lambda: greedy_search(
            ok, _state(), max_length=3, bos_id=jnp.zeros((3, 1), jnp.int32), eos_id=EOS, pad_id=PAD
        ),
        ValueError,
        "bos_id must be an int or an int array [B], got shape (3, 1)",
    ),
    (
        lambda: greedy_search(ok, _state(), max_length=3, bos_id=1.0, eos_id=EOS, pad_id=PAD),
        TypeError,
        "bos_id must be an int or an int array [B], got 1.0",
    ),
    (
        lambda: greedy_search(ok, _state(), max_length=3, bos_id=7, eos_id=EOS, pad_id=PAD),
        ValueError,
        "bos_id must hold token ids in [0, V=7), got 7",
    ),
    (
        lambda: greedy_search(ok, _state(), max_length=3, bos_id=2, eos_id=9, pad_id=PAD),
        ValueError,
        "eos_id must be a token id in [0, V=7), got 9",
    ),
    (
        lambda: beam_search(
            ok, _state(), beam_size=2, max_length=3, bos_id=2, eos_id=EOS, pad_id=-1
        ),
        ValueError,
        "pad_id must be >= 0, got -1",
    ),
    (
        lambda: greedy_search(_bad_step("logits"), _state(), max_length=3, **ids),
        ValueError,
        "step_fn must return float logits [3, V] for tokens [3], got float32 (3, 1, 7)",
    ),
    (
        lambda: beam_search(_bad_step("logits"), _state(), beam_size=2, max_length=3, **ids),
        ValueError,
        "step_fn must return float logits [6, V] for tokens [6], got float32 (6, 1, 7)",
    ),
    (
        lambda: greedy_search(_bad_step("int logits"), _state(), max_length=3, **ids),
        ValueError,
        "step_fn must return float logits [3, V] for tokens [3], got int32 (3, 7)",
    ),
    (
        lambda: greedy_search(_bad_step("structure"), _state(), max_length=3, **ids),
        ValueError,
        "step_fn must return a state like the one it is given, in structure",
    ),
    (
        lambda: sliding_window(*window_toy(window_table(7, 0)), jnp.ones((2, 3), int), window=0),
        ValueError,
        "window must be >= 1, got 0",
    ),
    (
        lambda: sliding_window(
            *window_toy(window_table(7, 0)), jnp.ones((2, 3), int), window=5, keep=5
        ),
        ValueError,
        "keep must be < window=5, got 5",
    ),
    (
        lambda: sliding_window(*window_toy(window_table(7, 0)), jnp.ones(3, jnp.int32), window=5),
        ValueError,
        "prompt must be int [B, P] with P >= 1, got int32 [3]",
    ),
    (
        lambda: sliding_window(
            lambda p: {"h": jnp.zeros((p.shape[0], p.shape[1]))},
            ok,
            jnp.ones((2, 2), int),
            window=5,
        ),
        ValueError,
        "init_fn must return the same state for prompts [B, 2] and [B, keep + 1], in shape and "
        "dtype: state['h'] is float32[2, 2], got float32[2, 3]",
    ),
    (
        lambda: greedy_search(_bad_step("shape"), _state(), max_length=3, **ids),
        ValueError,
        "step_fn must return a state like the one it is given, in shape and dtype: "
        "state['h'] is float32[3, 5], got float32[3, 2]",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()
