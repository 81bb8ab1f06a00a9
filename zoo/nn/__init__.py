"""Flax NNX modules: they own parameters and call a kernel from ``zoo.kernels`` by name."""

from zoo.nn.additive import AdditiveAttention
from zoo.nn.attention import KVCache, MultiHeadAttention
from zoo.nn.feed_forward import FeedForward
from zoo.nn.multiplicative import MultiplicativeAttention

__all__ = [
    "AdditiveAttention",
    "FeedForward",
    "KVCache",
    "MultiHeadAttention",
    "MultiplicativeAttention",
]
