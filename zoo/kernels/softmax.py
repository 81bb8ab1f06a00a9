"""Masked softmax shared by the kernels that form the weights.

Computed in float32 (float64 for float64 logits) whatever the input dtype, as
``jax.nn.dot_product_attention`` does. Masked logits, and logits at or below
:data:`zoo.kernels.masks.MASK_VALUE` (a ``-inf`` bias), become that large finite negative
number, so no ``-inf - -inf`` NaN can appear; a row with nothing left to attend returns
all-zero weights (and zero gradients) instead of a uniform distribution over padding.
"""

import jax
import jax.numpy as jnp

from zoo.kernels.masks import MASK_VALUE
from zoo.shapes import Array


def masked_logits(logits: Array, mask: Array | None = None) -> Array:
    """``logits`` in float32 or wider, masked entries and ``-inf`` set to ``MASK_VALUE``."""
    logits = jnp.maximum(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), MASK_VALUE)
    return logits if mask is None else jnp.where(mask, logits, MASK_VALUE)


def masked_softmax(logits: Array, mask: Array | None = None, axis: int = -1) -> Array:
    """Softmax of ``logits`` over ``axis`` where ``mask`` (bool, True = attend) allows.

    Args:
      logits: scores of any float dtype and shape.
      mask: bool array broadcastable to ``logits`` (same rank), or None for no mask.
      axis: the axis to normalise over (the key axis S).

    Returns:
      float32 (float64 for float64 logits) weights of ``logits``' shape after broadcasting
      against ``mask``. Each row sums to one, except a row with nothing to attend (every
      entry masked or ``-inf``), which is all zeros.
    """
    logits = masked_logits(logits, mask)
    weights = jax.nn.softmax(logits, axis=axis)
    # Multiplying (not `where`) keeps the gradient of an empty row exactly zero too.
    live = jnp.max(logits, axis=axis, keepdims=True) > MASK_VALUE
    return weights * live.astype(weights.dtype)
