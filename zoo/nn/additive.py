"""Additive attention as a module: Bahdanau et al. 2014's alignment model with its parameters.

Eq. (6) of Bahdanau, Cho & Bengio 2014 (arXiv:1409.0473), appendix A.1.2::

    e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j),   alpha_ij = softmax_j(e_ij)

The module owns ``W_a, U_a, v_a`` (and optionally a bias after ``U_a``, as Show, Attend and
Tell's ``f_att`` has); the kernel is chosen by name from ``zoo.kernels.ADDITIVE_KERNELS``, so
the same parameters run on the reference, the blockwise or the Pallas kernel. ``U_a h_j``
does not depend on the decoding step: :meth:`project_keys` computes it once per source, then
:meth:`__call__` runs at every step.

Shapes (``zoo.shapes``): query ``[B, T, D_q]``, keys ``[B, S, D_k]``, projected keys ``[B, S,
A]``, values ``[B, S, D_v]``, weights ``[B, T, S]`` float32.
"""

from typing import Any

import jax.numpy as jnp
from flax import nnx

from zoo.kernels import ADDITIVE_KERNELS, project_keys
from zoo.shapes import Array

__all__ = ["AdditiveAttention"]


class AdditiveAttention(nnx.Module):
    """``W_a [D_q, A]``, ``U_a [D_k, A]``, ``v_a [A]`` and an additive kernel by name."""

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        attention_dim: int,
        *,
        key_bias: bool = False,
        kernel: str = "auto",
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Args:
        query_dim: D_q, the width of the decoder state ``s_{i-1}``.
        key_dim: D_k, the width of the annotations ``h_j``.
        attention_dim: A, the hidden width of the alignment MLP (the paper's n').
        key_bias: a bias after ``U_a`` (not in Bahdanau et al.; Xu et al.'s code has one).
        kernel: a name of ``zoo.kernels.ADDITIVE_KERNELS``.
        dtype: the compute dtype every input and parameter is cast to (the kernels want one).
        param_dtype: the dtype the parameters are stored in.
        """
        if kernel not in ADDITIVE_KERNELS:
            raise ValueError(f"kernel must be one of {tuple(ADDITIVE_KERNELS)}, got {kernel!r}")
        self.kernel = kernel
        self.dtype = dtype
        normal = nnx.initializers.lecun_normal()
        # Drawn in this order (U_a, bias, W_a, v_a): the models' initial values depend on it.
        self.key_proj = nnx.Param(normal(rngs.params(), (key_dim, attention_dim), param_dtype))
        self.key_bias = nnx.Param(jnp.zeros((attention_dim,), param_dtype)) if key_bias else None
        self.query_proj = nnx.Param(normal(rngs.params(), (query_dim, attention_dim), param_dtype))
        self.score = nnx.Param(
            nnx.initializers.normal(0.01)(rngs.params(), (attention_dim,), param_dtype)
        )

    def project_keys(self, keys: Array) -> Array:
        """``U_a h_j (+ bias)``: keys ``[B, S, D_k]`` -> ``[B, S, A]``, once per source."""
        bias = None if self.key_bias is None else self.key_bias[...].astype(self.dtype)
        return project_keys(keys.astype(self.dtype), self.key_proj[...].astype(self.dtype), bias)

    def __call__(
        self,
        query: Array,
        projected_keys: Array,
        values: Array,
        *,
        mask: Array | None = None,
        return_weights: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Context ``[B, T, D_v]`` (eq. (5)) and, if asked, the weights ``[B, T, S]``.

        ``mask`` is bool, broadcastable to ``[B, T, S]``, True = attend. Only the reference
        kernel forms the weights: ``return_weights`` with another one is an error.
        """
        kernel = ADDITIVE_KERNELS[self.kernel]
        if return_weights and self.kernel not in ("auto", "additive"):
            raise ValueError(
                f"kernel {self.kernel!r} never forms the attention weights; build the model "
                "with kernel='additive' (or 'auto') to return them"
            )
        options = {"return_weights": True} if return_weights else {}
        return kernel(
            query.astype(self.dtype),
            projected_keys,
            values.astype(self.dtype),
            w_query=self.query_proj[...].astype(self.dtype),
            v=self.score[...].astype(self.dtype),
            mask=mask,
            **options,
        )
