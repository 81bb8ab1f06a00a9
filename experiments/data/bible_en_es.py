"""``bible_en_es``: English-Spanish verse pairs (KJV / Reina-Valera 1909) as a TFDS dataset.

Reads the pairs shipped in ``bible/kjv_rv1909.tsv.xz`` (see ``bible/README.md`` for provenance,
licence and counts), so building needs no network and takes seconds. Written as ``array_record``
and read with ``tfds.data_source``; TensorFlow is not needed for either.

Splits hold out whole chapters, chosen by a hash of the chapter reference (``split_of``), so no
verse of a held-out chapter, nor its neighbours' context, is seen in training.
"""

import functools
import lzma
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

PAIRS_FILE = Path(__file__).parent / "bible" / "kjv_rv1909.tsv.xz"
_COLUMNS = ("book", "chapter", "verse", "en", "es")

# One chapter in HOLDOUT_MODULUS goes to test and one to validation (5% each); a hash rather
# than "every 20th chapter" so that held-out chapters do not line up with book boundaries.
HOLDOUT_MODULUS = 20
_TEST_BUCKET = 0
_VALIDATION_BUCKET = 1


def split_of(book: str, chapter: int) -> str:
    """The split of every verse in chapter ``chapter`` of ``book`` ("Genesis", "I Samuel", ...).

    CRC-32 of ``"{book} {chapter}"`` modulo 20: 0 -> test, 1 -> validation, else train. CRC-32
    is fixed by its standard, unlike Python's ``hash``, so the split never changes.
    """
    bucket = zlib.crc32(f"{book} {chapter}".encode()) % HOLDOUT_MODULUS
    if bucket == _TEST_BUCKET:
        return "test"
    if bucket == _VALIDATION_BUCKET:
        return "validation"
    return "train"


@functools.cache
def read_pairs(path: Path = PAIRS_FILE) -> tuple[dict[str, str | int], ...]:
    """Rows of the shipped TSV as dicts with keys book, chapter, verse, en, es (read once)."""
    rows: list[dict[str, str | int]] = []
    with lzma.open(path, "rt", encoding="utf-8") as lines:
        header = next(lines).rstrip("\n").split("\t")
        if tuple(header) != _COLUMNS:
            raise ValueError(f"{path}: expected columns {_COLUMNS}, got {tuple(header)}")
        for number, line in enumerate(lines, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(_COLUMNS):
                raise ValueError(f"{path}:{number}: expected 5 tab-separated fields")
            book, chapter, verse, en, es = fields
            rows.append(
                {"book": book, "chapter": int(chapter), "verse": int(verse), "en": en, "es": es}
            )
    return tuple(rows)


class BibleEnEs(tfds.core.GeneratorBasedBuilder):
    """English-Spanish verse pairs from the King James Version and the Reina-Valera 1909."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "30,811 pairs; chapters held out by CRC-32 (see split_of)."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly rather than with `dataset_info_from_configs`, which reads metadata
        # files from a per-dataset package directory this single-file builder does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "en": tfds.features.Text(),
                    "es": tfds.features.Text(),
                    "reference": tfds.features.Text(),  # "Genesis 1:1"
                    "book": tfds.features.Text(),
                    "chapter": np.int32,
                    "verse": np.int32,
                }
            ),
            supervised_keys=("en", "es"),
            homepage="https://ebible.org/details.php?id=eng-kjv2006",
            license="Public domain (both texts); see experiments/data/bible/README.md",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is shipped with the project
        return {split: self._generate_examples(split) for split in ("train", "validation", "test")}

    def _generate_examples(self, split: str):
        for row in read_pairs():
            if split_of(str(row["book"]), int(row["chapter"])) != split:
                continue
            reference = f"{row['book']} {row['chapter']}:{row['verse']}"
            yield reference, {**row, "reference": reference}
