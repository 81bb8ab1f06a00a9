"""Greedy search, beam search and sampling, written once over a model's step function.

Every model in the zoo decodes through the same contract, a *step function*::

    step_fn(tokens, state) -> (logits, new_state)

    tokens     int32 [B]   the previous token of each row (``bos_id`` at the first step)
    state      any pytree whose every leaf has the batch axis first: an RNN's hidden state,
               the encoder annotations, a KV cache with its position counter [B], ...
    logits     float [B, V] over the next token: logits or log-probabilities, either works,
               because decoding applies ``log_softmax`` (in float32) itself
    new_state  the same pytree, with the same shapes and dtypes

Decoding owns the loop (a ``lax.while_loop`` with fixed shapes that exits once every row is
finished), so ``step_fn`` is traced once and the whole decoder jits. ``step_fn`` usually
closes over the parameters; jit a function that takes them as arguments, so that new
parameters of the same shapes reuse the compiled decoder::

    @jax.jit
    def translate(params, source):
        state = encode(params, source)  # every leaf [B, ...]
        step_fn = functools.partial(decode_step, params)
        return beam_search(step_fn, state, beam_size=4, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                           max_length=64)

A language model prefills its cache itself and passes its prompts' last tokens as a per-row
``bos_id`` array. :func:`sliding_window` wraps a language model's step function so that it
generates any number of tokens without ever feeding a position past the ``window`` it was
trained on; the three decoders run on what it returns.

Outputs are the generated tokens after the start token, ``int32 [B, T]`` with ``T =
max_length``: the end token is included, every position after it is ``pad_id``, and a row
that never emits ``eos_id`` stops after ``T`` tokens (truncated).
:func:`sequence_lengths` counts the tokens of each row up to and including the end token.

Shapes: the alphabet of ``zoo.shapes`` (B batch, V vocabulary, T target length, here
``max_length``), plus W, the beam size, used only in this file.
"""

import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.shapes import Array, PRNGKey

__all__ = [
    "BeamSearchResult",
    "State",
    "StepFn",
    "Window",
    "beam_search",
    "greedy_search",
    "sample",
    "sequence_lengths",
    "sliding_window",
    "tile_beams",
]

State: TypeAlias = Any  # a pytree of arrays, each [B, ...]
StepFn: TypeAlias = Callable[[Array, State], tuple[Array, State]]
InitFn: TypeAlias = Callable[[Array], State]  # prompt int32 [B, P] -> state

# Finite stand-in for -inf, the score of "no hypothesis here" (finished slots not yet filled,
# the W - 1 copies of each example at the first step): far below the log-probability of any
# real hypothesis, and finite, so that no -inf - -inf NaN can appear.
NEG = -1.0e9


class BeamSearchResult(NamedTuple):
    """The ``beam_size`` best hypotheses of each example, best first."""

    tokens: Array  # int32 [B, W, T], pad_id after each hypothesis' end token
    scores: Array  # float32 [B, W], log p(Y) / lp(|Y|), decreasing along W


def greedy_search(
    step_fn: StepFn,
    init_state: State,
    *,
    bos_id: int | Array,
    eos_id: int,
    pad_id: int,
    max_length: int,
) -> Array:
    """Pick the most probable token at every step: tokens ``int32 [B, T]``.

    Args:
      step_fn: ``(tokens [B], state) -> (logits [B, V], state)``, see the module docstring.
      init_state: the decoder state before the first step, every leaf ``[B, ...]``.
      bos_id: the first input token, an int or an int array ``[B]`` (one per row).
      eos_id: the end token; it is kept in the output and ends the row.
      pad_id: written after the end token (and fed to ``step_fn`` for finished rows).
      max_length: T, the most tokens generated per row, end token included.
    """
    _check_int("max_length", max_length, 1)
    return _decode(
        step_fn,
        init_state,
        lambda t, log_probs: jnp.argmax(log_probs, axis=-1).astype(jnp.int32),
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        max_length=max_length,
    )


def sample(
    step_fn: StepFn,
    init_state: State,
    rng: PRNGKey,
    *,
    bos_id: int | Array,
    eos_id: int,
    pad_id: int,
    max_length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Array:
    """Ancestral sampling, optionally tempered and truncated to the top k: ``int32 [B, T]``.

    Token ``t`` is drawn from ``softmax(log p / temperature)`` restricted to the ``top_k``
    most probable tokens (all of them when ``top_k`` is None or ``>= V``) with the key
    ``fold_in(rng, t)``, so the result is a deterministic function of ``rng``. ``top_k=1``
    is greedy search, and so, in the limit, is ``temperature -> 0``.

    Args are those of :func:`greedy_search`, plus:
      rng: a ``jax.random.key`` (or a legacy uint32[2] key).
      temperature: > 0; below 1 sharpens the distribution, above 1 flattens it.
      top_k: None, or an int >= 1 (Fan et al. 2018, "Hierarchical Neural Story Generation").
    """
    _check_int("max_length", max_length, 1)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if top_k is not None:
        _check_int("top_k", top_k, 1)

    def choose(t: Array, log_probs: Array) -> Array:
        key = jax.random.fold_in(rng, t)
        logits = log_probs / temperature
        if top_k is None or top_k >= logits.shape[-1]:
            return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
        top_logits, top_tokens = lax.top_k(logits, top_k)
        pick = jax.random.categorical(key, top_logits, axis=-1)
        return jnp.take_along_axis(top_tokens, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)

    return _decode(
        step_fn,
        init_state,
        choose,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        max_length=max_length,
    )


def beam_search(
    step_fn: StepFn,
    init_state: State,
    *,
    beam_size: int,
    bos_id: int | Array,
    eos_id: int,
    pad_id: int,
    max_length: int,
    length_penalty: float = 0.6,
) -> BeamSearchResult:
    """The ``beam_size`` best hypotheses per example under length-normalized log-probability.

    A hypothesis ``Y`` (its end token included, or ``T`` tokens if truncated) scores
    ``log p(Y) / lp(Y)`` with ``lp(Y) = ((5 + |Y|) / 6) ** length_penalty``, Wu et al. 2016
    (GNMT, arXiv:1609.08144), eq. (14); ``length_penalty=0`` ranks by plain log-probability.
    (GNMT's coverage penalty, the other term of eq. (14), is not applied.)

    Bookkeeping: W *alive* hypotheses (no end token yet) and W *finished* ones are kept per
    example. Each step expands every alive hypothesis by every token and takes the 2W best
    extensions, enough for W of them not to end in ``eos_id`` (each parent has one end
    extension). Extensions ending in ``eos_id`` (and, at the last step, all of them) compete
    for the W finished slots with their final score; the others become the next alive beams,
    whose states are gathered from their parents' rows of the state returned by ``step_fn``.
    An example stops early once its finished slots are full and no alive hypothesis can
    reach the worst of them: log-probabilities only fall and ``lp`` only grows, so an alive
    hypothesis can at best keep its log-probability and reach length T.

    Args are those of :func:`greedy_search`, plus:
      beam_size: W >= 1. The state is tiled to ``[B * W, ...]`` (row ``b * W + w``); leaves
        that are the same for every beam of an example (encoder annotations) may instead be
        closed over by ``step_fn``, tiled once with :func:`tile_beams`.
      length_penalty: alpha >= 0 of eq. (14); GNMT uses 0.6 to 0.7 (sec. 7).

    Returns:
      ``BeamSearchResult(tokens int32 [B, W, T], scores float32 [B, W])``, best first. If an
      example has fewer than W distinct hypotheses of length <= T, the rest are filler, with
      scores <= -1e9 / lp(T).

    Unlike some beam searches, ``beam_size=1`` is not greedy search: it also keeps the best
    hypothesis that ended earlier, which may outscore the greedy one.
    """
    _check_int("beam_size", beam_size, 1)
    _check_int("max_length", max_length, 1)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, int | float):
        raise TypeError(f"length_penalty must be a float, got {type(length_penalty).__name__}")
    if not (math.isfinite(length_penalty) and length_penalty >= 0):
        raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")
    W, T, alpha = beam_size, max_length, float(length_penalty)
    init_state, bos, B = _prepare(init_state, bos_id)
    state = tile_beams(init_state, W)
    V = _check_step_fn(step_fn, jnp.repeat(bos, W), state, rows=B * W)
    _check_ids(V, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    K = min(2 * W, W * V)  # extensions kept per step

    def lp(length: Array) -> Array:  # Wu et al. 2016, eq. (14)
        return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha

    def gather(x: Array, index: Array) -> Array:  # x [B, n, ...], index [B, m] -> [B, m, ...]
        return jax.vmap(lambda row, i: row[i])(x, index)

    class Carry(NamedTuple):
        t: Array  # int32 [], tokens generated so far
        last: Array  # int32 [B, W], each alive hypothesis' last token
        state: State  # [B * W, ...], the state each alive hypothesis is fed with
        alive_tokens: Array  # int32 [B, W, T]
        alive_log_probs: Array  # float32 [B, W], log p of each alive hypothesis
        finished_tokens: Array  # int32 [B, W, T]
        finished_scores: Array  # float32 [B, W], normalized, decreasing along W
        finished: Array  # bool [B, W], whether a finished slot holds a hypothesis
        done: Array  # bool [B], nothing alive can enter the finished slots any more

    def body(c: Carry) -> Carry:
        logits, new_state = step_fn(c.last.reshape(B * W), c.state)
        log_probs = _log_softmax(logits).reshape(B, W, V)
        # Beam w > 0 starts at NEG, so the first step expands one copy of each example only.
        total = (c.alive_log_probs[:, :, None] + log_probs).reshape(B, W * V)
        top_log_probs, top = lax.top_k(total, K)  # [B, K]
        parent, token = top // V, (top % V).astype(jnp.int32)
        tokens = gather(c.alive_tokens, parent).at[:, :, c.t].set(token)  # [B, K, T]
        ended = token == eos_id

        # Alive: the W best extensions that did not end.
        alive_log_probs, alive = lax.top_k(jnp.where(ended, NEG, top_log_probs), W)
        alive_parent = jnp.take_along_axis(parent, alive, axis=1)
        rows = (jnp.arange(B)[:, None] * W + alive_parent).reshape(B * W)
        state = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), new_state)

        # Finished: the W best of the old slots and the extensions that end now (all of them
        # at the last step: a truncated hypothesis is a hypothesis of length T).
        finishing = ended | (c.t == T - 1)
        scores = jnp.where(finishing, top_log_probs / lp(c.t + 1), NEG)
        finished_scores, pick = lax.top_k(jnp.concatenate([c.finished_scores, scores], axis=1), W)
        finished_tokens = gather(jnp.concatenate([c.finished_tokens, tokens], axis=1), pick)
        finished = jnp.take_along_axis(
            jnp.concatenate([c.finished, finishing], axis=1), pick, axis=1
        )
        # log p <= 0 only falls and lp grows with the length, so the best an alive
        # hypothesis can still score is its log-probability over lp(T).
        best_alive = alive_log_probs[:, 0] / lp(jnp.asarray(T))
        done = c.done | (jnp.all(finished, axis=1) & (best_alive <= finished_scores[:, -1]))
        return Carry(
            t=c.t + 1,
            last=jnp.take_along_axis(token, alive, axis=1),
            state=state,
            alive_tokens=gather(tokens, alive),
            alive_log_probs=alive_log_probs,
            finished_tokens=finished_tokens,
            finished_scores=finished_scores,
            finished=finished,
            done=done,
        )

    def cond(c: Carry) -> Array:
        return (c.t < T) & ~jnp.all(c.done)

    start = jnp.where(jnp.arange(W) == 0, 0.0, NEG).astype(jnp.float32)
    carry = Carry(
        t=jnp.asarray(0, jnp.int32),
        last=jnp.repeat(bos[:, None], W, axis=1),
        state=state,
        alive_tokens=jnp.full((B, W, T), pad_id, jnp.int32),
        alive_log_probs=jnp.broadcast_to(start, (B, W)),
        finished_tokens=jnp.full((B, W, T), pad_id, jnp.int32),
        finished_scores=jnp.full((B, W), NEG, jnp.float32),
        finished=jnp.zeros((B, W), bool),
        done=jnp.zeros((B,), bool),
    )
    carry = lax.while_loop(cond, body, carry)
    return BeamSearchResult(carry.finished_tokens, carry.finished_scores)


def tile_beams(tree: State, beam_size: int) -> State:
    """Repeat every leaf ``[B, ...]`` to ``[B * W, ...]``, row ``b * W + w`` = example ``b``.

    This is the layout :func:`beam_search` gives ``step_fn``; use it for arrays ``step_fn``
    closes over, such as encoder annotations, which every beam of an example shares.
    """
    _check_int("beam_size", beam_size, 1)
    return jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x), beam_size, axis=0), tree)


class Window(NamedTuple):
    """Where a windowed decoder starts: pass ``step_fn``, ``init_state`` and ``bos_id`` on to
    :func:`greedy_search`, :func:`sample` or :func:`beam_search`."""

    step_fn: StepFn  # the model's step function, its state rebuilt when the window is full
    init_state: State  # the model's state after the prompt, with the window's tokens
    bos_id: Array  # int32 [B], the prompt's last token


class _WindowState(NamedTuple):
    inner: State  # the model's own state: its cache holds tokens[:, :length]
    tokens: Array  # int32 [B, C], slot j = the token at position j of the window
    length: Array  # int32 [B], tokens in the model's state = the position fed next


def sliding_window(
    init_fn: InitFn,
    step_fn: StepFn,
    prompt: Array,
    *,
    window: int,
    keep: int | None = None,
) -> Window:
    """Decode any number of tokens while the model is fed positions ``0 .. window - 1`` only.

    A model trained on windows of C tokens has seen positions below C only; with learned
    absolute positions (GPT-2, nanoGPT) the rows past C - 1 are untrained, and generation
    collapses there. nanoGPT's ``generate`` (``model.py``) crops its input to the last C
    tokens and runs the whole window again at every step. Here the model's cache is kept,
    and when it holds C tokens it is rebuilt from the last ``keep`` of them, now at
    positions ``0 .. keep - 1``, in one prefill; decoding goes on from there. Each prediction
    is then what a fresh forward pass over the last ``k`` tokens gives, ``keep < k <= C``,
    and the prefill of ``keep`` tokens is spread over the ``C - keep`` steps after it.
    ``keep = C - 1`` is nanoGPT's crop exactly (a prefill per step); the default ``C // 2``
    always conditions on more than half a window.

    A rolling cache (overwrite the oldest slot, never prefill again) is not exact with absolute
    positions: sliding the window moves every token to a new position, and with positions
    added to the input (learned, or the sinusoids of Vaswani et al. 2017, sec. 3.5) every
    cached key and value depends on its token's old position through all the layers below.
    Only rotary positions (Su et al. 2021) make attention depend on offsets alone. (On the
    tiny Shakespeare LM, a cache that drops its oldest slot and feeds every later token at
    position C - 1 samples text that the model itself, reading each token's last C tokens at
    their trained positions, finds 1.75 times as surprising past the first window.)

    Args:
      init_fn: ``prompt int32 [B, P] -> state``, the model's state with room for ``window``
        tokens holding all of ``prompt`` but its last token, which is fed next; for a model of
        ``zoo.models.protocol``, ``lambda p: model.init_decode_state(model.encode(p), window)``.
        It is called on the prompt (its last ``window`` tokens, if longer) and, inside the
        decoding loop, on ``[B, keep + 1]`` tokens; both states must have the same structure,
        shapes and dtypes.
      step_fn: the model's ``(tokens [B], state) -> (logits [B, V], state)``, called only on
        states holding fewer than ``window`` tokens.
      prompt: int ``[B, P]``, P >= 1; only its last ``window`` tokens are read. Rows decode
        in lockstep (one prompt length), so the window fills, and is rebuilt, at the same
        step in every row.
      window: C >= 1, the most tokens the model is fed at once (a run's trained context).
      keep: tokens kept when the window is full, ``0 <= keep < C``; None means ``C // 2``.

    Returns:
      A :class:`Window`; the decoders' ``max_length`` is then free of the window.
    """
    _check_int("window", window, 1)
    C = window
    keep = C // 2 if keep is None else keep
    _check_int("keep", keep, 0)
    if keep >= C:
        raise ValueError(f"keep must be < window={C}, got {keep}")
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(
            f"prompt must be int [B, P] with P >= 1, got {prompt.dtype} {list(prompt.shape)}"
        )
    prompt = prompt[:, -C:].astype(jnp.int32)
    B, P = prompt.shape
    inner = init_fn(prompt)
    rebuilt = jax.eval_shape(init_fn, jax.ShapeDtypeStruct((B, keep + 1), jnp.int32))
    _check_same_state(
        inner,
        rebuilt,
        rule=f"init_fn must return the same state for prompts [B, {P}] and [B, keep + 1]",
    )
    state = _WindowState(
        inner,
        jnp.zeros((B, C), jnp.int32).at[:, : P - 1].set(prompt[:, :-1]),
        jnp.full((B,), P - 1, jnp.int32),
    )

    def rebuild(s: _WindowState, last: Array) -> _WindowState:
        kept = s.tokens[:, C - keep :]  # [B, keep]
        inner = init_fn(jnp.concatenate([kept, last[:, None]], axis=1))
        tokens = jnp.zeros_like(s.tokens).at[:, :keep].set(kept)
        return _WindowState(inner, tokens, jnp.full_like(s.length, keep))

    def windowed_step(last: Array, s: _WindowState) -> tuple[Array, _WindowState]:
        s = lax.cond(s.length[0] == C, rebuild, lambda s, _: s, s, last)  # rows in lockstep
        logits, inner = step_fn(last, s.inner)
        tokens = jnp.where(jnp.arange(C) == s.length[:, None], last[:, None], s.tokens)
        return logits, _WindowState(inner, tokens, s.length + 1)

    return Window(windowed_step, state, prompt[:, -1])


def sequence_lengths(tokens: Array, *, eos_id: int) -> Array:
    """Tokens up to and including the first ``eos_id`` along the last axis (all if none).

    ``tokens [..., T]`` (the output of any decoder here) -> ``int32 [...]``.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim < 1:
        raise ValueError(f"tokens must be [..., T], got shape {tokens.shape}")
    T = tokens.shape[-1]
    ended = tokens == eos_id
    first = jnp.argmax(ended, axis=-1)
    return jnp.where(jnp.any(ended, axis=-1), first + 1, T).astype(jnp.int32)


def _decode(
    step_fn: StepFn,
    init_state: State,
    choose: Callable[[Array, Array], Array],
    *,
    bos_id: int | Array,
    eos_id: int,
    pad_id: int,
    max_length: int,
) -> Array:
    """One token per row and step, ``choose(t, log_probs [B, V]) -> int32 [B]``."""
    init_state, bos, B = _prepare(init_state, bos_id)
    V = _check_step_fn(step_fn, bos, init_state, rows=B)
    _check_ids(V, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    T = max_length

    class Carry(NamedTuple):
        t: Array  # int32 [], tokens generated so far
        last: Array  # int32 [B], the next input
        state: State
        tokens: Array  # int32 [B, T]
        done: Array  # bool [B], the row has emitted eos_id

    def body(c: Carry) -> Carry:
        logits, state = step_fn(c.last, c.state)
        token = jnp.where(c.done, pad_id, choose(c.t, _log_softmax(logits)))
        return Carry(
            t=c.t + 1,
            last=token,
            state=state,
            tokens=c.tokens.at[:, c.t].set(token),
            done=c.done | (token == eos_id),
        )

    def cond(c: Carry) -> Array:
        return (c.t < T) & ~jnp.all(c.done)

    carry = Carry(
        t=jnp.asarray(0, jnp.int32),
        last=bos,
        state=init_state,
        tokens=jnp.full((B, T), pad_id, jnp.int32),
        done=jnp.zeros((B,), bool),
    )
    return lax.while_loop(cond, body, carry).tokens


def _log_softmax(logits: Array) -> Array:
    return jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))


def _check_int(name: str, value: Any, minimum: int) -> None:
    try:
        if isinstance(value, bool):
            raise TypeError
        operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _prepare(init_state: State, bos_id: int | Array) -> tuple[State, Array, int]:
    """Check that every state leaf is ``[B, ...]``; return the state, ``bos [B]`` and B."""
    init_state = jax.tree.map(jnp.asarray, init_state)
    bos = jnp.asarray(bos_id)
    if isinstance(bos_id, bool) or not jnp.issubdtype(bos.dtype, jnp.integer):
        raise TypeError(f"bos_id must be an int or an int array [B], got {bos_id!r}")
    if bos.ndim > 1:
        raise ValueError(f"bos_id must be an int or an int array [B], got shape {bos.shape}")
    source = ("bos_id", bos.shape[0]) if bos.ndim == 1 else None
    for path, leaf in jax.tree_util.tree_flatten_with_path(init_state)[0]:
        name = "init_state" + jax.tree_util.keystr(path)
        if source is None and leaf.ndim >= 1:
            source = (name, leaf.shape[0])
        if source is None or leaf.ndim == 0 or leaf.shape[0] != source[1]:
            batch = "B" if source is None else f"B={source[1]} (from {source[0]})"
            raise ValueError(
                f"{name} must have the batch axis first, [{batch}, ...], got shape {leaf.shape}"
            )
    if source is None:
        raise ValueError(
            "cannot tell the batch size B: init_state has no array leaves and bos_id is a "
            "scalar; pass bos_id as an int array [B] or give the state a [B] leaf"
        )
    B = source[1]
    return init_state, jnp.broadcast_to(bos, (B,)).astype(jnp.int32), B


def _check_step_fn(step_fn: StepFn, tokens: Array, state: State, *, rows: int) -> int:
    """Trace ``step_fn`` abstractly, check what it returns; return the vocabulary size V."""
    out = jax.eval_shape(step_fn, tokens, state)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"step_fn must return (logits, state), got {type(out).__name__}")
    logits, new_state = out
    if (
        not hasattr(logits, "shape")
        or len(logits.shape) != 2
        or logits.shape[0] != rows
        or not jnp.issubdtype(logits.dtype, jnp.floating)
    ):
        raise ValueError(
            f"step_fn must return float logits [{rows}, V] for tokens [{rows}], got "
            f"{getattr(logits, 'dtype', type(logits).__name__)} {getattr(logits, 'shape', '')}"
        )
    _check_same_state(state, new_state, rule="step_fn must return a state like the one it is given")
    return int(logits.shape[1])


def _check_same_state(expected: State, got: State, *, rule: str) -> None:
    """``got`` must have the structure of ``expected`` and each leaf its shape and dtype."""
    given: Any = jax.tree.structure(expected)
    returned: Any = jax.tree.structure(got)
    if given != returned:
        raise ValueError(f"{rule}, in structure: {given}, got {returned}")
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(got), strict=True
    ):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"{rule}, in shape and dtype: state{jax.tree_util.keystr(path)} is "
                f"{a.dtype}{list(a.shape)}, got {b.dtype}{list(b.shape)}"
            )


def _check_ids(V: int, *, bos_id: int | Array, eos_id: int, pad_id: int) -> None:
    """Token ids must lie in [0, V); a traced ``bos_id`` is checked by shape only."""
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        _check_int(name, value, 0)
        if value >= V:
            raise ValueError(f"{name} must be a token id in [0, V={V}), got {value}")
    try:
        bos = np.asarray(bos_id)
    except jax.errors.TracerArrayConversionError:
        return
    if bos.size and (bos.min() < 0 or bos.max() >= V):
        raise ValueError(f"bos_id must hold token ids in [0, V={V}), got {bos}")
