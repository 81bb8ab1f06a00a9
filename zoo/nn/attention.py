"""Multi-head attention as a module: the projections around any attention kernel.

Vaswani et al. 2017 (arXiv:1706.03762), sec. 3.2.2::

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O
    head_i = Attention(Q W^Q_i, K W^K_i, V W^V_i)

The module owns ``W^Q, W^K, W^V, W^O``; ``Attention`` is a kernel passed to the constructor
(any function with the call of :func:`zoo.kernels.dot_product_attention`), so one module runs
on the reference kernel, the blockwise one or a sharded one. Options: fewer key/value heads
than query heads (GQA, Ainslie et al. 2023; MQA when ``K = 1``), rotary positions on queries
and keys (Su et al. 2021), attention dropout with an explicit key, the per-head weights on
request, and a key/value cache for incremental decoding.

Shapes (``zoo.shapes``): inputs ``[B, T, D]``, context ``[B, S, D]``, per-head queries
``[B, T, N, H]``, keys and values ``[B, S, K, H]``, weights ``[B, N, T, S]``; the cache holds
``M`` key/value slots.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from zoo.kernels.dot_product import dot_product_attention
from zoo.kernels.positional import apply_rotary
from zoo.shapes import Array

__all__ = ["KVCache", "MultiHeadAttention"]

# Glorot & Bengio 2010 uniform, tensor2tensor's default for the Transformer.
_GLOROT = nnx.initializers.glorot_uniform()

# The call every kernel shares: (query, key, value, bias, mask, *, is_causal, dropout_rate,
# dropout_rng, deterministic, return_weights, ...) -> out or (out, weights).
Kernel = Callable[..., Any]


class KVCache(NamedTuple):
    """Keys and values of the tokens seen so far, one attention layer's decoding state.

    Every leaf has the batch axis first, as ``zoo.decoding`` requires of a state. Slots at and
    after ``length`` are unused (zeros); they are masked out, never attended.
    """

    key: Array  # [B, M, K, H], rotated already when the module uses rotary positions
    value: Array  # [B, M, K, H]
    length: Array  # int32 [B]: tokens written so far = position of the next token


class MultiHeadAttention(nnx.Module):
    """Projections to ``N`` query and ``K`` key/value heads, a kernel, an output projection."""

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        use_bias: bool = False,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        dropout_rate: float = 0.0,
        kernel: Kernel = dot_product_attention,
        kernel_init: nnx.Initializer = _GLOROT,
        out_init: nnx.Initializer | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Args:
        model_dim: D, the width of inputs, context and output.
        num_heads: N query heads; the head width is ``H = D // N``.
        num_kv_heads: K key/value heads (K divides N); None means N.
        use_bias: biases in the four projections (GPT-2 has them; the paper's W's are plain).
        rotary: rotate queries and keys by their positions (self-attention only).
        rotary_base: the RoPE base, 10,000 in Su et al. 2021.
        dropout_rate: dropout on the attention weights, active only when rngs are passed.
        kernel: the attention function.
        kernel_init: initializer of the query/key/value projection matrices.
        out_init: initializer of the output projection; ``kernel_init`` if None.
        dtype: of the projections' computation and outputs, and of the cache; None: inferred
          from inputs and parameters. The kernel's softmax is float32 whatever it is.
        param_dtype: of the projection matrices and biases.
        rngs: parameter initialization.
        """
        K = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in (
            ("model_dim", model_dim),
            ("num_heads", num_heads),
            ("num_kv_heads", K),
        ):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if model_dim % num_heads:
            raise ValueError(f"num_heads N={num_heads} must divide model_dim D={model_dim}")
        if num_heads % K:
            raise ValueError(f"num_kv_heads K={K} must divide num_heads N={num_heads}")
        H = model_dim // num_heads
        if rotary and H % 2:
            raise ValueError(f"rotary positions need an even head dim, got H = D / N = {H}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        self.model_dim, self.num_heads, self.num_kv_heads, self.head_dim = (
            model_dim,
            num_heads,
            K,
            H,
        )
        self.rotary, self.rotary_base = rotary, rotary_base
        self.dropout_rate = dropout_rate
        self.kernel = kernel
        self.dtype = dtype

        def linear(d_in: int, d_out: int, init: nnx.Initializer) -> nnx.Linear:
            return nnx.Linear(
                d_in,
                d_out,
                use_bias=use_bias,
                kernel_init=init,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )

        self.query = linear(model_dim, num_heads * H, kernel_init)  # W^Q
        self.key = linear(model_dim, K * H, kernel_init)  # W^K
        self.value = linear(model_dim, K * H, kernel_init)  # W^V
        self.out = linear(num_heads * H, model_dim, out_init or kernel_init)  # W^O

    def __call__(
        self,
        inputs: Array,
        context: Array | None = None,
        *,
        mask: Array | None = None,
        is_causal: bool = False,
        positions: Array | None = None,
        return_weights: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Array, Array | None]:
        """Attend from ``inputs`` to ``context`` (to ``inputs`` itself when None).

        Args:
          inputs: queries' source ``[B, T, D]``.
          context: keys' and values' source ``[B, S, D]``; None for self-attention.
          mask: bool, True = attend, broadcastable to ``[B, N, T, S]`` (e.g. padding
            ``[B, 1, 1, S]``).
          is_causal: query ``t`` attends keys ``s <= t`` only.
          positions: int ``[T]`` or ``[B, T]`` for rotary positions; ``arange(T)`` if None.
          return_weights: also return the weights (the kernel must be able to).
          rngs: its ``dropout`` stream drives attention dropout; None = deterministic.

        Returns:
          ``(out [B, T, D], weights float32 [B, N, T, S] or None)``.
        """
        _check_inputs("inputs", inputs, self.model_dim)
        if context is None:
            context = inputs
        else:
            _check_inputs("context", context, self.model_dim)
            if context.shape[0] != inputs.shape[0]:
                raise ValueError(
                    f"context [B, S, D] must share B with inputs [B, T, D], got "
                    f"{context.shape} and {inputs.shape}"
                )
            if self.rotary:
                raise ValueError("rotary positions are for self-attention: pass context=None")
        query, key, value = self._project(inputs, context)
        if self.rotary:
            positions = jnp.arange(inputs.shape[1]) if positions is None else positions
            query = apply_rotary(query, positions, base=self.rotary_base)
            key = apply_rotary(key, positions, base=self.rotary_base)
        return self._attend(query, key, value, mask, is_causal, return_weights, rngs)

    def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> KVCache:
        """An empty cache of ``max_length`` (M) slots for ``batch_size`` (B) rows, in ``dtype``
        (None: the module's compute dtype, float32 if it has none)."""
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        shape = (batch_size, max_length, self.num_kv_heads, self.head_dim)
        if dtype is None:
            dtype = jnp.float32 if self.dtype is None else self.dtype
        return KVCache(
            key=jnp.zeros(shape, dtype),
            value=jnp.zeros(shape, dtype),
            length=jnp.zeros((batch_size,), jnp.int32),
        )

    def extend(
        self,
        inputs: Array,
        cache: KVCache,
        *,
        return_weights: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Array, Array | None, KVCache]:
        """Causal self-attention of ``T`` new tokens over the cache and themselves.

        Row ``b``'s new tokens take positions ``cache.length[b] + t``; their keys and values
        are written into those slots, and query ``t`` attends every slot up to its own. With
        an empty cache this is ``self(inputs, is_causal=True)`` (prefill); with ``T = 1`` it
        is one decoding step. The caller keeps ``length + T <= M``: under ``jit`` an overflow
        cannot raise, and the write would be clamped to the last slots.

        Args:
          inputs: the new tokens ``[B, T, D]``.
          cache: from :meth:`init_cache` or a previous call, ``[B, M, K, H]``.
          return_weights, rngs: as in ``__call__``.

        Returns:
          ``(out [B, T, D], weights float32 [B, N, T, M] or None, updated cache)``.
        """
        _check_inputs("inputs", inputs, self.model_dim)
        B, T, _ = inputs.shape
        expected = (B, cache.key.shape[1], self.num_kv_heads, self.head_dim)
        if cache.key.shape != expected or cache.value.shape != expected:
            raise ValueError(
                f"cache key and value must be [B, M, K, H] = [{B}, M, {self.num_kv_heads}, "
                f"{self.head_dim}] for inputs {inputs.shape}, got {cache.key.shape} and "
                f"{cache.value.shape}"
            )
        M = cache.key.shape[1]
        if T > M:
            raise ValueError(f"inputs [B, T, D] = {inputs.shape} do not fit a cache of M={M} slots")
        positions = cache.length[:, None] + jnp.arange(T, dtype=jnp.int32)  # [B, T]
        query, key, value = self._project(inputs, inputs)
        if self.rotary:
            query = apply_rotary(query, positions, base=self.rotary_base)
            key = apply_rotary(key, positions, base=self.rotary_base)

        def write(slots: Array, new: Array, start: Array) -> Array:  # one row: [M, K, H]
            return lax.dynamic_update_slice_in_dim(slots, new.astype(slots.dtype), start, axis=0)

        keys = jax.vmap(write)(cache.key, key, cache.length)
        values = jax.vmap(write)(cache.value, value, cache.length)
        # Slot m holds the token at position m: query t sees slots m <= its position.
        mask = jnp.arange(M)[None, None, None, :] <= positions[:, None, :, None]  # [B, 1, T, M]
        out, weights = self._attend(
            query,
            keys.astype(query.dtype),
            values.astype(query.dtype),
            mask,
            False,
            return_weights,
            rngs,
        )
        return out, weights, KVCache(keys, values, cache.length + T)

    def _project(self, inputs: Array, context: Array) -> tuple[Array, Array, Array]:
        B, T, _ = inputs.shape
        S = context.shape[1]
        N, K, H = self.num_heads, self.num_kv_heads, self.head_dim
        query = self.query(inputs).reshape(B, T, N, H)
        key = self.key(context).reshape(B, S, K, H)
        value = self.value(context).reshape(B, S, K, H)
        return query, key, value

    def _attend(
        self,
        query: Array,
        key: Array,
        value: Array,
        mask: Array | None,
        is_causal: bool,
        return_weights: bool,
        rngs: nnx.Rngs | None,
    ) -> tuple[Array, Array | None]:
        dropout_rng = rngs.dropout() if rngs is not None and self.dropout_rate > 0.0 else None
        result = self.kernel(
            query,
            key,
            value,
            mask=mask,
            is_causal=is_causal,
            dropout_rate=self.dropout_rate,
            dropout_rng=dropout_rng,
            deterministic=dropout_rng is None,
            return_weights=return_weights,
        )
        out, weights = result if return_weights else (result, None)
        B, T = query.shape[:2]
        return self.out(out.reshape(B, T, self.num_heads * self.head_dim)), weights


def _check_inputs(name: str, x: Any, D: int) -> None:
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 3 or shape[-1] != D:
        raise ValueError(f"{name} must be [B, length, D] with D={D}, got shape {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
