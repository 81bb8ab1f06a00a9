"""Masked softmax shared by every attention kernel.

Computed in float32 whatever the input dtype (as ``jax.nn.dot_product_attention`` does);
masked logits are replaced by a large *finite* negative number, so no ``-inf - -inf`` NaN can
appear, and a row whose every entry is masked returns all-zero weights (and zero gradients)
instead of a uniform distribution over padding.
"""

import jax
import jax.numpy as jnp

from zoo.shapes import Array

# Finite stand-in for -inf: far below any real logit, far above float32's lowest value so
# that adding a bias of either sign to it cannot overflow.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def masked_softmax(logits: Array, mask: Array | None = None, axis: int = -1) -> Array:
    """Softmax of ``logits`` over ``axis`` where ``mask`` (bool, True = attend) allows.

    Args:
      logits: scores of any float dtype and shape.
      mask: bool array broadcastable to ``logits``, or None for no mask.
      axis: the axis to normalise over (the key axis S).

    Returns:
      float32 weights of ``logits``' shape (after broadcasting against ``mask``). Each row
      sums to one, except a fully masked row, which is all zeros.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if mask is None:
        return jax.nn.softmax(logits, axis=axis)
    logits = jnp.where(mask, logits, MASK_VALUE)
    weights = jax.nn.softmax(logits, axis=axis)
    # A fully masked row would otherwise be uniform; zero it. Multiplying (not `where`)
    # keeps the gradient of that row exactly zero too.
    any_valid = jnp.any(mask, axis=axis, keepdims=True)
    return weights * any_valid.astype(weights.dtype)
