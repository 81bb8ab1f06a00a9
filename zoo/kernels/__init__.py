"""Pure-function attention kernels: arrays in, arrays out; jit, vmap, grad and shard safe.

``KERNELS`` maps a name to a kernel with the call of :func:`dot_product_attention` (which
is also ``jax.nn.dot_product_attention``'s): what models and configs look up by name.
``"auto"`` is :func:`dot_product_attention` itself, which runs each call on the fastest
kernel that supports it (:func:`explain` says which).
"""

import functools
from collections.abc import Callable
from typing import Any

from zoo.kernels.additive import additive_attention, additive_scores, project_keys
from zoo.kernels.blockwise import blockwise_attention, default_block_sizes
from zoo.kernels.blockwise_additive import blockwise_additive_attention
from zoo.kernels.dispatch import IMPLEMENTATIONS, explain
from zoo.kernels.dot_product import dot_product_attention
from zoo.kernels.masks import (
    causal_mask,
    combine_masks,
    local_window_mask,
    padding_mask,
    segment_mask,
)
from zoo.kernels.multiplicative import multiplicative_attention, multiplicative_scores
from zoo.kernels.pallas_additive import pallas_additive_attention
from zoo.kernels.positional import alibi_bias, alibi_slopes, apply_rotary, sinusoidal_positions
from zoo.kernels.ring import ring_attention, ring_permutation
from zoo.kernels.sharded import sharded_attention
from zoo.kernels.softmax import masked_softmax

# Name -> kernel with the dot-product call. A new kernel is one file and one line here.
KERNELS: dict[str, Callable[..., Any]] = {
    "auto": dot_product_attention,
    "reference": functools.partial(dot_product_attention, implementation="reference"),
    "blockwise": blockwise_attention,
}

__all__ = [
    "IMPLEMENTATIONS",
    "KERNELS",
    "additive_attention",
    "additive_scores",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "blockwise_additive_attention",
    "blockwise_attention",
    "causal_mask",
    "combine_masks",
    "default_block_sizes",
    "dot_product_attention",
    "explain",
    "local_window_mask",
    "masked_softmax",
    "multiplicative_attention",
    "multiplicative_scores",
    "padding_mask",
    "pallas_additive_attention",
    "project_keys",
    "ring_attention",
    "ring_permutation",
    "segment_mask",
    "sharded_attention",
    "sinusoidal_positions",
]
