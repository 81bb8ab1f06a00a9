"""RNNsearch: neural machine translation by jointly learning to align and translate.

Bahdanau, Cho & Bengio 2014 (arXiv:1409.0473). A bidirectional GRU reads the source into
annotations ``h_j`` (sec. 3.2); a GRU decoder emits one target word per step, each time
attending over the annotations with the additive score ``e_ij = v_a^T tanh(W_a s_{i-1} +
U_a h_j)`` (eq. (6)) and feeding the context ``c_i`` (eq. (5)) into its state and its deep
output with maxout (appendix A.2.2).

With ``attention=False`` it is the paper's baseline RNNencdec (Cho et al. 2014): the decoder
sees one fixed-size summary ``c`` of the whole source at every step instead of ``c_i``.
Here the summary is taken from the same bidirectional encoder (its two final states), so the
comparison isolates attention.

``score`` swaps the alignment model for Luong et al. 2015's multiplicative scores (sec. 3.1)
in the same place (the state ``s_{i-1}`` against the annotations), everything else equal:
``general`` is ``s_{i-1}^T W_a h_j``; ``dot`` needs equal widths and the annotations are twice
the state's, so it compares the state with each direction's half and adds the two,
``s_{i-1}^T (->h_j + <-h_j)``. The kernel is chosen by name: from
``zoo.kernels.ADDITIVE_KERNELS`` for the additive score, from ``zoo.kernels.KERNELS`` for
Luong's.

Decoding (``zoo.decoding``) goes through the zoo's model protocol: :meth:`RNNSearch.encode`
reads the source once, :meth:`RNNSearch.init_decode_state` makes the state (with a buffer of
each step's alignment when asked), :meth:`RNNSearch.step` emits one word.

Mixed precision (``zoo.precision``): embeddings, the GRUs' matmuls and gates, the attention
and the readout run in ``config.dtype`` over parameters in ``config.param_dtype``. The GRU
states of encoder and decoder stay float32 (a state rounded to bfloat16's 8 bits at each of
50 steps drifts), and so does the alignment softmax (the kernel's); the logits come in
``config.dtype`` and the task casts them to float32 for the loss.

Shapes (``zoo.shapes``): source ``[B, S]``, target ``[B, T]`` int; annotations ``[B, S, 2D]``
with D the GRU width; alignment weights ``[B, T, S]``.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from zoo import precision
from zoo.kernels import ADDITIVE_KERNELS, KERNELS
from zoo.nn import AdditiveAttention, MultiplicativeAttention
from zoo.shapes import Array

__all__ = ["SCORES", "RNNSearch", "RNNSearchConfig"]

# Alignment scores: Bahdanau et al.'s MLP, or Luong et al. 2015's dot / general.
SCORES = ("additive", "dot", "general")

# The recurrent states (the GRU carries), whatever the compute dtype.
_STATE_DTYPE = jnp.float32
_ORTHOGONAL = nnx.initializers.orthogonal()  # GRUCell's default recurrent initializer


def _orthogonal(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """GRUCell's orthogonal recurrent matrices drawn in float32, then cast: the QR behind them
    has no bfloat16 or float16, so ``param_dtype="bfloat16"`` would fail with the default."""
    return _ORTHOGONAL(key, shape, jnp.float32).astype(dtype)


@dataclasses.dataclass(frozen=True)
class RNNSearchConfig:
    """Sizes; the defaults are the paper's (appendix A.2 / B.2)."""

    source_vocab_size: int = 30_000  # K_x: 30,000 most frequent source words
    target_vocab_size: int = 30_000  # K_y
    embed_dim: int = 620  # m: word embedding width
    hidden_dim: int = 1000  # n: GRU width of each encoder direction and of the decoder
    attention_dim: int = 1000  # n': hidden width of the alignment model, eq. (6)
    maxout_dim: int = 500  # l: deep output width after maxout of pairs, appendix A.2.2
    attention: bool = True  # False: RNNencdec, a fixed summary vector instead of c_i
    score: str = "additive"  # "additive" (eq. (6)) | "general" | "dot" (Luong et al. 2015)
    # Attention kernel by name: of zoo.kernels.ADDITIVE_KERNELS for the additive score ("auto",
    # "additive", "blockwise_additive", "pallas_additive"), else of zoo.kernels.KERNELS.
    kernel: str = "auto"
    pad_id: int = 0  # padding token of both vocabularies
    # Compute dtype of activations, matmuls and logits: "float32" | "bfloat16" | "float16", or
    # "auto" (float32 on CPU, bfloat16 on GPU/TPU, decided when the model is built).
    dtype: str = "auto"
    # Dtype the parameters are stored and updated in; float32 under bfloat16 compute.
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in (
            "source_vocab_size",
            "target_vocab_size",
            "embed_dim",
            "hidden_dim",
            "attention_dim",
            "maxout_dim",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        kernels = tuple(ADDITIVE_KERNELS if self.score == "additive" else KERNELS)
        if self.kernel not in kernels:
            raise ValueError(
                f"kernel must be one of {kernels} for the {self.score} score, got {self.kernel!r}"
            )
        precision.check(self.dtype, self.param_dtype)


# The encoded source and the decoding state: dicts of arrays, batch axis first.
Memory = dict[str, Array]
State = dict[str, Array]


class RNNSearch(nnx.Module):
    """The encoder-decoder with (or, as RNNencdec, without) additive attention."""

    def __init__(self, config: RNNSearchConfig, *, rngs: nnx.Rngs):
        self.config = config
        m, n, a, l = config.embed_dim, config.hidden_dim, config.attention_dim, config.maxout_dim
        dtype, param_dtype = precision.resolve(config.dtype, config.param_dtype)
        self.dtype = dtype
        kw: dict[str, Any] = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        cell: dict[str, Any] = {"recurrent_kernel_init": _orthogonal, **kw}
        self.source_embed = nnx.Embed(config.source_vocab_size, m, **kw)
        self.target_embed = nnx.Embed(config.target_vocab_size, m, **kw)
        # rngs=False: the RNNs start from explicit zero states, so the model holds no RNG
        # state and a forward pass mutates nothing (a pure function of the parameters).
        self.encoder = nnx.Bidirectional(
            nnx.RNN(nnx.GRUCell(m, n, **cell), rngs=False),
            nnx.RNN(nnx.GRUCell(m, n, **cell), rngs=False),
            rngs=False,
        )
        # s_0 = tanh(W_s <-h_1), appendix A.2.2; RNNencdec starts from its summary instead.
        self.init_state = nnx.Linear(n if config.attention else 2 * n, n, **kw)
        attend: dict[str, Any] = {"kernel": config.kernel, **kw}
        self.attention: AdditiveAttention | MultiplicativeAttention | None
        if not config.attention:
            self.attention = None
            self.summary = nnx.Linear(2 * n, 2 * n, **kw)
        elif config.score == "additive":  # U_a (once per sentence), W_a and v_a of eq. (6)
            self.attention = AdditiveAttention(n, 2 * n, a, **attend)
        else:  # dot compares [s; s] with [->h; <-h]: the sum of the two halves' products
            query = 2 * n if config.score == "dot" else n
            self.attention = MultiplicativeAttention(query, 2 * n, score=config.score, **attend)
        # The decoder GRU reads [E y_{i-1}; c_i]: one matrix on the concatenation equals the
        # paper's separate W and C matrices (appendix A.2.2).
        self.decoder = nnx.GRUCell(m + 2 * n, n, **cell)
        # Deep output: t~_i = U_o s_{i-1} + V_o E y_{i-1} + C_o c_i, then maxout (A.2.2).
        self.out_state = nnx.Linear(n, 2 * l, **kw)
        self.out_embed = nnx.Linear(m, 2 * l, use_bias=False, **kw)
        self.out_context = nnx.Linear(2 * n, 2 * l, use_bias=False, **kw)
        self.readout = nnx.Linear(l, config.target_vocab_size, **kw)

    @property
    def weights_kernel(self) -> str:
        """The kernel name that returns the alignment weights (``zoo.models.protocol``)."""
        return "additive" if self.config.score == "additive" else "reference"

    def encode(self, source: Array) -> Memory:
        """Source ``[B, S]`` -> what every decoding step reads: annotations ``[B, S, 2D]`` and
        their attention keys (or RNNencdec's summary), the source mask, the first state."""
        _check_tokens("source", source)
        mask = source != self.config.pad_id
        lengths = mask.sum(axis=1).astype(jnp.int32)
        zeros = jnp.zeros((source.shape[0], self.config.hidden_dim), _STATE_DTYPE)
        encoded = self.encoder(
            self.source_embed(source), seq_lengths=lengths, initial_carry=(zeros, zeros)
        )
        assert isinstance(encoded, jax.Array)  # return_carry=False: just the outputs
        # [B, S, 2D], zero on padding; the GRU states are float32, what reads them is not.
        annotations = (encoded * mask[..., None]).astype(self.dtype)
        n = self.config.hidden_dim
        first_backward = annotations[:, 0, n:]  # <-h_1: the backward RNN's final state
        memory: Memory = {"source_mask": mask}
        if self.attention is None:
            last = jnp.maximum(lengths - 1, 0)
            last_forward = jnp.take_along_axis(annotations[..., :n], last[:, None, None], axis=1)
            summary = jnp.tanh(
                self.summary(jnp.concatenate([last_forward[:, 0], first_backward], axis=-1))
            )
            memory["summary"] = summary
            initial = self.init_state(summary)
        else:
            memory["annotations"] = annotations
            if isinstance(self.attention, AdditiveAttention):
                memory["keys"] = self.attention.project_keys(annotations)
            initial = self.init_state(first_backward)
        memory["initial_state"] = jnp.tanh(initial).astype(_STATE_DTYPE)
        return memory

    def init_decode_state(
        self, memory: Memory, max_length: int, *, keep_weights: bool = False
    ) -> State:
        """The state before the first decoding step, room for ``max_length`` steps.

        With ``keep_weights`` it also holds ``"weights" [B, max_length, S]``, each step's
        alignment written at its position (``zoo.decoding``'s beams carry it along).
        """
        B, S = memory["source_mask"].shape
        state: State = {
            **memory,
            "state": memory["initial_state"],
            "position": jnp.zeros((B,), jnp.int32),
        }
        if keep_weights:
            state["weights"] = jnp.zeros((B, max_length, S), jnp.float32)
        return state

    def _attend(self, state: Array, memory: Memory, return_weights: bool) -> tuple[Array, Array]:
        """Context c_i ``[B, 2D]`` and, if asked, weights ``[B, S]`` for the state s_{i-1}."""
        if self.attention is None:
            return memory["summary"], jnp.zeros(memory["source_mask"].shape, jnp.float32)
        query = state[:, None].astype(self.dtype)
        mask = memory["source_mask"][:, None, :]
        if isinstance(self.attention, AdditiveAttention):
            out = self.attention(
                query,
                memory["keys"],
                memory["annotations"],
                mask=mask,
                return_weights=return_weights,
            )
        else:
            if self.config.score == "dot":
                query = jnp.concatenate([query, query], axis=-1)
            out = self.attention(
                query, memory["annotations"], mask=mask, return_weights=return_weights
            )
        if not return_weights:
            assert isinstance(out, jax.Array)
            return out[:, 0], jnp.zeros(mask.shape[::2], jnp.float32)
        context, weights = out
        return context[:, 0], weights[:, 0]

    def _readout(self, state: Array, embedded: Array, context: Array) -> Array:
        """Deep output with maxout (appendix A.2.2): logits from s_{i-1}, E y_{i-1}, c_i."""
        hidden = self.out_state(state) + self.out_embed(embedded) + self.out_context(context)
        # Maxout over pairs of units (Goodfellow et al. 2013).
        hidden = hidden.reshape(*hidden.shape[:-1], self.config.maxout_dim, 2).max(axis=-1)
        return self.readout(hidden)

    def step(self, tokens: Array, state: State) -> tuple[Array, State]:
        """One decoding step: previous tokens ``[B]`` -> (logits ``[B, V]``, state)."""
        if getattr(tokens, "ndim", None) != 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"tokens must be int [B], got {getattr(tokens, 'dtype', type(tokens))} "
                f"{getattr(tokens, 'shape', '')}"
            )
        previous = state["state"]
        context, weights = self._attend(previous, state, "weights" in state)
        embedded = self.target_embed(tokens)
        logits = self._readout(previous, embedded, context)
        new, _ = self.decoder(previous, jnp.concatenate([embedded, context], axis=-1))
        position = state["position"]
        state = {**state, "state": new, "position": position + 1}
        if "weights" in state:
            rows = jnp.arange(tokens.shape[0])
            state["weights"] = state["weights"].at[rows, position].set(weights, mode="drop")
        return logits, state

    def __call__(
        self, source: Array, target_in: Array, *, return_weights: bool = False, rngs: Any = None
    ) -> Array | tuple[Array, Array]:
        """Teacher forcing: source ``[B, S]``, target_in ``[B, T]`` (BOS y_1 .. y_{T-1}).

        ``rngs`` is the zoo's dropout argument (an ``nnx.Rngs`` or a key), taken by every
        model; this model has no dropout, so it is not used.

        Returns logits ``[B, T, V]`` for y_1 .. y_T and, if asked, the alignment weights
        ``[B, T, S]`` (the paper's Figure 3).
        """
        _check_tokens("source", source)
        _check_tokens("target_in", target_in)
        if source.shape[0] != target_in.shape[0]:
            raise ValueError(
                f"source [B, S] and target_in [B, T] must share B, got {source.shape} and "
                f"{target_in.shape}"
            )
        memory = self.encode(source)
        embedded = self.target_embed(target_in)  # [B, T, m]

        # Only the recurrence is sequential; the readout of all T steps runs afterwards as
        # one batched matmul (same numbers as `step`, far fewer small matmuls).
        def body(state: Array, embedded: Array) -> tuple[Array, tuple[Array, ...]]:
            context, weights = self._attend(state, memory, return_weights)
            new_state, _ = self.decoder(state, jnp.concatenate([embedded, context], axis=-1))
            return new_state, (state, context, weights)

        _, (states, contexts, weights) = jax.lax.scan(
            body, memory["initial_state"], jnp.swapaxes(embedded, 0, 1)
        )
        states, contexts, weights = (jnp.swapaxes(x, 0, 1) for x in (states, contexts, weights))
        logits = self._readout(states, embedded, contexts)
        return (logits, weights) if return_weights else logits


def _check_tokens(name: str, tokens: Any) -> None:
    if getattr(tokens, "ndim", None) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be int [B, length], got {getattr(tokens, 'dtype', type(tokens))} "
            f"{getattr(tokens, 'shape', '')}"
        )
