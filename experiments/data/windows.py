"""Language-model windows over one long token stream, as nanoGPT samples them.

A split is tokenized once into a flat stream of ids (``token_stream``), kept on disk next to the
data and memory-mapped, so a corpus larger than memory (lm1b) needs no RAM of its own and a
small one (Shakespeare) loads in milliseconds.

Training samples windows of ``context_length + 1`` consecutive tokens at random offsets; a model
reads ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``. nanoGPT draws offsets with replacement
(``torch.randint``); here every valid offset is drawn once per epoch in a seeded random order,
which is as random at the scale of a batch, and makes the iterator's state a single index, so a
run resumes exactly.

Evaluation tiles a split with windows that overlap by one token (``eval_windows``): every token
after the first is predicted exactly once, and the positions in a window (1 to
``context_length`` tokens of context) are equally represented, as in the random windows
nanoGPT averages its validation loss over, so the two estimate the same mean.
"""

import functools
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import grain
import numpy as np

from experiments.data import pipeline
from experiments.data.batching import collate

# Batch key -> extra tokens beyond the context length (see `batching.collate`).
SEQUENCES = {"tokens": 1}


def stream_dtype(vocab_size: int) -> np.dtype:
    """The narrowest id type: uint16 halves the disk and page cache a stream needs."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def load_stream(path: Path, dtype: np.dtype) -> np.ndarray:
    """A stream written by ``token_stream``, memory-mapped read-only."""
    if path.stat().st_size == 0:  # mmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def token_stream(encoded: Iterable[np.ndarray], *, path: Path, dtype: np.dtype) -> np.ndarray:
    """The cached stream at ``path``, or the concatenation of ``encoded`` written there first.

    ``encoded`` is consumed only when there is no cache; the caller names ``path`` after
    everything that shapes the ids (split, tokenizer, records used).
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        limit = np.iinfo(dtype).max
        # Written piece by piece then renamed: lm1b's stream does not fit in memory, and a
        # concurrent reader must never see half of it.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
            for ids in encoded:
                if len(ids) and int(np.max(ids)) > limit:
                    raise ValueError(f"ids: expected at most {limit} for {dtype}, got more")
                file.write(np.asarray(ids, dtype=dtype).tobytes())
        os.replace(file.name, path)
    return load_stream(path, dtype)


def _window(start: int, *, stream: np.ndarray, length: int) -> dict[str, np.ndarray]:
    return {"tokens": np.asarray(stream[start : start + length], dtype=np.int32)}


def _stack(windows: Sequence[dict[str, np.ndarray]], *, context_length: int) -> dict:
    return collate(windows, sequences=SEQUENCES, buckets=(context_length,))


def check_stream(stream: np.ndarray, *, context_length: int, what: str) -> None:
    if len(stream) < context_length + 1:
        raise ValueError(
            f"context_length: expected at most {len(stream) - 1} for the {what} "
            f"({len(stream)} tokens), got {context_length}"
        )


def train_windows(
    stream: np.ndarray,
    *,
    context_length: int,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    read_threads: int = 2,
    shard: grain.sharding.ShardOptions = pipeline.ONE_PROCESS,
) -> grain.IterDataset:
    """Batches of random windows: ``tokens`` int32 ``[B, context_length + 1]``, and
    ``tokens_length`` ``[B]`` (always ``context_length + 1``, as in evaluation batches).

    Args:
      stream: the training split's token ids.
      context_length: tokens a model reads per row; windows hold one more, the last target.
      batch_size: windows per step over all processes; this process's batches hold
        ``batch_size // shard.shard_count``, and every batch is full.
      seed: seeds the order of offsets, which changes every epoch.
      num_epochs: passes over every offset; None repeats forever. An epoch is
        ``len(stream) - context_length`` windows, each token seen ``context_length + 1`` times.
      read_threads: threads cutting windows ahead (grain's default of 16 oversubscribes a
        small machine).
      shard: which process this is, of how many: each process draws its own offsets
        (``pipeline.shard_records``).
    """
    batch_size = pipeline.shard_batch_size(batch_size, shard)
    if context_length < 1:
        raise ValueError(f"context_length: expected a positive int, got {context_length}")
    check_stream(stream, context_length=context_length, what="training split")
    # Offsets 0 .. len - context_length - 1: the last window ends with the stream's last token.
    offsets = pipeline.shard_records(grain.MapDataset.range(len(stream) - context_length), shard)
    dataset = (
        offsets.seed(seed)
        .shuffle()
        .repeat(num_epochs)
        .map(functools.partial(_window, stream=stream, length=context_length + 1))
        .batch(
            batch_size,
            drop_remainder=True,
            batch_fn=functools.partial(_stack, context_length=context_length),
        )
    )
    return dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=8)
    )


def eval_windows(
    stream: np.ndarray, *, context_length: int, limit: int | None = None
) -> list[np.ndarray]:
    """Windows of ``context_length + 1`` tokens starting every ``context_length`` tokens.

    Consecutive windows share one token (the last target of one is the first input of the
    next), so the targets cover tokens 1 .. len - 1 exactly once; the last window is shorter
    unless the stream fits exactly. With ``limit``, ``limit`` evenly spaced windows of these
    (deterministic, and spread over the whole split rather than its beginning).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit: expected None or a count >= 0, got {limit}")
    if len(stream) < 2:
        raise ValueError(f"stream: expected at least 2 tokens to predict one, got {len(stream)}")
    count = -(-(len(stream) - 1) // context_length)
    picked = np.arange(count)
    if limit is not None and limit < count:
        # Spacing >= 1 before rounding, so the rounded indices are distinct.
        picked = np.linspace(0, count - 1, limit).round().astype(np.int64)
    starts = picked * context_length
    return [np.asarray(stream[s : s + context_length + 1], dtype=np.int32) for s in starts]
