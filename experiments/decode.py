"""How the tasks decode a held-out batch: through the model protocol
(``zoo.models.protocol``: ``encode``, ``init_decode_state``, ``step``) and ``zoo.decoding``,
with the tokenizers' special ids.

    memory = model.encode(inputs)
    tokens = best_beam(model, memory, max_length=50, beam_size=4, length_penalty=0.6)  # [B, 50]
    tokens = greedy(model, memory, max_length=50)
    logits, weights = model(inputs, with_bos(tokens)[:, :-1], return_weights=True)

:func:`in_batches` runs such a decoding, jitted, over more inputs than one batch.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import runner
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from zoo import decoding

__all__ = ["best_beam", "greedy", "in_batches", "with_bos"]

_IDS = {"bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID}


def _start(model: Any, memory: Any, max_length: int) -> Any:
    # Room for BOS and max_length tokens (a Transformer's key/value cache holds both).
    return model.init_decode_state(memory, max_length + 1)


def best_beam(
    model: Any, memory: Any, *, max_length: int, beam_size: int, length_penalty: float
) -> jax.Array:
    """The best hypothesis of a beam search from each example's ``memory``,
    ``[B, max_length]``; ``length_penalty`` is GNMT's alpha (Wu et al. 2016, eq. 14)."""
    result = decoding.beam_search(
        model.step,
        _start(model, memory, max_length),
        beam_size=beam_size,
        length_penalty=length_penalty,
        max_length=max_length,
        **_IDS,
    )
    return result.tokens[:, 0]


def greedy(model: Any, memory: Any, *, max_length: int) -> jax.Array:
    """The greedy decoding of each example's ``memory``, ``[B, max_length]``."""
    return decoding.greedy_search(
        model.step, _start(model, memory, max_length), max_length=max_length, **_IDS
    )


def with_bos(tokens: jax.Array) -> jax.Array:
    """Decoded tokens ``[B, T]`` -> ``BOS tokens`` ``[B, T+1]``, to teacher-force them."""
    return jnp.concatenate([jnp.full((len(tokens), 1), BOS_ID, tokens.dtype), tokens], axis=1)


def in_batches(
    fn: Callable[[Any, runner.Batch], jax.Array], model: Any, batch: runner.Batch, size: int
) -> np.ndarray:
    """``fn(model, batch)`` through ``runner.apply``, ``size`` rows of ``batch`` at a time; the
    outputs of every row, concatenated. The last chunk is filled up with copies of its last row,
    so that ``fn`` compiles once."""
    rows = len(next(iter(batch.values())))
    outputs = []
    for start in range(0, rows, size):
        chunk = {k: v[start : start + size] for k, v in batch.items()}
        count = len(next(iter(chunk.values())))
        full = {
            k: np.concatenate([v, np.repeat(v[-1:], size - count, 0)]) for k, v in chunk.items()
        }
        outputs.append(np.asarray(runner.apply(fn, model, full))[:count])
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.int32)
