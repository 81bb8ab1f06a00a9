"""TFDS's ``tiny_shakespeare`` and ``lm1b``, built without TensorFlow.

TFDS's own builders of these two read their downloads with ``tf.io.gfile`` (and TFDS extracts
archives with it too), so without TensorFlow ``download_and_prepare`` fails after the download
with ``No module named 'tensorflow'``. These builders write the same datasets (name, version,
features, splits, example keys) reading files with the standard library, so a dataset prepared
by either is read by the other. They are not registered with TFDS (``skip_registration``); TFDS's
registered builders read what these prepare, and ``prepare.KNOWN_BUILDERS`` names these for
building.

Both also build from a file already on disk: pass ``manual_dir`` holding ``input.txt``
(tiny_shakespeare) or ``1-billion-word-language-modeling-benchmark-r13output.tar.gz`` (lm1b).
A file's SHA-256 is checked against the one TFDS records for it before anything is generated.
"""

import fnmatch
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import tensorflow_datasets as tfds


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(dl_manager: tfds.download.DownloadManager, *, url: str, file_name: str) -> Path:
    """``file_name`` from the manual directory if it is there, else downloaded from ``url``."""
    try:
        manual = Path(dl_manager.manual_dir) / file_name
    except AssertionError:  # TFDS's way of saying that no manual_dir was given, or it is empty
        manual = None
    if manual is not None and manual.is_file():
        return manual
    return Path(dl_manager.download(url))


def check_sha256(path: Path, expected: str) -> None:
    """Raise unless ``path`` is the file TFDS records (its ``checksums.tsv``)."""
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(
            f"{path}: SHA-256 {actual}, expected {expected}; is it the right file, complete?"
        )


class TinyShakespeare(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """Karpathy's char-rnn ``input.txt`` (1,115,394 characters), one record per split."""

    name = "tiny_shakespeare"
    VERSION = tfds.core.Version("1.0.0")
    URL = (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    )
    FILE_NAME = "input.txt"
    SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Optional: put {FILE_NAME} from {URL} in manual_dir."

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="40,000 lines of Shakespeare from a variety of his plays.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            supervised_keys=None,
            homepage="https://github.com/karpathy/char-rnn/blob/master/data/tinyshakespeare/input.txt",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = fetch(dl_manager, url=self.URL, file_name=self.FILE_NAME)
        check_sha256(path, self.SHA256)
        text = path.read_text(encoding="utf-8")
        # TFDS's 90/5/5 cut (`tiny_shakespeare_dataset_builder.py`), kept to the character.
        i = int(len(text) * 0.9)
        train, rest = text[:i], text[i:]
        i = int(len(rest) * 0.5)
        pieces = {"train": train, "validation": rest[:i], "test": rest[i:]}
        return {split: self._generate_examples(split, piece) for split, piece in pieces.items()}

    def _generate_examples(self, split: str, text: str) -> Iterator[tuple[str, dict[str, str]]]:
        yield split, {"text": text}


class Lm1b(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """The One Billion Word benchmark (Chelba et al. 2013): one record per sentence."""

    name = "lm1b"
    VERSION = tfds.core.Version("1.1.0")
    URL = (
        "http://www.statmt.org/lm-benchmark/"
        "1-billion-word-language-modeling-benchmark-r13output.tar.gz"
    )
    FILE_NAME = "1-billion-word-language-modeling-benchmark-r13output.tar.gz"
    SHA256 = "01ba60381110baf7f189dfd2b8374de371e8c9a340835793f190bdae9e90a34e"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Optional: put {FILE_NAME} from {URL} in manual_dir."
    # Members of the archive per split, as TFDS globs them after extracting it.
    _TOP = "1-billion-word-language-modeling-benchmark-r13output"
    MEMBERS: ClassVar[dict[str, str]] = {
        "train": f"{_TOP}/training-monolingual.tokenized.shuffled/news.en-*",
        "test": f"{_TOP}/heldout-monolingual.tokenized.shuffled/news.en.heldout-*",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="A benchmark corpus for measuring progress in language modelling.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            supervised_keys=("text", "text"),
            homepage="http://www.statmt.org/lm-benchmark/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = fetch(dl_manager, url=self.URL, file_name=self.FILE_NAME)
        check_sha256(path, self.SHA256)
        return {
            split: self._generate_examples(path, pattern) for split, pattern in self.MEMBERS.items()
        }

    def _generate_examples(
        self, archive_path: Path, pattern: str
    ) -> Iterator[tuple[str, dict[str, str]]]:
        # Read the archive as a stream rather than extracting its 4 GB of text first.
        with tarfile.open(archive_path, "r|gz") as archive:
            for member in archive:
                if not (member.isfile() and fnmatch.fnmatch(member.name, pattern)):
                    continue
                file = archive.extractfile(member)
                if file is None:
                    continue
                name = os.path.basename(member.name)
                # One shard (~40 MB) at a time; newline=None splits lines as TFDS's text-mode
                # read of the extracted file does (universal newlines).
                lines = io.StringIO(file.read().decode("utf-8"), newline=None)
                for index, line in enumerate(lines):
                    yield f"{name}_{index}", {"text": line.strip()}
