"""Multiplicative attention as a module: Luong, Pham & Manning 2015's ``dot`` and ``general``.

Luong et al. 2015 (arXiv:1508.04025), sec. 3.1, eq. (8)::

    dot      score(h_t, h̄_s) = h_t^T h̄_s
    general  score(h_t, h̄_s) = h_t^T W_a h̄_s

unscaled, then softmax over the source (eq. (7)) and the context ``sum_s a_t(s) h̄_s``. Both are
one-head scaled dot-product attention with scale 1 (``general`` after projecting the query by
``W_a``), so the module runs on any kernel of ``zoo.kernels.KERNELS`` by name: the reference,
blockwise, or whatever ``"auto"`` picks for the platform.

Shapes (``zoo.shapes``): query ``[B, T, D_q]``, keys and values ``[B, S, D_k]`` (the kernels
average what they compare: the values are the keys' width), weights ``[B, T, S]`` float32.
"""

from typing import Any

import jax.numpy as jnp
from flax import nnx

from zoo.kernels import KERNELS
from zoo.shapes import Array

__all__ = ["SCORES", "MultiplicativeAttention"]

SCORES = ("dot", "general")


class MultiplicativeAttention(nnx.Module):
    """Luong's score (``W_a [D_q, D_k]`` for ``general``) on a dot-product kernel by name."""

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        *,
        score: str = "general",
        kernel: str = "auto",
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Args:
        query_dim: D_q, the width of the target state ``h_t``.
        key_dim: D_k, the width of the source states ``h̄_s``; ``dot`` needs ``D_q = D_k``.
        score: ``"dot"`` or ``"general"``.
        kernel: a name of ``zoo.kernels.KERNELS``.
        dtype: the compute dtype every input and parameter is cast to.
        param_dtype: the dtype ``W_a`` is stored in.
        """
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {tuple(KERNELS)}, got {kernel!r}")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(
                f"the dot score compares equal widths, got query_dim={query_dim} and "
                f"key_dim={key_dim}; use score='general'"
            )
        self.score = score
        self.kernel = kernel
        self.dtype = dtype
        self.weight = (
            nnx.Param(
                nnx.initializers.lecun_normal()(rngs.params(), (query_dim, key_dim), param_dtype)
            )
            if score == "general"
            else None
        )

    def __call__(
        self,
        query: Array,
        keys: Array,
        *,
        mask: Array | None = None,
        return_weights: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Context ``[B, T, D_k]`` and, if asked, the weights ``[B, T, S]``.

        The values are the keys themselves, as in the paper. ``mask`` is bool ``[B, S]``
        (True = a real source position) or broadcastable to ``[B, T, S]``.
        """
        query, keys = query.astype(self.dtype), keys.astype(self.dtype)
        if self.weight is not None:
            query = query @ self.weight[...].astype(self.dtype)
        if mask is not None and mask.ndim == 2:
            mask = mask[:, None, :]
        heads = mask if mask is None else mask[:, None]  # [B, 1 head, T or 1, S]
        out = KERNELS[self.kernel](
            query[:, :, None, :],
            keys[:, :, None, :],
            keys[:, :, None, :],
            mask=heads,
            scale=1.0,  # Luong's scores are not scaled by 1 / sqrt(D)
            return_weights=return_weights,
        )
        if return_weights:
            context, weights = out
            return context[:, :, 0], weights[:, 0]
        return out[:, :, 0]
