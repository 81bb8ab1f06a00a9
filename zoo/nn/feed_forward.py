"""The position-wise feed-forward sublayer, Vaswani et al. 2017 (arXiv:1706.03762), eq. (2).

``FFN(x) = act(x W_1 + b_1) W_2 + b_2`` applied to every position alike, with ``act = ReLU``
in the paper and GELU in GPT-2. Shapes (``zoo.shapes``): ``[..., D] -> [..., D]`` through an
inner width ``F`` (the paper's ``d_ff``).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.shapes import Array

__all__ = ["FeedForward"]

# Glorot & Bengio 2010 uniform, tensor2tensor's default for the Transformer.
_GLOROT = nnx.initializers.glorot_uniform()


class FeedForward(nnx.Module):
    """Two linear maps with a nonlinearity between them: ``D -> F -> D``."""

    def __init__(
        self,
        model_dim: int,
        hidden_dim: int,
        *,
        activation: Callable[[Array], Array] = jax.nn.relu,
        use_bias: bool = True,
        kernel_init: nnx.Initializer = _GLOROT,
        out_init: nnx.Initializer | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Args:
        model_dim: D, input and output width.
        hidden_dim: F, the inner width (``d_ff``, 4 D in the paper and in GPT-2).
        activation: the nonlinearity between the two maps.
        use_bias: the biases ``b_1, b_2`` of eq. (2).
        kernel_init: initializer of ``W_1``.
        out_init: initializer of ``W_2``; ``kernel_init`` if None.
        dtype: of the computation and the output; None: inferred from inputs and parameters.
        param_dtype: of ``W_1, b_1, W_2, b_2``.
        rngs: parameter initialization.
        """
        self.activation = activation

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

        self.hidden = linear(model_dim, hidden_dim, kernel_init)  # W_1, b_1
        self.output = linear(hidden_dim, model_dim, out_init or kernel_init)  # W_2, b_2

    def __call__(self, x: Array) -> Array:
        """``x [..., D] -> [..., D]``."""
        return self.output(self.activation(self.hidden(x)))
