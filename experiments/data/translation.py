"""Translation data for the runner: one call from a dataset name to batches and tokenizers.

    data = make_translation_data("bible_en_es", data_dir=workdir / "data", max_length=50,
                                 batch_size=64, seed=0)
    iterator = data.train_iterator()        # grain iterator: get_state() / set_state()
    batch = next(iterator)                  # {"source": [B, L], "target": [B, L + 1], ...}
    sources, references = data.eval_pairs(500)          # raw strings, for BLEU
    hypotheses = data.decode_targets(predicted_ids)     # [B, T] ids -> strings

Sequences are framed for an encoder-decoder trained with teacher forcing:

    source = x_1 .. x_n EOS                 (then PAD)     n + 1 <= max_length
    target = BOS y_1 .. y_m EOS             (then PAD)     m + 1 <= max_length

The decoder reads ``target[:, :-1]`` and predicts ``target[:, 1:]``, both ``L`` long like the
source, where ``L`` is the smallest of a few bucket lengths that holds the batch (see
``batching``): the train step compiles for at most ``len(buckets)`` shapes. Training drops pairs
longer than ``max_length``; evaluation truncates them (keeping EOS) so every held-out sentence
is scored.
"""

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from experiments.data import pipeline
from experiments.data.batching import collate, default_buckets
from experiments.data.prepare import open_split, prepare
from experiments.data.tokenizer import (
    BOS_ID,
    DEFAULT_MAX_SENTENCES,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    load_or_train,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "TRANSLATION_DATASETS",
    "UNK_ID",
    "TranslationData",
    "frame_pair",
    "make_translation_data",
]

# TFDS name -> (source language, target language): the feature keys of each record.
TRANSLATION_DATASETS = {
    "bible_en_es": ("en", "es"),
    # Bahdanau et al. 2014 translate English to French (WMT'14).
    "wmt14_translate/fr-en": ("en", "fr"),
    "wmt14_translate/de-en": ("en", "de"),
}
# Padded keys -> extra tokens beyond the bucket length (the target's BOS; see `batching`).
SEQUENCES = {"source": 0, "target": 1}
EVAL_SPLITS = ("validation", "test")
# Training splits up to this many pairs are read into memory once (the Bible: 28k pairs, ~8 MB,
# ~3 s), which makes an epoch several times faster than reading records one by one; larger
# ones (WMT'14 En-Fr: 40M pairs) are streamed from disk.
IN_MEMORY_MAX_PAIRS = 1_000_000

Pair = tuple[str, str]  # (source sentence, target sentence)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _pair(record: Mapping[str, Any], *, source_lang: str, target_lang: str) -> Pair:
    return _text(record[source_lang]), _text(record[target_lang])


def frame_pair(
    source_ids: Sequence[int], target_ids: Sequence[int], *, truncate_to: int | None = None
) -> dict[str, np.ndarray]:
    """``x EOS`` and ``BOS y EOS`` as int32 arrays.

    With ``truncate_to``, ``x EOS`` and ``y EOS`` are cut to at most that many tokens.
    """
    if truncate_to is not None:
        source_ids = source_ids[: truncate_to - 1]
        target_ids = target_ids[: truncate_to - 1]
    return {
        "source": np.asarray([*source_ids, EOS_ID], dtype=np.int32),
        "target": np.asarray([BOS_ID, *target_ids, EOS_ID], dtype=np.int32),
    }


def _featurize(
    pair: Pair,
    *,
    source_tokenizer: Tokenizer,
    target_tokenizer: Tokenizer,
    truncate_to: int | None = None,
) -> dict[str, np.ndarray]:
    return frame_pair(
        source_tokenizer.encode(pair[0]), target_tokenizer.encode(pair[1]), truncate_to=truncate_to
    )


def _encode_padded(
    tokenizer: Tokenizer, texts: Sequence[str], width: int, *, bos: bool
) -> np.ndarray:
    """``[B, width]`` int32: each text as ``[BOS] ids EOS``, cut to ``width``, then PAD."""
    start = [BOS_ID] if bos else []
    ids = np.full((len(texts), width), PAD_ID, dtype=np.int32)
    for row, pieces in enumerate(tokenizer.encode_batch(texts)):
        framed = [*start, *pieces[: width - len(start) - 1], EOS_ID]
        ids[row, : len(framed)] = framed
    return ids


@dataclasses.dataclass(frozen=True)
class TranslationData:
    """Tokenizers, a checkpointable training stream and held-out splits of one dataset."""

    name: str
    source_lang: str
    target_lang: str
    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer  # the same object as source_tokenizer when shared_vocab
    max_length: int
    batch_size: int  # examples per step over all processes; evaluation batches hold as many
    buckets: tuple[int, ...]
    train: grain.IterDataset  # each iter(train) starts at the beginning of the stream
    splits: Mapping[str, Sequence[Any]]  # raw random-access records of the held-out splits

    def train_iterator(self, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
        """A fresh iterator over training batches, resumed from ``state`` if given.

        ``state`` is what ``iterator.get_state()`` returned: a small JSON-serializable dict, as
        ``grain.checkpoint.CheckpointSave`` writes it.
        """
        iterator = iter(self.train)
        if state is not None:
            iterator.set_state(state)
        return iterator

    def _pairs(self, limit: int | None, split: str) -> list[Pair]:
        if split not in self.splits:
            raise ValueError(f"split: expected one of {sorted(self.splits)}, got {split!r}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit: expected None or a count >= 0, got {limit}")
        records = self.splits[split]
        count = len(records) if limit is None else min(limit, len(records))
        pair = functools.partial(_pair, source_lang=self.source_lang, target_lang=self.target_lang)
        return [pair(record) for record in pipeline.read_records(records, range(count))]

    def eval_pairs(
        self, limit: int | None = None, *, split: str = "validation"
    ) -> tuple[list[str], list[str]]:
        """``(sources, references)``: raw strings of ``split`` (its first ``limit``), in the
        order of ``eval_batches``. References are untokenized, as sacrebleu wants them."""
        pairs = self._pairs(limit, split)
        return [source for source, _ in pairs], [target for _, target in pairs]

    def eval_batches(
        self, limit: int | None = None, *, split: str = "validation"
    ) -> list[dict[str, np.ndarray]]:
        """Every example of ``split`` (or its first ``limit``), in order, as padded batches.

        Sequences longer than ``max_length`` are truncated; the last batch is filled with empty
        rows (``source_length == 0``) up to ``batch_size``.
        """
        featurize = functools.partial(
            _featurize,
            source_tokenizer=self.source_tokenizer,
            target_tokenizer=self.target_tokenizer,
            truncate_to=self.max_length,
        )
        examples = [featurize(pair) for pair in self._pairs(limit, split)]
        return pipeline.eval_batches(
            examples, sequences=SEQUENCES, batch_size=self.batch_size, buckets=self.buckets
        )

    def encode_sources(self, texts: Sequence[str], width: int | None = None) -> np.ndarray:
        """Source sentences as ``[B, width]`` int32 ``x EOS PAD..`` (``width``: max_length)."""
        return _encode_padded(self.source_tokenizer, texts, width or self.max_length, bos=False)

    def encode_targets(self, texts: Sequence[str], width: int | None = None) -> np.ndarray:
        """Target sentences as ``[B, width]`` int32 ``BOS y EOS PAD..`` (default
        ``max_length + 1``), e.g. to draw the attention of a hypothesis."""
        width = width or self.max_length + 1
        return _encode_padded(self.target_tokenizer, texts, width, bos=True)

    def decode_targets(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """One string per row of target ids, read up to its first EOS (BOS and PAD dropped)."""
        return [self.target_tokenizer.decode(row) for row in ids]

    def source_pieces(self, ids: Iterable[int]) -> list[str]:
        """Heatmap labels of source ids: one per token up to and including EOS, no PAD."""
        return self.source_tokenizer.pieces(ids)

    def target_pieces(self, ids: Iterable[int]) -> list[str]:
        """Heatmap labels of target ids: one per token up to and including EOS, no PAD."""
        return self.target_tokenizer.pieces(ids)

    def collate(self, examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Batch framed examples (``frame_pair`` outputs) exactly as the training stream does."""
        return collate(examples, sequences=SEQUENCES, buckets=self.buckets)


def _training_pairs(
    records: Sequence[Any], *, source_lang: str, target_lang: str
) -> Sequence[Pair] | grain.MapDataset:
    """The training split as (source, target) pairs: in memory when small, else read lazily."""
    pair = functools.partial(_pair, source_lang=source_lang, target_lang=target_lang)
    if len(records) <= IN_MEMORY_MAX_PAIRS:
        read = pipeline.read_records(records, range(len(records)), desc="reading training split")
        return [pair(record) for record in read]
    return grain.MapDataset.source(records).map(pair)


def _tokenizer_texts(pairs: Sequence[Pair] | grain.MapDataset, side: int) -> Iterator[str]:
    """One side of an evenly spaced sample of the training pairs (all of them when small)."""
    step = max(1, len(pairs) // DEFAULT_MAX_SENTENCES)
    for i in range(0, len(pairs), step):
        yield pairs[i][side]


def _tokenizers(
    pairs: Sequence[Pair] | grain.MapDataset,
    *,
    source_lang: str,
    target_lang: str,
    cache_dir: Path,
    vocab_sizes: tuple[int, int],
    model_type: str,
    shared_vocab: bool,
) -> tuple[Tokenizer, Tokenizer]:
    """Trained on the training split only, so held-out text never shapes the vocabulary."""
    train = functools.partial(load_or_train, cache_dir=cache_dir, model_type=model_type)
    count = min(len(pairs), DEFAULT_MAX_SENTENCES)
    if shared_vocab:

        def both_sides() -> Iterator[str]:
            yield from _tokenizer_texts(pairs, 0)
            yield from _tokenizer_texts(pairs, 1)

        shared = train(
            both_sides,
            name=f"{source_lang}+{target_lang}",
            vocab_size=vocab_sizes[0],
            total=2 * count,
        )
        return shared, shared
    source = train(
        lambda: _tokenizer_texts(pairs, 0),
        name=source_lang,
        vocab_size=vocab_sizes[0],
        total=count,
    )
    target = train(
        lambda: _tokenizer_texts(pairs, 1),
        name=target_lang,
        vocab_size=vocab_sizes[1],
        total=count,
    )
    return source, target


def _check_arguments(
    name: str,
    *,
    max_length: int,
    batch_size: int,
    source_vocab_size: int,
    target_vocab_size: int,
    shared_vocab: bool,
    buckets: tuple[int, ...],
) -> None:
    if name not in TRANSLATION_DATASETS:
        raise ValueError(f"name: expected one of {sorted(TRANSLATION_DATASETS)}, got {name!r}")
    if max_length < 2:
        raise ValueError(f"max_length: expected at least 2 (a token and EOS), got {max_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    if shared_vocab and source_vocab_size != target_vocab_size:
        raise ValueError(
            "target_vocab_size: expected the same as source_vocab_size with shared_vocab=True, "
            f"got {target_vocab_size} and {source_vocab_size}"
        )
    if list(buckets) != sorted(set(buckets)) or buckets[0] < 1 or buckets[-1] != max_length:
        raise ValueError(
            "bucket_lengths: expected strictly ascending positive lengths ending at "
            f"max_length={max_length}, got {buckets}"
        )


def make_translation_data(
    name: str = "bible_en_es",
    *,
    data_dir: str | Path | None,
    source_vocab_size: int = 8000,
    target_vocab_size: int = 8000,
    max_length: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    shared_vocab: bool = False,
    model_type: str = "bpe",
    bucket_lengths: Sequence[int] | None = None,
    sort_window: int = 16,
    num_epochs: int | None = None,
    manual_dir: str | Path | None = None,
    download: bool = True,
    tokenizer_dir: str | Path | None = None,
) -> TranslationData:
    """Prepare (or reuse) dataset ``name`` and its tokenizers; return the data for a run.

    Args:
      name: one of ``TRANSLATION_DATASETS``.
      data_dir: TFDS data directory where the dataset is (or will be) prepared; None means
        TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      source_vocab_size: SentencePiece pieces of the source model, specials included (a soft
        limit: read ``data.source_tokenizer.vocab_size`` for the real size).
      target_vocab_size: the same for the target model.
      max_length: most tokens per side, EOS included (the target's BOS not counted).
      batch_size: examples per step over all JAX processes: each process's training batches
        hold ``batch_size // jax.process_count()`` of its own part of the split.
      seed: seeds shuffling and batch grouping.
      shared_vocab: one tokenizer for both languages (for tied embeddings, as in the
        Transformer) instead of one per language; needs equal vocabulary sizes.
      model_type: SentencePiece "bpe" or "unigram".
      bucket_lengths: allowed padded lengths, ascending, ending at ``max_length``; default
        four (``batching.default_buckets``). ``(max_length,)`` gives a single shape.
      sort_window: batches per length-sorting window (1: no grouping by length).
      num_epochs: passes over the training split; None repeats forever.
      manual_dir: manually downloaded raw files, for datasets TFDS cannot download here.
      download: whether a real dataset that is not prepared may be downloaded.
      tokenizer_dir: where tokenizers are cached; default next to the prepared data, inside
        its versioned directory, so a new data version never reuses an old tokenizer.

    Raises:
      ValueError: an argument out of range or an unknown ``name``.
      experiments.data.prepare.DatasetNotPreparedError: a real dataset is missing and cannot
        be downloaded; the message says how to prepare it.
      experiments.errors.DataError: the prepared copy is corrupt (a file truncated, missing
        or damaged); the message names it and the command that rebuilds it.
    """
    buckets = tuple(bucket_lengths) if bucket_lengths else default_buckets(max_length)
    _check_arguments(
        name,
        max_length=max_length,
        batch_size=batch_size,
        source_vocab_size=source_vocab_size,
        target_vocab_size=target_vocab_size,
        shared_vocab=shared_vocab,
        buckets=buckets,
    )
    # Each JAX process (host) trains on its own records; checked before anything is prepared.
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    pipeline.shard_batch_size(batch_size, shard)
    source_lang, target_lang = TRANSLATION_DATASETS[name]
    builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir, download=download)
    splits = {split: open_split(name, builder, split) for split in ("train", *EVAL_SPLITS)}
    cache_dir = Path(tokenizer_dir) if tokenizer_dir else Path(builder.data_dir) / "sentencepiece"
    pairs = _training_pairs(splits["train"], source_lang=source_lang, target_lang=target_lang)
    source_tokenizer, target_tokenizer = _tokenizers(
        pairs,
        source_lang=source_lang,
        target_lang=target_lang,
        cache_dir=cache_dir,
        vocab_sizes=(source_vocab_size, target_vocab_size),
        model_type=model_type,
        shared_vocab=shared_vocab,
    )
    featurize = functools.partial(
        _featurize, source_tokenizer=source_tokenizer, target_tokenizer=target_tokenizer
    )
    train = pipeline.train_dataset(
        pairs,
        featurize=featurize,
        sequences=SEQUENCES,
        max_length=max_length,
        batch_size=batch_size,
        buckets=buckets,
        seed=seed,
        sort_window=sort_window,
        num_epochs=num_epochs,
        shard=shard,
    )
    return TranslationData(
        name=name,
        source_lang=source_lang,
        target_lang=target_lang,
        source_tokenizer=source_tokenizer,
        target_tokenizer=target_tokenizer,
        max_length=max_length,
        batch_size=batch_size,
        buckets=buckets,
        train=train,
        splits={split: splits[split] for split in EVAL_SPLITS},
    )
