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
from zoo.kernels import additive
from zoo.shapes import Array

__all__ = ["RNNSearch", "RNNSearchConfig"]

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
    pad_id: int = 0  # padding token of both vocabularies
    # Compute dtype of activations, matmuls and logits: "float32" | "bfloat16" | "float16", or
    # "auto" (float32 on CPU, bfloat16 on GPU/TPU, decided when the model is built).
    dtype: str = "auto"
    # Dtype the parameters are stored and updated in; float32 under bfloat16 compute.
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        precision.check(self.dtype, self.param_dtype)


# Keys of the decoder carry: everything a decoding step needs, batch axis first.
Carry = dict[str, Array]


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
        if config.attention:
            # U_a (applied once per sentence), W_a and v_a of eq. (6).
            self.key_proj = nnx.Linear(2 * n, a, use_bias=False, **kw)
            self.query_proj = nnx.Param(
                nnx.initializers.lecun_normal()(rngs.params(), (n, a), param_dtype)
            )
            self.score = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (a,), param_dtype))
        else:
            self.summary = nnx.Linear(2 * n, 2 * n, **kw)
        # The decoder GRU reads [E y_{i-1}; c_i]: one matrix on the concatenation equals the
        # paper's separate W and C matrices (appendix A.2.2).
        self.decoder = nnx.GRUCell(m + 2 * n, n, **cell)
        # Deep output: t~_i = U_o s_{i-1} + V_o E y_{i-1} + C_o c_i, then maxout (A.2.2).
        self.out_state = nnx.Linear(n, 2 * l, **kw)
        self.out_embed = nnx.Linear(m, 2 * l, use_bias=False, **kw)
        self.out_context = nnx.Linear(2 * n, 2 * l, use_bias=False, **kw)
        self.readout = nnx.Linear(l, config.target_vocab_size, **kw)

    def encode(self, source: Array) -> Carry:
        """Source ``[B, S]`` -> the initial decoder carry (annotations, keys, mask, state)."""
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
        carry: Carry = {"source_mask": mask}
        if self.config.attention:
            carry["annotations"] = annotations
            carry["projected_keys"] = self.key_proj(annotations)
            carry["state"] = jnp.tanh(self.init_state(first_backward)).astype(_STATE_DTYPE)
        else:
            last = jnp.maximum(lengths - 1, 0)
            last_forward = jnp.take_along_axis(annotations[..., :n], last[:, None, None], axis=1)
            summary = jnp.tanh(
                self.summary(jnp.concatenate([last_forward[:, 0], first_backward], axis=-1))
            )
            carry["summary"] = summary
            carry["state"] = jnp.tanh(self.init_state(summary)).astype(_STATE_DTYPE)
        return carry

    def _attend(self, carry: Carry) -> tuple[Array, Array]:
        """Context c_i ``[B, 2D]`` and weights ``[B, S]`` for the state s_{i-1} in ``carry``."""
        if not self.config.attention:
            return carry["summary"], jnp.zeros(carry["source_mask"].shape, jnp.float32)
        # The kernel wants one dtype for all its inputs: the compute dtype.
        context, weights = additive.additive_attention(
            carry["state"][:, None].astype(self.dtype),
            carry["projected_keys"],
            carry["annotations"],
            w_query=self.query_proj[...].astype(self.dtype),
            v=self.score[...].astype(self.dtype),
            mask=carry["source_mask"][:, None, :],
            return_weights=True,
        )
        return context[:, 0], weights[:, 0]

    def _readout(self, state: Array, embedded: Array, context: Array) -> Array:
        """Deep output with maxout (appendix A.2.2): logits from s_{i-1}, E y_{i-1}, c_i."""
        hidden = self.out_state(state) + self.out_embed(embedded) + self.out_context(context)
        # Maxout over pairs of units (Goodfellow et al. 2013).
        hidden = hidden.reshape(*hidden.shape[:-1], self.config.maxout_dim, 2).max(axis=-1)
        return self.readout(hidden)

    def step(self, previous: Array, carry: Carry) -> tuple[Array, Carry, Array]:
        """One decoder step: tokens ``[B]`` -> (logits ``[B, V]``, carry, weights ``[B, S]``)."""
        state = carry["state"]
        context, weights = self._attend(carry)
        embedded = self.target_embed(previous)
        logits = self._readout(state, embedded, context)
        state, _ = self.decoder(state, jnp.concatenate([embedded, context], axis=-1))
        return logits, {**carry, "state": state}, weights

    def __call__(
        self, source: Array, target_in: Array, *, return_weights: bool = False
    ) -> Array | tuple[Array, Array]:
        """Teacher forcing: source ``[B, S]``, target_in ``[B, T]`` (BOS y_1 .. y_{T-1}).

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
        carry = self.encode(source)
        embedded = self.target_embed(target_in)  # [B, T, m]

        # Only the recurrence is sequential; the readout of all T steps runs afterwards as
        # one batched matmul (same numbers as `step`, far fewer small matmuls).
        def body(carry: Carry, embedded: Array) -> tuple[Carry, tuple[Array, ...]]:
            state = carry["state"]
            context, weights = self._attend(carry)
            new_state, _ = self.decoder(state, jnp.concatenate([embedded, context], axis=-1))
            return {**carry, "state": new_state}, (state, context, weights)

        _, (states, contexts, weights) = jax.lax.scan(body, carry, jnp.swapaxes(embedded, 0, 1))
        states, contexts, weights = (jnp.swapaxes(x, 0, 1) for x in (states, contexts, weights))
        logits = self._readout(states, embedded, contexts)
        return (logits, weights) if return_weights else logits


def _check_tokens(name: str, tokens: Any) -> None:
    if getattr(tokens, "ndim", None) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be int [B, length], got {getattr(tokens, 'dtype', type(tokens))} "
            f"{getattr(tokens, 'shape', '')}"
        )
