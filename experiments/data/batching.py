"""Padding variable-length token sequences into a few fixed batch shapes.

JAX compiles a jitted step once per input shape. Padding every batch to the longest allowed
length gives one shape but wastes most of the compute on padding (Bible verses run from 3 to
~120 tokens); padding each batch to its own longest sequence wastes nothing but recompiles for
almost every batch. Between the two: pad to the smallest of a few *bucket* lengths that holds
the batch, and group examples of similar length into the same batch.

Examples are dicts of 1-D int sequences; a batch is a dict of int32 numpy arrays ``[B, L]``,
plus ``{key}_length`` ``[B]`` for every padded key.

Which keys are padded is given as ``sequences``: key -> *extra* tokens the key carries beyond
the bucket length. A translation target ``BOS y EOS`` carries one: the decoder reads
``target[:, :-1]`` and predicts ``target[:, 1:]``, both exactly as long as the source bucket,
so ``{"source": 0, "target": 1}`` gives ``source [B, L]`` and ``target [B, L + 1]``.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from experiments.data.tokenizer import PAD_ID


def default_buckets(max_length: int, count: int = 4) -> tuple[int, ...]:
    """``count`` evenly spaced lengths up to ``max_length``, rounded up to multiples of 8.

    >>> default_buckets(64)
    (16, 32, 48, 64)
    """
    if max_length < 1:
        raise ValueError(f"max_length: expected a positive length, got {max_length}")
    # Multiples of 8 keep the padded shapes friendly to vectorized kernels.
    lengths = {
        min(max_length, _round_up(-(-max_length * i // count), 8)) for i in range(1, count + 1)
    }
    return tuple(sorted(lengths))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``length`` tokens."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"length: expected at most the largest bucket {max(buckets)}, got {length}")


def sequence_length(example: Mapping[str, Any], sequences: Mapping[str, int]) -> int:
    """The bucket length ``example`` needs: its longest sequence, extra tokens not counted."""
    return max(len(example[key]) - extra for key, extra in sequences.items())


def collate(
    examples: Sequence[Mapping[str, Any]],
    *,
    sequences: Mapping[str, int],
    buckets: Sequence[int],
    batch_size: int | None = None,
    pad_id: int = PAD_ID,
) -> dict[str, np.ndarray]:
    """Stack ``examples`` into one batch; every sequence key is padded to one bucket length.

    One shared length (the smallest bucket holding every sequence) means a batch has one of
    ``len(buckets)`` shapes, not ``len(buckets) ** len(sequences)``.

    Args:
      examples: dicts holding a 1-D int sequence under each key of ``sequences``.
      sequences: key -> extra tokens beyond the bucket length, e.g. {"source": 0, "target": 1}.
      buckets: allowed padded lengths, ascending.
      batch_size: pad the batch with empty rows (all ``pad_id``, length 0) up to this many, so
        the last, short batch of an evaluation has the same shape as the others.
      pad_id: the padding id.
    """
    if not examples:
        raise ValueError("examples: expected at least one example, got none")
    rows = len(examples) if batch_size is None else batch_size
    if rows < len(examples):
        raise ValueError(f"batch_size: expected at least {len(examples)}, got {batch_size}")
    bucket = bucket_length(max(sequence_length(e, sequences) for e in examples), buckets)
    batch: dict[str, np.ndarray] = {}
    for key, extra in sequences.items():
        padded = np.full((rows, bucket + extra), pad_id, dtype=np.int32)
        lengths = np.zeros((rows,), dtype=np.int32)
        for row, example in enumerate(examples):
            sequence = example[key]
            padded[row, : len(sequence)] = sequence
            lengths[row] = len(sequence)
        batch[key] = padded
        batch[f"{key}_length"] = lengths
    return batch


def length_sorted_groups(
    window: Sequence[Any],
    rng: np.random.Generator,
    *,
    group_size: int,
    length: Callable[[Any], int],
) -> list[list[Any]]:
    """Cut a window of examples into groups of similar length, in random order.

    Sorting only within a window (rather than the whole epoch) keeps the data shuffled at the
    scale of the window; shuffling the groups keeps short and long batches interleaved across
    steps instead of ramping up within each window. The last group may be short.
    """
    order = sorted(range(len(window)), key=lambda i: length(window[i]))
    groups = [
        [window[i] for i in order[start : start + group_size]]
        for start in range(0, len(order), group_size)
    ]
    return [groups[i] for i in rng.permutation(len(groups))]
