"""Pure-function attention kernels: arrays in, arrays out; jit, vmap, grad and shard safe.

The registries map names to kernels, one registry per call, for model configs to look up:

- ``KERNELS``: the call of :func:`dot_product_attention` (which is also
  ``jax.nn.dot_product_attention``'s). ``"auto"`` is :func:`dot_product_attention` itself,
  which runs each call on the fastest kernel that supports it (:func:`explain` says which).
- ``ADDITIVE_KERNELS``: the call of :func:`additive_attention` (Bahdanau et al. 2014).
  ``"auto"`` picks the Pallas kernel on GPU/TPU for long inputs, else the reference.

A new kernel is one file and one line in its registry.
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

KERNELS: dict[str, Callable[..., Any]] = {
    "auto": dot_product_attention,
    "reference": functools.partial(dot_product_attention, implementation="reference"),
    "blockwise": blockwise_attention,
}
ADDITIVE_KERNELS: dict[str, Callable[..., Any]] = {
    "auto": additive_attention,
    "additive": functools.partial(additive_attention, implementation="reference"),
    "blockwise_additive": blockwise_additive_attention,
    "pallas_additive": pallas_additive_attention,
}

__all__ = [
    "ADDITIVE_KERNELS",
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
