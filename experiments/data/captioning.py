"""Captioning data for the runner: one call from a dataset name to image-caption batches.

    data = make_caption_data("digit_scenes", data_dir=workdir / "data", batch_size=64, seed=0)
    iterator = data.train_iterator()          # grain iterator: get_state() / set_state()
    batch = next(iterator)                    # see "Batches" below
    examples = data.eval_examples(500)        # images, reference captions, boxes, word -> box
    references = data.eval_references(500)    # every reference of each image, for BLEU
    hypotheses = data.decode_captions(ids)    # [B, T] ids -> strings
    boxes = data.word_boxes(ids, labels)      # which box each generated digit word names

Datasets (``CAPTION_DATASETS``): ``digit_scenes`` (offline default, with boxes; configs
``/canvas96`` and ``/smoke``), and two real ones through the same interface: ``coco_captions``
(TFDS, Karpathy splits; its TFDS builder needs TensorFlow, so without it a copy prepared
elsewhere is read) and ``flickr8k`` (built from files you download, ``manual_dir``).
``prepare`` makes each ready or fails within seconds saying how.

Words, not subwords: captions use a word-level vocabulary (``words``) with the shared special
ids (PAD 0, UNK 1, BOS 2, EOS 3). The digit scenes' vocabulary is their grammar's 19 words; a
real dataset's is its most frequent training words (Xu et al. 2015 keep 10,000), cached next
to the prepared data. Every token is a whole word, so a generated "seven" can be checked
against the seven's box.

Batches (``B`` = batch_size, ``T`` = max_length, ``H = W`` = image_size, ``M`` = max_boxes;
images as ``zoo.models.show_attend_tell`` takes them)::

    image        float32 [B, H, W, C]  in [0, 1]; C = 1 (digit scenes) or 3 (photos)
    caption      int32   [B, T + 1]    BOS w_1 .. w_m EOS PAD ..   (m + 1 <= T)
    caption_length int32 [B]           m + 2 (BOS and EOS counted); 0 for padding rows
    word_boxes   int32   [B, T + 1]    per caption position: the box its word names, else -1
    boxes        int32   [B, M, 4]     (top, left, bottom, right) in pixels of ``image``,
                                       bottom/right exclusive; rows past the scene's digits -1
    labels       int32   [B, M]        the digit class in each box, -1 past the last

The decoder reads ``caption[:, :-1]`` and predicts ``caption[:, 1:]``: its step ``t`` predicts
the word at position ``t + 1``, whose box is ``word_boxes[:, t + 1]``. Datasets without boxes
have ``M = 0`` and all ``word_boxes`` -1. Training keeps every image and picks one of its
captions at random per visit, dropping picks longer than ``max_length``; evaluation reads the
first caption of each image, truncated (keeping EOS).
"""

import dataclasses
import functools
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from experiments.data import digit_scenes, pipeline
from experiments.data.batching import collate
from experiments.data.prepare import open_split, prepare
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from experiments.data.words import (
    WORD_PATTERN,
    WordVocabulary,
    build_vocabulary,
    split_words,
)

__all__ = [
    "CAPTION_DATASETS",
    "CaptionData",
    "CaptionExample",
    "CaptionSource",
    "collate_captions",
    "decode_image",
    "frame_caption",
    "make_caption_data",
    "named_boxes",
    "scale_boxes",
    "train_dataset",
]

Example = dict[str, np.ndarray]
Record = Mapping[str, Any]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _scene_captions(record: Record) -> list[str]:
    return [_text(record["caption"])]


def _listed_captions(record: Record) -> list[str]:
    return [_text(text) for text in record["captions"]]


def _coco_captions(record: Record) -> list[str]:
    # TFDS's coco_captions: captions = Sequence({"text", "id"}), read as a dict of lists.
    return [_text(text) for text in record["captions"]["text"]]


@dataclasses.dataclass(frozen=True)
class CaptionSource:
    """How to read one captioning dataset's records."""

    captions: Callable[[Record], list[str]]  # a record's reference captions, raw text
    channels: int  # of the images: 1 grayscale, 3 RGB
    # Our split -> the TFDS split holding it.
    splits: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    # Records hold digit boxes, their classes and the box each caption word names.
    boxes: bool = False
    # A closed vocabulary (a grammar's words); None: the most frequent training words.
    fixed_words: tuple[str, ...] | None = None


_DIGIT_SCENES = CaptionSource(
    _scene_captions, channels=1, boxes=True, fixed_words=digit_scenes.WORDS
)
CAPTION_DATASETS = {
    "digit_scenes": _DIGIT_SCENES,
    "digit_scenes/canvas64": _DIGIT_SCENES,
    "digit_scenes/canvas96": _DIGIT_SCENES,
    "digit_scenes/smoke": _DIGIT_SCENES,
    # Karpathy & Li 2015 splits, as in Xu et al. 2015 (5,000 validation and test images).
    "coco_captions": CaptionSource(
        _coco_captions,
        channels=3,
        splits={"train": "train", "validation": "val", "test": "test"},
    ),
    "flickr8k": CaptionSource(_listed_captions, channels=3),
}
EVAL_SPLITS = ("validation", "test")
# Most digits in a scene: the number of box rows of a batch for datasets with boxes.
MAX_DIGITS = 4
# Photos are resized to this square when image_size is None: the paper's 224 x 224 input.
DEFAULT_PHOTO_SIZE = 224


def _resize_square(image: Image.Image, size: int) -> Image.Image:
    """Shorter side scaled to ``size``, then the centre ``size x size`` (Xu et al. 2015,
    sec. 4.3: "the shortest side resized ... followed by a center crop")."""
    width, height = image.size
    scale = size / min(width, height)
    width, height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def decode_image(encoded: bytes, *, size: int, channels: int) -> np.ndarray:
    """PNG or JPEG bytes -> float32 ``[size, size, channels]`` in [0, 1] (resized if needed)."""
    with Image.open(io.BytesIO(encoded)) as opened:
        image = opened.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = _resize_square(image, size)
    return (np.asarray(image, dtype=np.float32) / 255.0).reshape(size, size, channels)


def named_boxes(word_boxes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The box each word names, ``[..., T, 4]`` (rows of -1 for words naming none), from the
    box index of each word ``[..., T]`` (``CaptionData.word_boxes``) and the boxes
    ``[..., M, 4]``."""
    if boxes.shape[-2] == 0:  # a dataset without boxes
        return np.full((*word_boxes.shape, 4), -1, np.int32)
    picked = np.take_along_axis(boxes, np.maximum(word_boxes, 0)[..., None], axis=-2)
    return np.where(word_boxes[..., None] >= 0, picked, -1)


def scale_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Boxes of a square image resized by ``factor``: edges scaled outward to whole pixels, so
    every scaled box still holds all of its digit."""
    boxes = np.asarray(boxes, dtype=np.float64) * factor
    start, stop = np.floor(boxes[..., :2]), np.ceil(boxes[..., 2:])
    return np.concatenate([start, stop], axis=-1).astype(np.int32)


def frame_caption(
    ids: Sequence[int], word_boxes: Sequence[int], *, truncate_to: int | None = None
) -> Example:
    """``BOS ids EOS`` and the matching ``-1 word_boxes -1``, as int32 arrays.

    With ``truncate_to``, ``ids EOS`` is cut to at most that many tokens.
    """
    if len(ids) != len(word_boxes):
        raise ValueError(f"word_boxes: expected one per word ({len(ids)}), got {len(word_boxes)}")
    if truncate_to is not None:
        ids, word_boxes = ids[: truncate_to - 1], word_boxes[: truncate_to - 1]
    return {
        "caption": np.asarray([BOS_ID, *ids, EOS_ID], dtype=np.int32),
        "word_boxes": np.asarray([-1, *word_boxes, -1], dtype=np.int32),
    }


def _padded(rows: np.ndarray, count: int, fill: int = -1) -> np.ndarray:
    """``rows`` [n, ...] padded with ``fill`` to [count, ...]."""
    padded = np.full((count, *rows.shape[1:]), fill, dtype=np.int32)
    padded[: len(rows)] = rows
    return padded


@dataclasses.dataclass(frozen=True)
class _Featurizer:
    """One raw record (image still encoded) -> one example; see the module's batch layout."""

    source: CaptionSource
    vocabulary: WordVocabulary
    image_size: int
    native_size: int | None  # of the stored images, if they share one (digit scenes)
    max_boxes: int
    truncate_to: int | None = None  # for evaluation; training filters instead

    def __call__(self, record: Record, rng: np.random.Generator | None = None) -> Example:
        captions = self.source.captions(record)
        pick = 0 if rng is None else int(rng.integers(len(captions)))
        ids = self.vocabulary.encode(captions[pick])
        if self.source.boxes and self.native_size:
            refs = np.asarray(record["word_boxes"])
            boxes = scale_boxes(record["boxes"], self.image_size / self.native_size)
            labels = np.asarray(record["labels"], dtype=np.int32)
        else:
            refs = np.full(len(ids), -1)
            boxes, labels = np.zeros((0, 4), np.int32), np.zeros((0,), np.int32)
        return {
            "image": decode_image(
                record["image"], size=self.image_size, channels=self.source.channels
            ),
            **frame_caption(ids, refs.tolist(), truncate_to=self.truncate_to),
            "boxes": _padded(boxes, self.max_boxes),
            "labels": _padded(labels, self.max_boxes),
        }


def collate_captions(
    examples: Sequence[Example], *, max_length: int, batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """Stack examples into one batch; ``batch_size`` pads with empty rows (caption_length 0,
    image zeros, no boxes), so the last batch of an evaluation has the same shape."""
    batch = collate(
        examples, sequences={"caption": 1}, buckets=(max_length,), batch_size=batch_size
    )
    refs = collate(
        examples,
        sequences={"word_boxes": 1},
        buckets=(max_length,),
        batch_size=batch_size,
        pad_id=-1,
    )
    rows = len(batch["caption"])
    image = np.zeros((rows, *examples[0]["image"].shape), dtype=np.float32)
    image[: len(examples)] = np.stack([e["image"] for e in examples])
    boxes, labels = (
        _padded(np.stack([e[key] for e in examples]), rows) for key in ("boxes", "labels")
    )
    return {
        **batch,
        "word_boxes": refs["word_boxes"],
        "image": image,
        "boxes": boxes,
        "labels": labels,
    }


@dataclasses.dataclass(frozen=True)
class CaptionExample:
    """One held-out image with everything evaluation needs."""

    image: np.ndarray  # float32 [H, W, C] in [0, 1], as in the batches
    references: tuple[str, ...]  # raw reference captions, for BLEU
    boxes: np.ndarray  # int32 [n, 4] in pixels of `image`; n = 0 without boxes
    labels: np.ndarray  # int32 [n], the digit class in each box
    # Per reference: the box each of its words (``words.split_words``) names, -1 if none.
    word_boxes: tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class CaptionData:
    """Vocabulary, a checkpointable training stream and held-out splits of one dataset."""

    name: str
    vocabulary: WordVocabulary
    max_length: int  # most caption tokens, EOS included (BOS not counted)
    batch_size: int  # images per step over all processes; evaluation batches hold as many
    image_size: int  # H = W: images are square
    channels: int  # C
    max_boxes: int  # M
    train: grain.IterDataset  # each iter(train) starts at the beginning of the stream
    splits: Mapping[str, Sequence[Any]]  # raw random-access records of the held-out splits
    featurize: Callable[[Record], Example]  # for evaluation: first caption, truncated

    @property
    def vocab_size(self) -> int:
        return self.vocabulary.vocab_size

    @property
    def words(self) -> tuple[str, ...]:
        """Id -> word, specials first."""
        return self.vocabulary.words

    def train_iterator(self, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
        """A fresh iterator over training batches, resumed from ``state`` if given (what
        ``iterator.get_state()`` returned; ``grain.checkpoint.CheckpointSave`` writes it)."""
        iterator = iter(self.train)
        if state is not None:
            iterator.set_state(state)
        return iterator

    def _records(self, limit: int | None, split: str) -> list[Record]:
        if split not in self.splits:
            raise ValueError(f"split: expected one of {sorted(self.splits)}, got {split!r}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit: expected None or a count >= 0, got {limit}")
        records = self.splits[split]
        count = len(records) if limit is None else min(limit, len(records))
        return pipeline.read_records(records, range(count))

    def eval_batches(
        self, limit: int | None = None, *, split: str = "validation"
    ) -> list[dict[str, np.ndarray]]:
        """Every image of ``split`` (or its first ``limit``), in order, with its first caption,
        as batches; the last is filled with empty rows (``caption_length == 0``)."""
        examples = [self.featurize(record) for record in self._records(limit, split)]
        return [
            collate_captions(
                examples[start : start + self.batch_size],
                max_length=self.max_length,
                batch_size=self.batch_size,
            )
            for start in range(0, len(examples), self.batch_size)
        ]

    def eval_references(
        self, limit: int | None = None, *, split: str = "validation"
    ) -> list[tuple[str, ...]]:
        """Every reference caption of each image of ``eval_batches``, for BLEU: in the word
        form the vocabulary decodes to (``words.split_words``: lower case, punctuation split
        off). Reads the captions only, no image."""
        source = CAPTION_DATASETS[self.name]
        return [
            tuple(" ".join(split_words(text)) for text in source.captions(record))
            for record in self._records(limit, split)
        ]

    def eval_examples(
        self, limit: int | None = None, *, split: str = "validation"
    ) -> list[CaptionExample]:
        """The images of ``split`` (or its first ``limit``) in the order of ``eval_batches``,
        with all their reference captions, boxes and word -> box maps. Images are decoded:
        mind ``limit`` on large photo datasets."""
        source = CAPTION_DATASETS[self.name]
        examples = []
        for record in self._records(limit, split):
            example = self.featurize(record)
            count = int((example["labels"] >= 0).sum())
            references = tuple(source.captions(record))
            word_boxes: tuple[np.ndarray, ...]
            if source.boxes:  # stored by the scene generator: the ground truth
                word_boxes = (np.asarray(record["word_boxes"], dtype=np.int32),)
            else:
                word_boxes = tuple(
                    np.full(len(split_words(r)), -1, dtype=np.int32) for r in references
                )
            examples.append(
                CaptionExample(
                    image=example["image"],
                    references=references,
                    boxes=example["boxes"][:count],
                    labels=example["labels"][:count],
                    word_boxes=word_boxes,
                )
            )
        return examples

    def encode_captions(self, texts: Sequence[str], width: int | None = None) -> np.ndarray:
        """Captions as ``[B, width]`` int32 ``BOS w.. EOS PAD..`` (default ``max_length + 1``),
        cut to ``width``, e.g. to draw the attention of a given caption."""
        width = width or self.max_length + 1
        ids = np.full((len(texts), width), PAD_ID, dtype=np.int32)
        for row, words in enumerate(self.vocabulary.encode_batch(texts)):
            framed = [BOS_ID, *words[: width - 2], EOS_ID]
            ids[row, : len(framed)] = framed
        return ids

    def decode_captions(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """One string per row of ids, read up to its first EOS (BOS and PAD dropped)."""
        return [self.vocabulary.decode(row) for row in ids]

    def caption_pieces(self, ids: Iterable[int]) -> list[str]:
        """Heatmap labels of caption ids: one per token up to and including EOS, no PAD."""
        return self.vocabulary.pieces(ids)

    def word_boxes(self, ids: Any, labels: Any) -> np.ndarray:
        """For caption ids ``[..., T]`` (a reference or a generated caption) and the scene's box
        classes ``[..., M]`` (-1 padded): the box each digit word names, else -1 ``[..., T]``.

        Digits in a scene have distinct classes, so a generated digit word names at most one
        box; a digit word for a digit not in the scene names none (-1).
        """
        ids, labels = np.asarray(ids), np.asarray(labels)
        digit_of = np.full(self.vocab_size, -1)
        for digit, word in enumerate(digit_scenes.DIGIT_WORDS):
            if word in self.vocabulary:
                digit_of[self.vocabulary.id_of(word)] = digit
        digits = digit_of[ids]
        matches = (digits[..., :, None] == labels[..., None, :]) & (digits[..., :, None] >= 0)
        return np.where(matches.any(-1), matches.argmax(-1), -1).astype(np.int32)

    def collate(self, examples: Sequence[Example]) -> dict[str, np.ndarray]:
        """Batch featurized examples exactly as the training stream does."""
        return collate_captions(examples, max_length=self.max_length)


def _fits(example: Example, *, max_length: int) -> bool:
    return len(example["caption"]) - 1 <= max_length


def train_dataset(
    source: Sequence[Any],
    *,
    featurize: Callable[[Record, np.random.Generator], Example],
    max_length: int,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    read_threads: int = 2,
    shard: grain.sharding.ShardOptions = pipeline.ONE_PROCESS,
) -> grain.IterDataset:
    """Shuffled (new order each epoch), featurized, full batches of ``source``.

    Images share one shape and captions are padded to one length, so unlike translation's
    stream there is nothing to group by length: a single compiled shape. As in
    ``pipeline.train_dataset``, ``batch_size`` is the global batch: this process (``shard``)
    reads its own records in batches of ``batch_size // shard.shard_count``.
    """
    batch_size = pipeline.shard_batch_size(batch_size, shard)
    if len(source) == 0:
        raise ValueError("source: expected at least one record, got an empty source")
    return (
        pipeline.shard_records(grain.MapDataset.source(source), shard)
        .seed(seed)
        .shuffle()
        .repeat(num_epochs)
        .random_map(featurize)
        .to_iter_dataset(
            grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * batch_size)
        )
        .filter(functools.partial(_fits, max_length=max_length))
        .batch(
            batch_size,
            drop_remainder=True,
            batch_fn=functools.partial(collate_captions, max_length=max_length),
        )
    )


def _vocabulary(
    source: CaptionSource, records: Sequence[Any], *, vocab_size: int, cache_dir: Path
) -> WordVocabulary:
    """The source's fixed words (the digit scenes' grammar); else the most frequent words of
    the training captions, cached."""
    if source.fixed_words is not None:
        return WordVocabulary.of(source.fixed_words)
    # Keyed by everything that shapes the vocabulary (the data version is in cache_dir).
    digest = hashlib.sha256(f"{vocab_size} {WORD_PATTERN}".encode()).hexdigest()[:10]
    path = cache_dir / f"words{vocab_size}.{digest}.json"
    if path.exists():
        return WordVocabulary(tuple(json.loads(path.read_text(encoding="utf-8"))))
    read = pipeline.read_records(records, range(len(records)), desc="reading training captions")
    vocabulary = build_vocabulary(
        (caption for record in read for caption in source.captions(record)), max_size=vocab_size
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never loads a half-written file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        json.dump(list(vocabulary.words), file)
    os.replace(file.name, path)
    return vocabulary


def _check_arguments(
    name: str, *, max_length: int, batch_size: int, image_size: int | None, vocab_size: int
) -> None:
    if name not in CAPTION_DATASETS:
        raise ValueError(f"name: expected one of {sorted(CAPTION_DATASETS)}, got {name!r}")
    if max_length < 2:
        raise ValueError(f"max_length: expected at least 2 (a word and EOS), got {max_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size: expected None or a positive int, got {image_size}")
    if vocab_size <= 4:
        raise ValueError(f"vocab_size: expected more than 4 (the special ids), got {vocab_size}")


def make_caption_data(
    name: str = "digit_scenes",
    *,
    data_dir: str | Path | None,
    batch_size: int = 64,
    seed: int = 0,
    max_length: int = 24,
    image_size: int | None = None,
    vocab_size: int = 10_000,
    num_epochs: int | None = None,
    manual_dir: str | Path | None = None,
    download: bool = True,
    vocab_dir: str | Path | None = None,
    read_threads: int = 2,
) -> CaptionData:
    """Prepare (or reuse) dataset ``name`` and its vocabulary; return the data for a run.

    Args:
      name: one of ``CAPTION_DATASETS``.
      data_dir: TFDS data directory where the dataset is (or will be) prepared; None means
        TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      batch_size: images per step over all JAX processes: each process's training batches
        hold ``batch_size // jax.process_count()`` of its own part of the split.
      seed: seeds shuffling and the choice of caption per image.
      max_length: most caption tokens, EOS included (BOS not counted); the digit scenes'
        longest caption has 20 words.
      image_size: side of the square images in the batches; None: the dataset's own (64 or 96
        for digit scenes, whose boxes are scaled along) or 224 for photos.
      vocab_size: most ids of a real dataset's word vocabulary, specials included (the digit
        scenes' vocabulary is fixed).
      num_epochs: passes over the training split; None repeats forever.
      manual_dir: raw files downloaded by hand (Flickr8k).
      download: whether a real dataset that is not prepared may be downloaded.
      vocab_dir: where a real dataset's vocabulary is cached; default next to the prepared
        data, inside its versioned directory.
      read_threads: threads reading and decoding ahead of training.

    Raises:
      ValueError: an argument out of range or an unknown ``name``.
      experiments.data.prepare.DatasetNotPreparedError: a real dataset is missing and cannot
        be prepared here; the message says how.
      experiments.errors.DataError: the prepared copy is corrupt (a file truncated, missing
        or damaged); the message names it and the command that rebuilds it.
    """
    _check_arguments(
        name,
        max_length=max_length,
        batch_size=batch_size,
        image_size=image_size,
        vocab_size=vocab_size,
    )
    # Each JAX process (host) trains on its own records; checked before anything is prepared.
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    pipeline.shard_batch_size(batch_size, shard)
    source = CAPTION_DATASETS[name]
    builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir, download=download)
    # Records keep the encoded image: decoding happens in the reading threads, and reading
    # captions (for the vocabulary) decodes nothing.
    skip = {"image": tfds.decode.SkipDecoding()}
    splits = {
        split: open_split(name, builder, tfds_split, decoders=skip)
        for split, tfds_split in source.splits.items()
    }
    native = builder.info.features["image"].shape[0]
    size = image_size or native or DEFAULT_PHOTO_SIZE
    cache_dir = Path(vocab_dir) if vocab_dir else Path(builder.data_dir) / "vocabulary"
    vocabulary = _vocabulary(source, splits["train"], vocab_size=vocab_size, cache_dir=cache_dir)
    featurizer = functools.partial(
        _Featurizer,
        source=source,
        vocabulary=vocabulary,
        image_size=size,
        native_size=native,
        max_boxes=MAX_DIGITS if source.boxes else 0,
    )
    train = train_dataset(
        splits["train"],
        featurize=featurizer(),
        max_length=max_length,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        read_threads=read_threads,
        shard=shard,
    )
    return CaptionData(
        name=name,
        vocabulary=vocabulary,
        max_length=max_length,
        batch_size=batch_size,
        image_size=size,
        channels=source.channels,
        max_boxes=MAX_DIGITS if source.boxes else 0,
        train=train,
        splits={split: splits[split] for split in EVAL_SPLITS},
        featurize=featurizer(truncate_to=max_length),
    )
