"""The Transformer: an encoder-decoder for translation and a decoder-only language model.

Vaswani et al. 2017, "Attention Is All You Need" (arXiv:1706.03762). One :class:`Block`
(sec. 3.1) holds self-attention, optionally cross-attention over the encoder output, and a
position-wise feed-forward network (eq. (2)); each is a residual sublayer normalized after the
sum as in the paper (post-LN, ``LayerNorm(x + Sublayer(x))``) or before the sublayer (pre-LN,
``x + Sublayer(LayerNorm(x))``, as in GPT-2, with a final LayerNorm per stack). Stacks of
blocks make two models:

* :class:`Transformer`, the paper's encoder-decoder: one embedding matrix for source and
  target, multiplied by ``sqrt(D)`` and shared with the pre-softmax projection (sec. 3.4),
  sinusoidal positions (sec. 3.5), dropout on every sublayer output and on the embeddings
  (sec. 5.4);
* :class:`TransformerLM`, a decoder-only language model (GPT; Radford et al. 2018, 2019):
  learned, sinusoidal or rotary positions, grouped-query attention, optional weight tying.

Mixed precision (``zoo.precision``): ``TransformerConfig.dtype`` is the dtype of the
activations, matmuls and logits, ``param_dtype`` that of the parameters. What stays float32
whatever ``dtype`` says: the softmax inside the kernels (and so the attention weights they
return), LayerNorm's mean and variance and the normalization itself (flax casts only its
result), the sinusoidal and rotary angles; the tasks cast the logits to float32 for the loss.

Attention runs through a kernel chosen by ``TransformerConfig.kernel`` or passed to the
constructor, so the same parameters run on :func:`zoo.kernels.dot_product_attention` and on
the blockwise kernel. Dropout is driven by ``rngs`` passed at call time (an ``nnx.Rngs`` with a
``dropout`` stream, or a key); ``rngs=None`` is deterministic, and the model holds no RNG state.

Both models speak the zoo's model protocol (``zoo.models.protocol``): ``encode(inputs) ->
memory``, ``init_decode_state(memory, max_length)``, ``step(tokens [B], state) -> (logits [B,
V], state)``. The :class:`DecodeState` holds one :class:`zoo.nn.KVCache` per decoder layer,
for the encoder-decoder the encoder output and the source mask, and, when asked, every
layer's attention weights of each decoded token (cross-attention for the encoder-decoder,
self-attention for the language model). The language model's memory is its prompt: the
state is the cache filled with all but the prompt's last token, which decoding starts from.

Learned positions are trained only as far as the training sequences reach: rows of the table
past them stay at their initialization, so decoding must not feed them. The language model
generates past its trained context through ``zoo.decoding.sliding_window``, which rebuilds the
cache from the window's last tokens at positions from 0 whenever it is full. The
encoder-decoder cannot slide (every target token reads the whole target prefix), so decode
its targets no longer than the longest it was trained on. Sinusoidal and rotary positions are
defined at every position, and a model with them may be decoded past its trained length,
with no guarantee of quality there (Press et al. 2022, "Train Short, Test Long").

Shapes (``zoo.shapes``): source ``[B, S]`` and target ``[B, T]`` int; hidden ``[B, T, D]``;
logits ``[B, T, V]``; attention weights ``[B, N, T, S]``; ``M`` cache slots.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zoo import precision
from zoo.kernels import KERNELS
from zoo.kernels.positional import sinusoidal_positions
from zoo.nn import FeedForward, KVCache, MultiHeadAttention
from zoo.shapes import Array

__all__ = [
    "BASE",
    "BIG",
    "GPT2_SMALL",
    "Block",
    "DecodeState",
    "Decoder",
    "Embedding",
    "Encoder",
    "Transformer",
    "TransformerConfig",
    "TransformerLM",
    "count_parameters",
]

# GPT-2's GELU is the tanh approximation, jax.nn.gelu's default.
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"relu": jax.nn.relu, "gelu": jax.nn.gelu}
_POSITIONS = ("sinusoidal", "learned", "rotary")
# "ring" (zoo.kernels.ring_attention) needs a mesh, so it is given to the constructor bound
# to one: kernel=functools.partial(ring_attention, mesh=..., axis_name=...).
_KERNELS = (*KERNELS, "ring")

Kernel = Callable[..., Any]
Rngs = nnx.Rngs | Array | None  # an nnx.Rngs (its "dropout" stream), a PRNG key, or None


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes and switches; the defaults are the paper's base model (Table 3, En-De)."""

    vocab_size: int = 37_000  # V: shared source-target BPE vocabulary of ~37,000 (sec. 5.1)
    model_dim: int = 512  # d_model (D)
    ff_dim: int = 2048  # d_ff: inner width of the feed-forward sublayers, eq. (2)
    num_heads: int = 8  # h (N): query heads; head width H = D / N
    num_kv_heads: int | None = None  # K key/value heads (GQA); None = num_heads, 1 = MQA
    num_layers: int = 6  # N of the paper: layers in the encoder and in the decoder, each
    dropout_rate: float = 0.1  # P_drop: on sublayer outputs and embeddings + positions (5.4)
    attention_dropout_rate: float = 0.0  # on attention weights; not in the paper
    pre_norm: bool = False  # False: LayerNorm(x + Sublayer(x)) (3.1); True: pre-LN (GPT-2)
    positions: str = "sinusoidal"  # "sinusoidal" (3.5) | "learned" (Table 3 (E)) | "rotary"
    max_length: int = 1024  # rows of the "learned" position table; unused otherwise
    tie_embeddings: bool = True  # pre-softmax projection = embedding matrix^T (sec. 3.4)
    scale_embeddings: bool = True  # multiply embeddings by sqrt(D) (sec. 3.4)
    attention_bias: bool = False  # biases in W^Q, W^K, W^V, W^O (GPT-2 has them)
    activation: str = "relu"  # feed-forward nonlinearity: "relu" (eq. (2)) | "gelu" (GPT-2)
    init_std: float | None = None  # None: Glorot weights, N(0, 1/D) embeddings; else GPT-2's
    layer_norm_epsilon: float = 1e-6  # tensor2tensor's 1e-6; GPT-2 uses 1e-5
    # Attention kernel (zoo.kernels.KERNELS): "auto" (the fastest for the platform, see
    # zoo.kernels.explain) | "reference" | "blockwise" (the last two: the zoo's own), or
    # "ring" (sequence-parallel; the constructor then needs the kernel bound to a mesh).
    kernel: str = "auto"
    pad_id: int = 0  # source padding token, never attended (encoder-decoder only)
    # Compute dtype of activations, matmuls and logits: "float32" | "bfloat16" | "float16", or
    # "auto" (float32 on CPU, bfloat16 on GPU/TPU, decided when the model is built).
    dtype: str = "auto"
    # Dtype the parameters are stored and updated in; float32 under bfloat16 compute.
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "model_dim", "ff_dim", "num_heads", "num_layers", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.model_dim % self.num_heads:
            raise ValueError(
                f"num_heads N={self.num_heads} must divide model_dim D={self.model_dim}"
            )
        if self.num_kv_heads is not None and (
            self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads
        ):
            raise ValueError(
                f"num_kv_heads K={self.num_kv_heads} must divide num_heads N={self.num_heads}"
            )
        for name in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name, options in (
            ("positions", _POSITIONS),
            ("activation", tuple(_ACTIVATIONS)),
            ("kernel", _KERNELS),
        ):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        if self.positions == "sinusoidal" and self.model_dim % 2:
            raise ValueError(f"sinusoidal positions need an even model_dim, got {self.model_dim}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head dim D / N, got {self.head_dim}")
        if self.init_std is not None and self.init_std <= 0:
            raise ValueError(f"init_std must be positive or None, got {self.init_std}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id}"
            )
        precision.check(self.dtype, self.param_dtype)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads


# Table 3 of the paper: base and big (P_drop 0.3 for En-De; the paper's En-Fr big used 0.1).
BASE = TransformerConfig()
BIG = dataclasses.replace(BASE, model_dim=1024, ff_dim=4096, num_heads=16, dropout_rate=0.3)
# GPT-2 small (Radford et al. 2019, Table 2, smallest): 12 layers of width 768, 12 heads,
# context 1024, byte-level BPE of 50,257 tokens, learned positions, pre-LN, tied embeddings.
GPT2_SMALL = TransformerConfig(
    vocab_size=50_257,
    model_dim=768,
    ff_dim=3072,
    num_heads=12,
    num_layers=12,
    dropout_rate=0.1,
    pre_norm=True,
    positions="learned",
    max_length=1024,
    tie_embeddings=True,
    scale_embeddings=False,
    attention_bias=True,
    activation="gelu",
    init_std=0.02,
    layer_norm_epsilon=1e-5,
)


def count_parameters(model: nnx.Module) -> int:
    """Trainable parameters; works on an abstract model from ``nnx.eval_shape`` too."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


class DecodeState(NamedTuple):
    """What a decoding step needs; every leaf has the batch axis first (``zoo.decoding``)."""

    caches: tuple[KVCache, ...]  # decoder self-attention keys/values, one per layer
    memory: Array | None = None  # encoder output [B, S, D]; None for the language model
    source_mask: Array | None = None  # bool [B, S], True at real source tokens
    # With keep_weights: per layer float32 [B, N, M, S] (cross-attention; the language model:
    # self-attention, S = M), row t the weights of the t-th token fed.
    weights: tuple[Array, ...] | None = None

    @property
    def position(self) -> Array:
        """int32 ``[B]``: tokens decoded so far, the position of the next one."""
        return self.caches[0].length


def _initializers(config: TransformerConfig) -> tuple[nnx.Initializer, ...]:
    """(weights, residual-branch output weights, embeddings) initializers."""
    if config.init_std is None:
        # tensor2tensor's "uniform_unit_scaling" (Glorot uniform) and N(0, 1/D) embeddings,
        # which the sqrt(D) of sec. 3.4 brings to unit variance.
        glorot = nnx.initializers.glorot_uniform()
        return glorot, glorot, nnx.initializers.normal(config.model_dim**-0.5)
    # GPT-2 (Radford et al. 2019, sec. 2.3): N(0, 0.02), the weights of the layers that write
    # into the residual stream scaled by 1 / sqrt(number of residual layers).
    std = config.init_std
    return (
        nnx.initializers.normal(std),
        nnx.initializers.normal(std / math.sqrt(2 * config.num_layers)),
        nnx.initializers.normal(std),
    )


def _precision(config: TransformerConfig) -> dict[str, Any]:
    """``dtype=`` and ``param_dtype=`` keyword arguments for every layer of the model."""
    dtype, param_dtype = precision.resolve(config.dtype, config.param_dtype)
    return {"dtype": dtype, "param_dtype": param_dtype}


def _layer_norm(config: TransformerConfig, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Statistics in float32 whatever the dtype (flax); only the output is cast to it.
    return nnx.LayerNorm(
        config.model_dim, epsilon=config.layer_norm_epsilon, rngs=rngs, **_precision(config)
    )


def _resolve_kernel(config: TransformerConfig, kernel: Kernel | None) -> Kernel:
    if kernel is not None:
        return kernel
    if config.kernel not in KERNELS:
        raise ValueError(
            f"kernel {config.kernel!r} needs a mesh: pass kernel=functools.partial("
            "zoo.kernels.ring_attention, mesh=..., axis_name=...) to the constructor"
        )
    return KERNELS[config.kernel]


def _as_rngs(rngs: Rngs) -> nnx.Rngs | None:
    if rngs is None or isinstance(rngs, nnx.Rngs):
        return rngs
    return nnx.Rngs(dropout=rngs)


def _dropout(layer: nnx.Dropout, x: Array, rngs: nnx.Rngs | None) -> Array:
    return layer(x, deterministic=rngs is None, rngs=rngs)


class Embedding(nnx.Module):
    """Token embeddings (times ``sqrt(D)``, sec. 3.4) plus absolute positions, then dropout."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        init = _initializers(config)[2]
        kwargs = {"embedding_init": init, "rngs": rngs, **_precision(config)}
        self.tokens = nnx.Embed(config.vocab_size, config.model_dim, **kwargs)
        self.positions = (
            nnx.Embed(config.max_length, config.model_dim, **kwargs)
            if config.positions == "learned"
            else None
        )
        self.dropout = nnx.Dropout(config.dropout_rate)

    def __call__(self, tokens: Array, positions: Array, *, rngs: nnx.Rngs | None) -> Array:
        """int ``tokens [B, T]`` at int ``positions [T]`` or ``[B, T]`` -> ``[B, T, D]``."""
        x = self.tokens(tokens)
        if self.config.scale_embeddings:
            x = x * jnp.asarray(math.sqrt(self.config.model_dim), x.dtype)
        if self.config.positions == "sinusoidal":
            x = x + sinusoidal_positions(positions, self.config.model_dim).astype(x.dtype)
        elif self.positions is not None:
            x = x + self.positions(positions)
        return _dropout(self.dropout, x, rngs)  # sec. 5.4: dropout on embeddings + positions

    def attend(self, hidden: Array) -> Array:
        """The tied pre-softmax projection: ``[..., D] -> [..., V]`` by the embedding matrix."""
        return self.tokens.attend(hidden)


class Block(nnx.Module):
    """Self-attention (causal in decoders), optional cross-attention, feed-forward (sec. 3.1)."""

    def __init__(
        self,
        config: TransformerConfig,
        *,
        causal: bool,
        cross: bool,
        kernel: Kernel,
        rngs: nnx.Rngs,
    ):
        init, out_init, _ = _initializers(config)
        self.causal = causal
        self.pre_norm = config.pre_norm

        def attention(rotary: bool) -> MultiHeadAttention:
            return MultiHeadAttention(
                config.model_dim,
                config.num_heads,
                num_kv_heads=config.num_kv_heads,
                use_bias=config.attention_bias,
                rotary=rotary,
                dropout_rate=config.attention_dropout_rate,
                kernel=kernel,
                kernel_init=init,
                out_init=out_init,
                rngs=rngs,
                **_precision(config),
            )

        def norm() -> nnx.LayerNorm:
            return _layer_norm(config, rngs=rngs)

        self.self_attention = attention(rotary=config.positions == "rotary")
        self.self_attention_norm = norm()
        # Cross-attention has no positions of its own: the encoder output carries them.
        self.cross_attention = attention(rotary=False) if cross else None
        self.cross_attention_norm = norm() if cross else None
        self.feed_forward = FeedForward(
            config.model_dim,
            config.ff_dim,
            activation=_ACTIVATIONS[config.activation],
            kernel_init=init,
            out_init=out_init,
            rngs=rngs,
            **_precision(config),
        )
        self.feed_forward_norm = norm()
        self.dropout = nnx.Dropout(config.dropout_rate)

    def __call__(
        self,
        x: Array,
        *,
        mask: Array | None = None,
        memory: Array | None = None,
        memory_mask: Array | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Array, dict[str, Array | None], KVCache | None]:
        """``x [B, T, D]`` -> ``(x, {"self": weights, "cross": weights}, cache)``.

        ``mask`` (bool, broadcastable to ``[B, N, T, T]``) restricts self-attention; ``memory
        [B, S, D]`` with ``memory_mask`` (``[B, 1, 1, S]``) is what cross-attention reads. With
        a ``cache`` the ``T`` tokens extend it (causal self-attention over the cache; ``mask``
        is not used) and the updated cache is returned; without, the returned cache is None.
        """
        weights: dict[str, Array | None] = {}
        h = self._sublayer_input(x, self.self_attention_norm)
        if cache is None:
            h, weights["self"] = self.self_attention(
                h, mask=mask, is_causal=self.causal, return_weights=return_weights, rngs=rngs
            )
        else:
            h, weights["self"], cache = self.self_attention.extend(
                h, cache, return_weights=return_weights, rngs=rngs
            )
        x = self._residual(x, h, self.self_attention_norm, rngs)
        if self.cross_attention is not None and self.cross_attention_norm is not None:
            if memory is None:
                raise ValueError("a block with cross-attention needs memory [B, S, D]")
            h = self._sublayer_input(x, self.cross_attention_norm)
            h, weights["cross"] = self.cross_attention(
                h, memory, mask=memory_mask, return_weights=return_weights, rngs=rngs
            )
            x = self._residual(x, h, self.cross_attention_norm, rngs)
        h = self.feed_forward(self._sublayer_input(x, self.feed_forward_norm))
        x = self._residual(x, h, self.feed_forward_norm, rngs)
        return x, weights, cache

    def _sublayer_input(self, x: Array, norm: nnx.LayerNorm) -> Array:
        return norm(x) if self.pre_norm else x

    def _residual(self, x: Array, h: Array, norm: nnx.LayerNorm, rngs: nnx.Rngs | None) -> Array:
        x = x + _dropout(self.dropout, h, rngs)  # residual dropout, sec. 5.4
        return x if self.pre_norm else norm(x)  # post-LN: LayerNorm(x + Sublayer(x)), 3.1


class Encoder(nnx.Module):
    """``num_layers`` bidirectional blocks (sec. 3.1), a final LayerNorm when pre-LN."""

    def __init__(self, config: TransformerConfig, *, kernel: Kernel, rngs: nnx.Rngs):
        self.blocks = nnx.List(
            [
                Block(config, causal=False, cross=False, kernel=kernel, rngs=rngs)
                for _ in range(config.num_layers)
            ]
        )
        self.final_norm = _layer_norm(config, rngs=rngs) if config.pre_norm else None

    def __call__(
        self,
        x: Array,
        *,
        mask: Array | None = None,
        return_weights: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Array, list[Array]]:
        """Embedded source ``[B, S, D]``, bool ``mask [B, S]`` (True = real token) ->
        ``(memory [B, S, D], per-layer self-attention weights [B, N, S, S] if asked)``."""
        attention_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, S]
        weights = []
        for block in self.blocks:
            x, w, _ = block(x, mask=attention_mask, return_weights=return_weights, rngs=rngs)
            if w["self"] is not None:
                weights.append(w["self"])
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, weights


class Decoder(nnx.Module):
    """``num_layers`` causal blocks, with cross-attention when there is an encoder."""

    def __init__(self, config: TransformerConfig, *, cross: bool, kernel: Kernel, rngs: nnx.Rngs):
        self.blocks = nnx.List(
            [
                Block(config, causal=True, cross=cross, kernel=kernel, rngs=rngs)
                for _ in range(config.num_layers)
            ]
        )
        self.final_norm = _layer_norm(config, rngs=rngs) if config.pre_norm else None

    def __call__(
        self,
        x: Array,
        *,
        memory: Array | None = None,
        memory_mask: Array | None = None,
        caches: tuple[KVCache, ...] | None = None,
        return_weights: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Array, dict[str, list[Array]], tuple[KVCache, ...] | None]:
        """Embedded target ``[B, T, D]`` -> ``(hidden [B, T, D], weights, caches)``.

        ``memory [B, S, D]`` and bool ``memory_mask [B, S]`` feed cross-attention. With
        ``caches`` (one per layer) the ``T`` tokens extend them and the updated caches are
        returned. ``weights`` maps "self" (``[B, N, T, T]``, or ``[B, N, T, M]`` with caches)
        and "cross" (``[B, N, T, S]``) to one array per layer, when asked.
        """
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"caches must hold {len(self.blocks)} KVCaches, got {len(caches)}")
        mask = None if memory_mask is None else memory_mask[:, None, None, :]  # [B, 1, 1, S]
        weights: dict[str, list[Array]] = {"self": [], "cross": []}
        new_caches: list[KVCache] = []
        for i, block in enumerate(self.blocks):
            x, w, cache = block(
                x,
                memory=memory,
                memory_mask=mask,
                cache=None if caches is None else caches[i],
                return_weights=return_weights,
                rngs=rngs,
            )
            if cache is not None:
                new_caches.append(cache)
            for name, array in w.items():
                if array is not None:
                    weights[name].append(array)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, weights, None if caches is None else tuple(new_caches)


class _DecodingModel(nnx.Module):
    """What both models share: embeddings, a decoder stack, the output projection."""

    def __init__(self, config: TransformerConfig, *, cross: bool, kernel: Kernel, rngs: nnx.Rngs):
        self.config = config
        self.embed = Embedding(config, rngs=rngs)
        self.decoder = Decoder(config, cross=cross, kernel=kernel, rngs=rngs)
        self.head = (
            None
            if config.tie_embeddings
            else nnx.Linear(
                config.model_dim,
                config.vocab_size,
                use_bias=False,
                kernel_init=_initializers(config)[0],
                rngs=rngs,
                **_precision(config),
            )
        )

    # The kernel of zoo.kernels.KERNELS that returns attention weights (zoo.models.protocol).
    weights_kernel = "reference"

    def _logits(self, hidden: Array) -> Array:
        # Tied: the pre-softmax projection is the embedding matrix transposed (sec. 3.4).
        return self.embed.attend(hidden) if self.head is None else self.head(hidden)

    def _new_state(
        self,
        batch_size: int,
        max_length: int,
        keep_weights: bool,
        memory: Array | None = None,
        source_mask: Array | None = None,
    ) -> DecodeState:
        self._check_length("max_length", max_length)
        caches = tuple(
            block.self_attention.init_cache(batch_size, max_length) for block in self.decoder.blocks
        )
        weights = None
        if keep_weights:
            S = max_length if source_mask is None else source_mask.shape[1]
            shape = (batch_size, self.config.num_heads, max_length, S)
            weights = tuple(jnp.zeros(shape, jnp.float32) for _ in self.decoder.blocks)
        return DecodeState(caches, memory, source_mask, weights)

    def _extend(self, tokens: Array, state: DecodeState) -> tuple[Array, DecodeState]:
        """Feed ``tokens [B, T]`` after the cached ones: ``(logits [B, T, V], state)``."""
        T = tokens.shape[1]
        start = state.position
        positions = start[:, None] + jnp.arange(T, dtype=jnp.int32)  # [B, T]
        x = self.embed(tokens, positions, rngs=None)
        hidden, weights, caches = self.decoder(
            x,
            memory=state.memory,
            memory_mask=state.source_mask,
            caches=state.caches,
            return_weights=state.weights is not None,
        )
        assert caches is not None
        state = state._replace(caches=caches)
        if state.weights is not None:
            new = weights["self" if state.memory is None else "cross"]  # [B, N, T, S]

            def write(kept: Array, w: Array, row: Array) -> Array:  # one example
                return jax.lax.dynamic_update_slice(kept, w.astype(kept.dtype), (0, row, 0))

            kept = tuple(
                jax.vmap(write)(k, w, start) for k, w in zip(state.weights, new, strict=True)
            )
            state = state._replace(weights=kept)
        return self._logits(hidden), state

    def _step(self, tokens: Any, state: DecodeState) -> tuple[Array, DecodeState]:
        if getattr(tokens, "ndim", None) != 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"tokens must be int [B], got {getattr(tokens, 'dtype', type(tokens))} "
                f"{getattr(tokens, 'shape', '')}"
            )
        _check_state_batch("tokens [B]", tokens.shape, state)
        logits, state = self._extend(tokens[:, None], state)
        return logits[:, 0], state

    def _check_length(self, name: str, length: int) -> None:
        if self.config.positions == "learned" and length > self.config.max_length:
            raise ValueError(
                f"{name}={length} exceeds the {self.config.max_length} learned positions "
                "(TransformerConfig.max_length)"
            )


class Transformer(_DecodingModel):
    """The encoder-decoder of Vaswani et al. 2017 (Figure 1), shared vocabulary."""

    def __init__(self, config: TransformerConfig, *, kernel: Kernel | None = None, rngs: nnx.Rngs):
        """``kernel`` overrides ``config.kernel`` (any function with the call of
        :func:`zoo.kernels.dot_product_attention`); ``rngs`` initialize the parameters only."""
        kernel = _resolve_kernel(config, kernel)
        super().__init__(config, cross=True, kernel=kernel, rngs=rngs)
        self.encoder = Encoder(config, kernel=kernel, rngs=rngs)

    def __call__(
        self,
        source: Array,
        target_in: Array,
        *,
        return_weights: bool = False,
        rngs: Rngs = None,
    ) -> Array | tuple[Array, dict[str, list[Array]]]:
        """Teacher forcing: logits ``[B, T, V]`` of ``y_1 .. y_T`` given ``target_in [B, T]``.

        Args:
          source: int ``[B, S]``, padded with ``config.pad_id`` (masked out everywhere).
          target_in: int ``[B, T]``, the start token then ``y_1 .. y_{T-1}``.
          return_weights: also return the attention weights, a dict of per-layer lists:
            "encoder_self" ``[B, N, S, S]``, "decoder_self" ``[B, N, T, T]``, "cross"
            ``[B, N, T, S]`` (float32; needs a kernel that returns weights).
          rngs: dropout (an ``nnx.Rngs`` with a ``dropout`` stream, or a key); None: off.
        """
        _check_tokens("source", source)
        _check_tokens("target_in", target_in)
        if source.shape[0] != target_in.shape[0]:
            raise ValueError(
                f"source [B, S] and target_in [B, T] must share B, got {source.shape} and "
                f"{target_in.shape}"
            )
        self._check_length("target_in length T", target_in.shape[1])
        rngs = _as_rngs(rngs)
        memory, encoder_weights = self._encode(source, return_weights, rngs)
        T = target_in.shape[1]
        x = self.embed(target_in, jnp.arange(T), rngs=rngs)
        hidden, weights, _ = self.decoder(
            x,
            memory=memory,
            memory_mask=source != self.config.pad_id,
            return_weights=return_weights,
            rngs=rngs,
        )
        logits = self._logits(hidden)
        if not return_weights:
            return logits
        return logits, {
            "encoder_self": encoder_weights,
            "decoder_self": weights["self"],
            "cross": weights["cross"],
        }

    def encode(self, source: Array, *, rngs: Rngs = None) -> dict[str, Array]:
        """Int ``source [B, S]`` -> ``{"memory": the encoder output [B, S, D], "source_mask":
        bool [B, S]}``, what every decoding step reads."""
        _check_tokens("source", source)
        memory, _ = self._encode(source, False, _as_rngs(rngs))
        return {"memory": memory, "source_mask": source != self.config.pad_id}

    def init_decode_state(
        self, memory: dict[str, Array], max_length: int, *, keep_weights: bool = False
    ) -> DecodeState:
        """Room for ``max_length`` target tokens after :meth:`encode`'s ``memory``; with
        ``keep_weights`` each layer's cross-attention of every decoded token is kept.

        With learned positions, more than ``config.max_length`` is refused, and the target
        positions past the longest training target are untrained: decode at most that many
        tokens (``experiments.tasks.translate`` decodes its ``data.max_length``, the longest
        pair it trains on). The module docstring says why a translation cannot slide."""
        return self._new_state(
            memory["memory"].shape[0],
            max_length,
            keep_weights,
            memory["memory"],
            memory["source_mask"],
        )

    def step(self, tokens: Array, state: DecodeState) -> tuple[Array, DecodeState]:
        """One decoding step (``zoo.decoding``): previous tokens ``[B]`` -> logits ``[B, V]``."""
        return self._step(tokens, state)

    def _encode(
        self, source: Array, return_weights: bool, rngs: nnx.Rngs | None
    ) -> tuple[Array, list[Array]]:
        self._check_length("source length S", source.shape[1])
        x = self.embed(source, jnp.arange(source.shape[1]), rngs=rngs)
        return self.encoder(
            x, mask=source != self.config.pad_id, return_weights=return_weights, rngs=rngs
        )


class TransformerLM(_DecodingModel):
    """A decoder-only language model: causal blocks without cross-attention (GPT)."""

    def __init__(self, config: TransformerConfig, *, kernel: Kernel | None = None, rngs: nnx.Rngs):
        """``kernel`` overrides ``config.kernel``; ``rngs`` initialize the parameters only."""
        super().__init__(config, cross=False, kernel=_resolve_kernel(config, kernel), rngs=rngs)

    def __call__(
        self, tokens: Array, *, return_weights: bool = False, rngs: Rngs = None
    ) -> Array | tuple[Array, dict[str, list[Array]]]:
        """Logits ``[B, T, V]`` of the token after each of int ``tokens [B, T]``.

        With ``return_weights`` also ``{"decoder_self": [per-layer [B, N, T, T]]}``; ``rngs``
        as in :meth:`Transformer.__call__`.
        """
        _check_tokens("tokens", tokens)
        self._check_length("tokens length T", tokens.shape[1])
        rngs = _as_rngs(rngs)
        x = self.embed(tokens, jnp.arange(tokens.shape[1]), rngs=rngs)
        hidden, weights, _ = self.decoder(x, return_weights=return_weights, rngs=rngs)
        logits = self._logits(hidden)
        return (logits, {"decoder_self": weights["self"]}) if return_weights else logits

    def encode(self, prompt: Array) -> Array:
        """A language model's memory is its prompt, int ``[B, P]`` (P >= 1), read by
        :meth:`init_decode_state`."""
        _check_tokens("prompt", prompt)
        if prompt.shape[1] < 1:
            raise ValueError(f"prompt [B, P] needs P >= 1 tokens, got shape {prompt.shape}")
        return prompt

    def init_decode_state(
        self, memory: Array, max_length: int, *, keep_weights: bool = False
    ) -> DecodeState:
        """The cache of ``max_length`` slots (prompt included) filled with all but the last
        token of the prompt ``memory [B, P]``; decoding starts from that last token
        (``bos_id=prompt[:, -1]``). ``keep_weights``: every layer's self-attention of each
        token fed, ``[B, N, M, M]``.

        ``max_length`` is the most positions the model is fed: at most the trained context
        with learned positions. To generate past it, decode through
        ``zoo.decoding.sliding_window(lambda p: model.init_decode_state(p, C), model.step,
        prompt, window=C)``, which calls this again whenever the window is full."""
        state = self.init_cache(memory.shape[0], max_length, keep_weights=keep_weights)
        if memory.shape[1] > 1:
            _, state = self.prefill(memory[:, :-1], state)
        return state

    def init_cache(
        self, batch_size: int, max_length: int, *, keep_weights: bool = False
    ) -> DecodeState:
        """An empty state with room for ``max_length`` tokens, prompt included."""
        return self._new_state(batch_size, max_length, keep_weights)

    def prefill(self, prompt: Array, state: DecodeState) -> tuple[Array, DecodeState]:
        """Feed a prompt ``[B, T]`` (all rows the same length): ``(logits [B, T, V], state)``.

        For ``zoo.decoding``, prefill all but the last prompt token and pass the last one as
        ``bos_id`` (an int array ``[B]``): the first step then predicts the continuation.
        """
        _check_tokens("prompt", prompt)
        _check_state_batch("prompt [B, T]", prompt.shape, state)
        M = state.caches[0].key.shape[1]
        if prompt.shape[1] > M:
            raise ValueError(f"prompt [B, T] = {prompt.shape} does not fit the cache of M={M}")
        return self._extend(prompt, state)

    def step(self, tokens: Array, state: DecodeState) -> tuple[Array, DecodeState]:
        """One decoding step (``zoo.decoding``): previous tokens ``[B]`` -> logits ``[B, V]``."""
        return self._step(tokens, state)


def _check_tokens(name: str, tokens: Any) -> None:
    if getattr(tokens, "ndim", None) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be int [B, length], got {getattr(tokens, 'dtype', type(tokens))} "
            f"{getattr(tokens, 'shape', '')}"
        )


def _check_state_batch(name: str, shape: tuple[int, ...], state: DecodeState) -> None:
    if shape[0] != state.position.shape[0]:
        raise ValueError(
            f"{name} = {shape} must share B with the decoding state, B={state.position.shape[0]}"
        )
