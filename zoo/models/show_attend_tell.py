"""Show, Attend and Tell: image captioning with soft (deterministic) visual attention.

Xu, Ba, Kiros, Cho, Courville, Salakhutdinov, Zemel & Bengio 2015 (arXiv:1502.03044).
A CNN turns the image into ``L`` annotation vectors ``a_i`` of width ``D``, one per cell of a
``gh x gw`` grid (sec. 3.1.1); an LSTM decoder emits one word per step, each time attending
over the grid with ``e_ti = f_att(a_i, h_{t-1})``, ``alpha_t = softmax(e_t)`` (eq. (4)-(5)),
scaling the context by a gate ``beta_t = sigmoid(f_beta(h_{t-1}))`` (sec. 4.2.1) and reading
out through the deep output layer of eq. (7). Training adds the doubly stochastic penalty of
eq. (14), :func:`doubly_stochastic_penalty`, to the negative log-likelihood.

The encoder is trained from scratch: VGG-shaped (Simonyan & Zisserman 2014, the paper's
backbone) with one 3x3 convolution per stage, each followed by GroupNorm (Wu & He 2018),
which keeps no batch statistics: the model holds parameters only and a forward pass mutates
nothing. For real photographs the paper's choice is better: precompute pretrained features
(VGG conv5_4, 14 x 14 x 512, sec. 4.3; or a ResNet stage) into an array file, pass them as
annotations ``[B, L, D]`` wherever images are accepted, and set ``image_channels=None`` to
drop the CNN altogether.

Where the paper is silent we follow the authors' code (arctic-captions, ``capgen.py``): a
tanh inside the deep output, dropout on ``h_t`` and on that tanh layer, one tanh layer for
each initial-state MLP. We keep one hidden layer in ``f_att`` (``zoo.nn.AdditiveAttention``,
its kernel chosen by ``config.kernel``) where their COCO setting stacks two.

Decoding (``zoo.decoding``) goes through the zoo's model protocol: :meth:`ShowAttendTell.encode`
turns the images into annotations once, :meth:`ShowAttendTell.init_decode_state` makes the
LSTM's first state (with a buffer of each step's attention map when asked),
:meth:`ShowAttendTell.step` emits one word.

Mixed precision (``zoo.precision``): the CNN, embeddings, attention, gate, LSTM matmuls and
readout run in ``config.dtype`` over parameters in ``config.param_dtype``. What stays float32:
the LSTM's memory and hidden state (they carry the whole caption), GroupNorm's statistics and
normalization (flax casts only its result), the mean annotation behind the initial state, the
attention softmax (the kernel's; the weights for the pictures and eq. (14) are float32); the
logits come in ``config.dtype`` and the task casts them to float32 for the loss.

Shapes (``zoo.shapes``): images ``[B, H, W, C]`` float; annotations ``[B, L, D]`` with
``L = gh * gw``, cell ``(row, col)`` at index ``row * gw + col`` (so ``weights.reshape(...,
gh, gw)`` is the attention map); captions ``[B, T]`` int; attention weights ``[B, T, L]``.
"""

import dataclasses
import itertools
import math
from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
from flax import nnx

from zoo import precision
from zoo.kernels import ADDITIVE_KERNELS
from zoo.nn import AdditiveAttention
from zoo.shapes import Array, PRNGKey

__all__ = [
    "ShowAttendTell",
    "ShowAttendTellConfig",
    "doubly_stochastic_penalty",
    "with_coordinates",
]

# The LSTM's memory and hidden state (and the gate kept for analysis), whatever the compute dtype.
_STATE_DTYPE = jnp.float32


@dataclasses.dataclass(frozen=True)
class ShowAttendTellConfig:
    """Sizes. The decoder defaults are the paper's COCO model; the paper states few sizes,
    so those it omits come from the authors' code (arctic-captions, ``evaluate_coco.py``)."""

    vocab_size: int = 10_000  # K: the 10,000 most frequent words (sec. 5.1)
    embed_dim: int = 512  # m: word embedding width, also the deep output width (eq. (7))
    hidden_dim: int = 1800  # n: LSTM width (arctic-captions' COCO setting)
    annotation_dim: int = 512  # D: width of each a_i; VGG conv5_4 has 512 channels (sec. 4.3)
    attention_dim: int = 512  # A: hidden width of f_att, eq. (4); arctic-captions uses D
    # C of the input images; None: no CNN, the model takes precomputed annotations only.
    image_channels: int | None = 3
    # Append each pixel's row and column in [-1, 1] to the image as two more channels before
    # the CNN (CoordConv, Liu et al. 2018; :func:`with_coordinates`); off in the paper.
    coordinates: bool = False
    # Widths of the conv-GroupNorm-ReLU-maxpool stages, each halving H and W; a last 3x3
    # conv-GroupNorm-ReLU maps to D. Four stages give VGG's stride 16: 224 px -> 14 x 14.
    conv_channels: tuple[int, ...] = (64, 128, 256, 512)
    # Dropout on h_t and on the deep output (arctic-captions, p = 0.5); only applied when
    # the forward pass is given rngs.
    dropout_rate: float = 0.5
    # f_att's kernel, a name of zoo.kernels.ADDITIVE_KERNELS: "auto", "additive" (the
    # reference, which alone returns the weights that eq. (14) and the pictures need),
    # "blockwise_additive", "pallas_additive".
    kernel: str = "auto"
    pad_id: int = 0  # padding token of the captions
    # Compute dtype of activations, matmuls and logits: "float32" | "bfloat16" | "float16", or
    # "auto" (float32 on CPU, bfloat16 on GPU/TPU, decided when the model is built).
    dtype: str = "auto"
    # Dtype the parameters are stored and updated in; float32 under bfloat16 compute.
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_dim", "hidden_dim", "annotation_dim", "attention_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kernel not in ADDITIVE_KERNELS:
            raise ValueError(
                f"kernel must be one of {tuple(ADDITIVE_KERNELS)}, got {self.kernel!r}"
            )
        precision.check(self.dtype, self.param_dtype)


# Keys of the decoder state, every leaf batch-first (the zoo.decoding contract).
State = dict[str, Array]


class ShowAttendTell(nnx.Module):
    """CNN encoder, soft attention over its grid, LSTM decoder with the gate and deep output."""

    def __init__(self, config: ShowAttendTellConfig, *, rngs: nnx.Rngs):
        if not 0.0 <= config.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {config.dropout_rate}")
        self.config = config
        c = config
        m, n, d, a = c.embed_dim, c.hidden_dim, c.annotation_dim, c.attention_dim
        dtype, param_dtype = precision.resolve(c.dtype, c.param_dtype)
        self.dtype = dtype
        kw: dict[str, Any] = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        if c.image_channels is not None:
            widths = [c.image_channels + 2 * c.coordinates, *c.conv_channels, d]
            self.convs = nnx.List(
                [
                    # The norm's bias makes a conv bias redundant.
                    nnx.Conv(w_in, w_out, (3, 3), use_bias=False, **kw)
                    for w_in, w_out in itertools.pairwise(widths)
                ]
            )
            self.norms = nnx.List(
                # 32 groups (Wu & He 2018) when the width allows, else the largest divisor.
                [nnx.GroupNorm(w, num_groups=math.gcd(32, w), **kw) for w in widths[1:]]
            )
        self.embed = nnx.Embed(config.vocab_size, m, **kw)
        # f_init,c and f_init,h: c_0, h_0 from the mean annotation (sec. 3.1.2), one tanh
        # layer each as in arctic-captions' ff_memory / ff_state.
        self.init_memory = nnx.Linear(d, n, **kw)
        self.init_hidden = nnx.Linear(d, n, **kw)
        # f_att of eq. (4) as the additive kernel: U_a (+ bias) on the annotations once per
        # image, W_a on h_{t-1}, v_a (Bahdanau et al. 2014, eq. (6)).
        self.attention = AdditiveAttention(n, d, a, key_bias=True, kernel=c.kernel, **kw)
        self.selector = nnx.Linear(n, 1, **kw)  # f_beta, sec. 4.2.1
        # The LSTM reads [E y_{t-1}; z_t] (eq. (1)): one input matrix on the concatenation.
        self.decoder = nnx.LSTMCell(m + d, n, **kw)
        # Deep output, eq. (7): L_o(E y_{t-1} + L_h h_t + L_z z_t).
        self.out_hidden = nnx.Linear(n, m, **kw)  # L_h
        self.out_context = nnx.Linear(d, m, use_bias=False, **kw)  # L_z
        self.readout = nnx.Linear(m, config.vocab_size, **kw)  # L_o

    # The kernel that returns the attention weights (zoo.models.protocol).
    weights_kernel = "additive"

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(gh, gw)`` of the CNN's annotation grid for an ``height x width`` image."""
        if self.config.image_channels is None:
            raise ValueError("this model has no CNN (image_channels=None), hence no grid")
        stride = 2 ** len(self.config.conv_channels)
        if height % stride or width % stride or not (height > 0 and width > 0):
            raise ValueError(
                f"the image's height and width must be positive multiples of {stride} (one 2x2 "
                f"pool per conv stage of conv_channels), got {height} x {width}"
            )
        return height // stride, width // stride

    def annotate(self, images: Array) -> Array:
        """Images ``[B, H, W, C]`` -> annotations ``[B, L, D]`` (sec. 3.1.1), row-major cells."""
        c = self.config
        if c.image_channels is None:
            raise ValueError(
                "this model has no CNN (image_channels=None): pass annotations [B, L, D]"
            )
        images = _check_float("images", images)
        stride = 2 ** len(c.conv_channels)
        if (
            images.ndim != 4
            or images.shape[-1] != c.image_channels
            or images.shape[1] % stride
            or images.shape[2] % stride
            or 0 in images.shape[1:3]
        ):
            raise ValueError(
                f"images must be [B, H, W, C] with C = {c.image_channels} and H, W positive "
                f"multiples of {stride} (one 2x2 pool per conv stage), got shape {images.shape}"
            )
        x = (with_coordinates(images) if c.coordinates else images).astype(self.dtype)
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = jax.nn.relu(norm(conv(x)))
            if i < last:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        B, gh, gw, D = x.shape
        return x.reshape(B, gh * gw, D)

    def encode(self, images: Array) -> State:
        """Images ``[B, H, W, C]`` (or annotations ``[B, L, D]``) -> what every decoding step
        reads: the annotations and their attention keys ``U_a a_i + b``, once per image."""
        annotations = self._annotations(images)
        return {"annotations": annotations, "keys": self.attention.project_keys(annotations)}

    def init_decode_state(
        self, memory: State, max_length: int, *, keep_weights: bool = False
    ) -> State:
        """The LSTM's first state from the mean annotation (sec. 3.1.2), room for
        ``max_length`` steps; with ``keep_weights`` also ``"weights" [B, max_length, L]``,
        each step's attention written at its position (beams carry it along)."""
        annotations = memory["annotations"]
        mean = annotations.mean(axis=1, dtype=jnp.float32)  # (1/L) sum_i a_i, sec. 3.1.2
        B, L, _ = annotations.shape
        state = {
            **memory,
            "memory": jnp.tanh(self.init_memory(mean)).astype(_STATE_DTYPE),  # c, [B, n]
            "hidden": jnp.tanh(self.init_hidden(mean)).astype(_STATE_DTYPE),  # h, [B, n]
            "gate": jnp.zeros((B,), _STATE_DTYPE),  # beta of the latest step, for analysis
            "position": jnp.zeros((B,), jnp.int32),
        }
        if keep_weights:
            state["weights"] = jnp.zeros((B, max_length, L), jnp.float32)
        return state

    def step(
        self, tokens: Array, state: State, *, rngs: nnx.Rngs | PRNGKey | None = None
    ) -> tuple[Array, State]:
        """One word: tokens ``[B]`` -> (logits ``[B, V]``, state).

        ``rngs`` (an ``nnx.Rngs``, its ``dropout`` stream, or a key) turns dropout on; without
        it the step is deterministic.
        """
        if getattr(tokens, "ndim", None) != 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"tokens must be int [B], got {getattr(tokens, 'dtype', type(tokens))} "
                f"{getattr(tokens, 'shape', '')}"
            )
        key = rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
        logits, state, weights = self._step(tokens, state, key, "weights" in state)
        if "weights" in state:
            rows, position = jnp.arange(tokens.shape[0]), state["position"] - 1
            state["weights"] = state["weights"].at[rows, position].set(weights, mode="drop")
        return logits, state

    def _step(
        self, previous: Array, state: State, rng: PRNGKey | None, return_weights: bool
    ) -> tuple[Array, State, Array]:
        hidden = state["hidden"]
        # Eq. (4)-(5): e_ti = f_att(a_i, h_{t-1}), alpha_t = softmax_i(e_ti).
        out = self.attention(
            hidden[:, None], state["keys"], state["annotations"], return_weights=return_weights
        )
        if isinstance(out, tuple):
            context, weights = out[0], out[1][:, 0]
        else:
            context, weights = out, jnp.zeros(state["keys"].shape[:2], jnp.float32)
        # Sec. 4.2.1: z_t = beta_t * sum_i alpha_ti a_i, beta_t = sigmoid(f_beta(h_{t-1})).
        gate = jax.nn.sigmoid(self.selector(hidden))  # [B, 1]
        context = gate * context[:, 0]
        embedded = self.embed(previous)
        (memory, hidden), _ = self.decoder(
            (state["memory"], hidden), jnp.concatenate([embedded, context], axis=-1)
        )
        # Eq. (7), with the tanh and the two dropouts of arctic-captions' readout.
        hidden_key, out_key = (None, None) if rng is None else jax.random.split(rng)
        out = self.out_hidden(self._dropout(hidden, hidden_key))
        out = jnp.tanh(embedded + out + self.out_context(context))
        logits = self.readout(self._dropout(out, out_key))
        new_state = {
            **state,
            "memory": memory,
            "hidden": hidden,
            "gate": gate[:, 0].astype(_STATE_DTYPE),
            "position": state["position"] + 1,
        }
        return logits, new_state, weights

    @overload
    def __call__(
        self,
        images: Array,
        captions_in: Array,
        *,
        return_weights: Literal[False] = False,
        rngs: nnx.Rngs | PRNGKey | None = None,
    ) -> Array: ...
    @overload
    def __call__(
        self,
        images: Array,
        captions_in: Array,
        *,
        return_weights: Literal[True],
        rngs: nnx.Rngs | PRNGKey | None = None,
    ) -> tuple[Array, Array]: ...
    def __call__(
        self,
        images: Array,
        captions_in: Array,
        *,
        return_weights: bool = False,
        rngs: nnx.Rngs | PRNGKey | None = None,
    ) -> Array | tuple[Array, Array]:
        """Teacher forcing: images (or annotations), captions_in ``[B, T]`` (BOS y_1 .. y_{T-1}).

        Args:
          images: ``[B, H, W, C]`` float images, or precomputed annotations ``[B, L, D]``.
          captions_in: int ``[B, T]``, the caption shifted right behind the start token.
          return_weights: also return the attention weights ``[B, T, L]`` (Figures 2-3).
          rngs: ``nnx.Rngs`` (its ``dropout`` stream is drawn once) or a key: turns dropout
            on for training. The model stores no RNG state.

        Returns:
          Logits ``[B, T, V]`` for y_1 .. y_T and, if asked, the weights ``[B, T, L]``.
        """
        if getattr(captions_in, "ndim", None) != 2 or not jnp.issubdtype(
            captions_in.dtype, jnp.integer
        ):
            raise ValueError(
                f"captions_in must be int [B, T], got "
                f"{getattr(captions_in, 'dtype', type(captions_in))} "
                f"{getattr(captions_in, 'shape', '')}"
            )
        memory = self.encode(images)
        if memory["annotations"].shape[0] != captions_in.shape[0]:
            raise ValueError(
                f"images [B, ...] and captions_in [B, T] must share B, got {jnp.shape(images)} and "
                f"{captions_in.shape}"
            )
        state = self.init_decode_state(memory, 0)
        T = captions_in.shape[1]
        key = rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
        keys = None if key is None or self.config.dropout_rate == 0 else jax.random.split(key, T)

        def body(state: State, xs: tuple[Array, Any]) -> tuple[State, tuple[Array, Array]]:
            previous, key = xs
            logits, state, weights = self._step(previous, state, key, return_weights)
            return state, (logits, weights)

        _, (logits, weights) = jax.lax.scan(body, state, (captions_in.T, keys))
        logits, weights = jnp.swapaxes(logits, 0, 1), jnp.swapaxes(weights, 0, 1)
        return (logits, weights) if return_weights else logits

    def _annotations(self, images: Array) -> Array:
        """Images through the CNN, or annotations checked and passed through."""
        images = _check_float("images", images)
        if images.ndim == 4 and self.config.image_channels is not None:
            return self.annotate(images)
        D = self.config.annotation_dim
        if images.ndim != 3 or images.shape[-1] != D or 0 in images.shape[1:]:
            channels = self.config.image_channels
            expected = f"annotations [B, L, D] with D = {D}"
            if channels is not None:
                expected = f"images [B, H, W, C] with C = {channels}, or {expected}"
            raise ValueError(f"images must be {expected}, got shape {images.shape}")
        return images.astype(self.dtype)

    def _dropout(self, x: Array, key: PRNGKey | None) -> Array:
        rate = self.config.dropout_rate
        if key is None or rate == 0:
            return x
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def doubly_stochastic_penalty(
    weights: Array, caption_mask: Array, *, strength: float = 1.0
) -> Array:
    """``lambda * sum_i (1 - sum_t alpha_ti)^2`` per caption, eq. (14): float32 ``[B]``.

    Pushes every grid cell to receive, over the caption, a total attention of about one, so
    the model looks at every part of the image at some point (sec. 4.2.1).

    Args:
      weights: ``[B, T, L]``, the attention weights of a teacher-forced pass.
      caption_mask: bool or 0/1 ``[B, T]``, true where step t predicts a real token (end
        token included); padded steps add no attention, and a caption with no real step (a
        row of padding) no penalty.
      strength: lambda; 1 in arctic-captions' COCO setting (``alpha_c``), 0 switches it off.
    """
    weights, caption_mask = jnp.asarray(weights), jnp.asarray(caption_mask)
    if weights.ndim != 3:
        raise ValueError(f"weights must be [B, T, L], got shape {weights.shape}")
    if caption_mask.shape != weights.shape[:2]:
        B, T, _ = weights.shape
        raise ValueError(
            f"caption_mask must be [B, T] = [{B}, {T}] like weights, got shape {caption_mask.shape}"
        )
    total = jnp.einsum("BTL,BT->BL", weights.astype(jnp.float32), caption_mask.astype(jnp.float32))
    penalty = strength * jnp.sum((1.0 - total) ** 2, axis=-1)
    return jnp.where(caption_mask.any(axis=-1), penalty, 0.0)


def with_coordinates(images: Array) -> Array:
    """Images ``[B, H, W, C]`` -> ``[B, H, W, C + 2]``, the last two channels each pixel's row
    and column scaled to [-1, 1] (Liu et al. 2018, "An intriguing failing of convolutional
    neural networks and the CoordConv solution"): the input of ``config.coordinates``.

    A small CNN trained from scratch hardly knows where its cells are (only zero padding at
    the borders tells it); captions that name objects in order, left to right, need it to.
    """
    B, H, W, _ = images.shape
    rows = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, H)[:, None], (H, W))
    cols = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, W)[None, :], (H, W))
    grid = jnp.broadcast_to(jnp.stack([rows, cols], axis=-1), (B, H, W, 2))
    return jnp.concatenate([images, grid.astype(images.dtype)], axis=-1)


def _check_float(name: str, x: Any) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    return x
