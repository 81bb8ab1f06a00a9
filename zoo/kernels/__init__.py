"""Pure-function attention kernels: arrays in, arrays out; jit, vmap, grad and shard safe."""

from zoo.kernels.additive import additive_attention, additive_scores, project_keys
from zoo.kernels.blockwise_additive import blockwise_additive_attention
from zoo.kernels.chunked import blockwise_attention
from zoo.kernels.dot_product import dot_product_attention
from zoo.kernels.masks import (
    causal_mask,
    combine_masks,
    local_window_mask,
    padding_mask,
    segment_mask,
)
from zoo.kernels.multiplicative import multiplicative_attention, multiplicative_scores
from zoo.kernels.positional import alibi_bias, alibi_slopes, apply_rotary, sinusoidal_positions
from zoo.kernels.sharded import ring_attention, ring_permutation, sharded_attention
from zoo.kernels.softmax import masked_softmax

__all__ = [
    "additive_attention",
    "additive_scores",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "blockwise_additive_attention",
    "blockwise_attention",
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
    "local_window_mask",
    "masked_softmax",
    "multiplicative_attention",
    "multiplicative_scores",
    "padding_mask",
    "project_keys",
    "ring_attention",
    "ring_permutation",
    "segment_mask",
    "sharded_attention",
    "sinusoidal_positions",
]
