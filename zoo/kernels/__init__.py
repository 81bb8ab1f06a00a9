"""Pure-function attention kernels: arrays in, arrays out; jit, vmap, grad and shard safe."""

from zoo.kernels.dot_product import dot_product_attention
from zoo.kernels.masks import (
    causal_mask,
    combine_masks,
    local_window_mask,
    padding_mask,
    segment_mask,
)
from zoo.kernels.softmax import masked_softmax

__all__ = [
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
    "local_window_mask",
    "masked_softmax",
    "padding_mask",
    "segment_mask",
]
