"""Flax NNX modules: they own parameters and call a kernel from ``zoo.kernels`` passed in."""

from zoo.nn.attention import KVCache, MultiHeadAttention
from zoo.nn.feed_forward import FeedForward

__all__ = ["FeedForward", "KVCache", "MultiHeadAttention"]
