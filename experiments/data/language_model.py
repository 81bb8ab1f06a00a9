"""Language-model data for the runner: one call from a dataset name to windows and a tokenizer.

    data = make_lm_data("shakespeare_plays", data_dir=workdir / "data", context_length=64,
                        batch_size=12, seed=0)
    iterator = data.train_iterator()          # grain iterator: get_state() / set_state()
    batch = next(iterator)                    # {"tokens": [B, T + 1], "tokens_length": [B]}
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    for batch in data.eval_batches(split="validation"): ...   # every token scored once
    prompt = data.encode("ROMEO.\\n")           # int32 ids
    text = data.decode(sampled_ids)

Each split is one stream of tokens (records in order, each followed by the dataset's
separator); training batches are windows at random offsets of the training stream (nanoGPT's
``get_batch``), evaluation batches tile a held-out stream (see ``windows``). Evaluation rows and
the tail of the last window are padded with ``PAD_ID`` (0), which no tokenizer produces: a loss
that ignores targets equal to ``PAD_ID`` is the mean over every token of the split, in nats per
token; per character with ``tokenizer="char"``.

Datasets (``LM_DATASETS``): ``shakespeare_plays`` (shipped, built offline in about a second; the
config ``shakespeare_plays/by_position`` splits it by position like tiny_shakespeare), and the
real TFDS ``tiny_shakespeare`` and ``lm1b``, which fail fast with instructions when they are
not prepared and cannot be downloaded (``prepare``).
"""

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from tqdm import tqdm

from experiments.data import pipeline, windows
from experiments.data.lm_tokenizers import CharTokenizer, LineTokenizer, load_or_build_characters
from experiments.data.prepare import open_split, prepare
from experiments.data.tokenizer import (
    BOS_ID,
    DEFAULT_MAX_SENTENCES,
    EOS_ID,
    PAD_ID,
    SPECIAL_IDS,
    UNK_ID,
    load_or_train,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "LM_DATASETS",
    "PAD_ID",
    "UNK_ID",
    "LanguageModelData",
    "TextDataset",
    "make_lm_data",
]


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """How a TFDS dataset of text records becomes token streams."""

    text_key: str  # the feature holding the text
    separator: str  # text following every record in a split's stream
    eval_splits: tuple[str, ...]  # held-out splits; the first one is for validation


_PLAYS = TextDataset("text", separator="\n", eval_splits=("validation", "test"))
# TFDS name -> how to read it.
LM_DATASETS = {
    # Whole plays end with a newline; one more leaves a blank line between plays.
    "shakespeare_plays": _PLAYS,
    "shakespeare_plays/by_play": _PLAYS,
    "shakespeare_plays/by_position": _PLAYS,
    # One record per split, cut mid-line: nothing may come between them. nanoGPT's
    # shakespeare_char validation split (the last 10%) is "validation+test".
    "tiny_shakespeare": TextDataset("text", separator="", eval_splits=("validation", "test")),
    # One sentence per record, as one per line in the original files; no validation split.
    "lm1b": TextDataset("text", separator="\n", eval_splits=("test",)),
}
TOKENIZERS = ("char", "bpe")
DEFAULT_BPE_VOCAB_SIZE = 2048
# Tokenizers learn from at most this many training records, evenly spaced (all of Shakespeare;
# 0.3% of lm1b's 30M sentences, plenty for its characters or a BPE vocabulary).
TOKENIZER_SAMPLE_RECORDS = 100_000
_READ_CHUNK = 4096

TextTokenizer = CharTokenizer | LineTokenizer


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _texts(
    records: Sequence[Any], indices: Sequence[int], *, key: str, desc: str | None = None
) -> Iterator[str]:
    """The text of ``records[i]`` for ``i`` in ``indices``, read a chunk at a time."""
    with tqdm(total=len(indices), desc=desc, unit=" records", disable=desc is None) as progress:
        for start in range(0, len(indices), _READ_CHUNK):
            chunk = indices[start : start + _READ_CHUNK]
            for record in pipeline.read_records(records, chunk):
                yield _text(record[key])
            progress.update(len(chunk))


def _sample(count: int, limit: int = TOKENIZER_SAMPLE_RECORDS) -> range:
    return range(0, count, max(1, count // limit))


def _lines(texts: Iterable[str], limit: int = DEFAULT_MAX_SENTENCES) -> Iterator[str]:
    """Non-empty lines of ``texts``, at most ``limit`` (SentencePiece's input cap)."""
    count = 0
    for text in texts:
        for line in text.split("\n"):
            if line:
                yield line
                count += 1
                if count == limit:
                    return


def _tokenizer(
    kind: str,
    records: Sequence[Any],
    *,
    dataset: TextDataset,
    vocab_size: int | None,
    cache_dir: Path,
) -> TextTokenizer:
    """Learned from the training split only, so held-out text never shapes the vocabulary."""
    sample = _sample(len(records))

    def texts() -> Iterator[str]:
        # With the separator, as in the streams: a newline is a character to learn.
        desc = "reading text for the tokenizer"
        for text in _texts(records, sample, key=dataset.text_key, desc=desc):
            yield text + dataset.separator

    if kind == "char":
        return load_or_build_characters(
            texts, cache_dir=cache_dir / "characters", vocab_size=vocab_size
        )
    sentencepiece = load_or_train(
        lambda: _lines(texts()),
        cache_dir=cache_dir / "sentencepiece",
        name=dataset.text_key,
        vocab_size=DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size,
        model_type="bpe",
    )
    return LineTokenizer(sentencepiece)


def _stream(
    records: Sequence[Any],
    *,
    split: str,
    dataset: TextDataset,
    tokenizer: TextTokenizer,
    cache_dir: Path,
    max_records: int | None = None,
) -> np.ndarray:
    count = len(records) if max_records is None else min(max_records, len(records))
    first = "" if count == len(records) else f".first{count}"
    dtype = windows.stream_dtype(tokenizer.vocab_size)
    path = cache_dir / "streams" / f"{split}{first}.{tokenizer.key}.{dtype.name}.bin"
    texts = _texts(records, range(count), key=dataset.text_key, desc=f"tokenizing {split}")
    encoded = (tokenizer.encode(text + dataset.separator) for text in texts)
    return windows.token_stream(encoded, path=path, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class LanguageModelData:
    """A tokenizer, a checkpointable stream of training windows and held-out token streams."""

    name: str
    tokenizer: TextTokenizer
    context_length: int  # tokens a model reads per row; windows hold one more
    batch_size: int  # windows per step over all processes; evaluation batches hold as many
    train: grain.IterDataset  # each iter(train) starts at the beginning of the stream
    streams: Mapping[str, np.ndarray]  # token ids of "train" and of every held-out split

    @property
    def vocab_size(self) -> int:
        """Number of ids, the 4 specials included (the model's embedding and softmax size)."""
        return self.tokenizer.vocab_size

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Held-out splits, validation first."""
        return tuple(split for split in self.streams if split != "train")

    def train_iterator(self, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
        """A fresh iterator over training batches, resumed from ``state`` if given.

        ``state`` is what ``iterator.get_state()`` returned: a small JSON-serializable dict, as
        ``grain.checkpoint.CheckpointSave`` writes it.
        """
        iterator = iter(self.train)
        if state is not None:
            iterator.set_state(state)
        return iterator

    def stream(self, split: str) -> np.ndarray:
        """Token ids of ``split``: a held-out split, or several joined by "+" in order
        ("validation+test" is nanoGPT's validation split of tiny_shakespeare)."""
        parts = split.split("+")
        unknown = [part for part in parts if part not in self.eval_splits]
        if unknown:
            raise ValueError(
                f"split: expected one of {list(self.eval_splits)} or several joined by '+', "
                f"got {split!r}"
            )
        if len(parts) == 1:
            return self.streams[split]
        return np.concatenate([self.streams[part] for part in parts])

    def eval_windows(self, split: str = "validation", limit: int | None = None) -> list[np.ndarray]:
        """The windows of ``eval_batches`` as int32 arrays, unpadded."""
        return windows.eval_windows(
            self.stream(split), context_length=self.context_length, limit=limit
        )

    def eval_batches(
        self, split: str = "validation", limit: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Windows tiling ``split`` in order, ``batch_size`` at a time, as padded batches.

        Every token of the split after the first is a target exactly once (see
        ``windows.eval_windows``); with ``limit``, only that many evenly spaced windows. Keys
        and shapes are those of training batches; the tail of the last window and the rows
        filling the last batch are ``PAD_ID`` (``tokens_length`` 0 for an empty row).
        """
        examples = [{"tokens": window} for window in self.eval_windows(split, limit)]
        return pipeline.eval_batches(
            examples,
            sequences=windows.SEQUENCES,
            batch_size=self.batch_size,
            buckets=(self.context_length,),
        )

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of ``text`` (e.g. a prompt), as they appear in the streams."""
        return self.tokenizer.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (e.g. a sample); PAD and BOS are dropped (see ``lm_tokenizers``)."""
        return self.tokenizer.decode(ids)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One readable label per id, PAD skipped (axes of an attention heatmap)."""
        return self.tokenizer.pieces(ids)


def _check_arguments(
    name: str,
    *,
    context_length: int,
    batch_size: int,
    tokenizer: str,
    vocab_size: int | None,
    max_train_records: int | None,
) -> None:
    if name not in LM_DATASETS:
        raise ValueError(f"name: expected one of {sorted(LM_DATASETS)}, got {name!r}")
    if context_length < 1:
        raise ValueError(f"context_length: expected a positive int, got {context_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer: expected one of {list(TOKENIZERS)}, got {tokenizer!r}")
    if vocab_size is not None and vocab_size <= len(SPECIAL_IDS):
        raise ValueError(
            f"vocab_size: expected None or more than {len(SPECIAL_IDS)}, got {vocab_size}"
        )
    if max_train_records is not None and max_train_records < 1:
        raise ValueError(
            f"max_train_records: expected None or a positive int, got {max_train_records}"
        )


def make_lm_data(
    name: str = "shakespeare_plays",
    *,
    data_dir: str | Path | None,
    context_length: int = 64,
    batch_size: int = 12,
    seed: int = 0,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    num_epochs: int | None = None,
    max_train_records: int | None = None,
    manual_dir: str | Path | None = None,
    download: bool = True,
    cache_dir: str | Path | None = None,
) -> LanguageModelData:
    """Prepare (or reuse) dataset ``name``, its tokenizer and token streams; return the data.

    The defaults (context 64, batch 12, characters) are nanoGPT's CPU "baby GPT" run.

    Args:
      name: one of ``LM_DATASETS``.
      data_dir: TFDS data directory where the dataset is (or will be) prepared; None means
        TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      context_length: tokens a model reads per row (nanoGPT's ``block_size``).
      batch_size: windows per batch in evaluation, and per step over all JAX processes in
        training: each process's training batches hold ``batch_size // jax.process_count()``
        windows at offsets of its own.
      seed: seeds the order of training windows.
      tokenizer: "char" (one id per character) or "bpe" (SentencePiece, EOS per line break).
      vocab_size: ids wanted, the 4 specials included. "char": None keeps every character of
        the training split, a number the most frequent; "bpe": pieces asked for (a soft limit,
        read ``data.vocab_size``), None means ``DEFAULT_BPE_VOCAB_SIZE``.
      num_epochs: passes over every training offset; None repeats forever.
      max_train_records: train on the first this many records only (lm1b's sentences come
        shuffled, so these are a random sample; its whole stream takes an hour to tokenize).
      manual_dir: raw files for datasets TFDS cannot download here (``text_builders``).
      download: whether a real dataset that is not prepared may be downloaded.
      cache_dir: where tokenizers and token streams are cached; default next to the prepared
        data, inside its versioned directory, so a new data version never reuses old ones.

    Raises:
      ValueError: an argument out of range, an unknown ``name``, or a split shorter than
        ``context_length + 1`` tokens.
      experiments.data.prepare.DatasetNotPreparedError: a real dataset is missing and cannot
        be downloaded; the message says how to prepare it.
      experiments.errors.DataError: the prepared copy is corrupt (a file truncated, missing
        or damaged); the message names it and the command that rebuilds it.
    """
    _check_arguments(
        name,
        context_length=context_length,
        batch_size=batch_size,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        max_train_records=max_train_records,
    )
    # Each JAX process (host) trains on its own records; checked before anything is prepared.
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    pipeline.shard_batch_size(batch_size, shard)
    dataset = LM_DATASETS[name]
    builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir, download=download)
    records = {split: open_split(name, builder, split) for split in ("train", *dataset.eval_splits)}
    cache = Path(cache_dir) if cache_dir else Path(builder.data_dir)
    text_tokenizer = _tokenizer(
        tokenizer, records["train"], dataset=dataset, vocab_size=vocab_size, cache_dir=cache
    )
    streams = {
        split: _stream(
            split_records,
            split=split,
            dataset=dataset,
            tokenizer=text_tokenizer,
            cache_dir=cache,
            max_records=max_train_records if split == "train" else None,
        )
        for split, split_records in records.items()
    }
    train = windows.train_windows(
        streams["train"],
        context_length=context_length,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        shard=shard,
    )
    return LanguageModelData(
        name=name,
        tokenizer=text_tokenizer,
        context_length=context_length,
        batch_size=batch_size,
        train=train,
        streams=streams,
    )
