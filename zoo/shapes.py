"""The shape alphabet used in every docstring, einsum string and annotation.

One letter per axis, the same letters everywhere (after ``jax.nn.dot_product_attention``)::

    B  batch size
    T  query (target) length
    S  key/value (source) length
    N  number of query heads
    K  number of key/value heads (K divides N)
    G  query heads per key/value head, G = N // K
    H  head dimension (per-head width of queries, keys and values)
    D  model width (embedding / hidden size)
    A  width of the additive-attention hidden layer (Bahdanau et al. 2014, eq. (6))
    V  vocabulary size
    L  number of annotation vectors of an image grid (Xu et al. 2015, sec. 3.1.1)

Arrays in the kernels are laid out ``[B, T, N, H]`` for queries and ``[B, S, K, H]`` for
keys and values; attention weights, masks and biases are ``[B, N, T, S]``.
"""

from typing import TypeAlias

import jax
from jaxtyping import Array, Bool, Float, Int

__all__ = ["Array", "Bool", "Float", "Int", "PRNGKey"]

# A `jax.random.key` (new-style typed key) or a legacy uint32[2] key.
PRNGKey: TypeAlias = jax.Array
