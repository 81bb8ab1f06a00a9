"""``flickr8k``: 8,000 Flickr photos with five captions each, built from files you download.

Hodosh, Young & Hockenmaier 2013 ("Framing Image Description as a Ranking Task", JAIR 47), one
of the three datasets of Xu et al. 2015. Its licence does not let us (or TFDS) redistribute the
photos, so this builder reads the two archives of the original distribution from ``manual_dir``;
see ``MANUAL_DOWNLOAD_INSTRUCTIONS`` for the layout. Splits are the official lists (6,000 train,
1,000 dev -> ``validation``, 1,000 test), as in Xu et al.

Images are stored as the original JPEG bytes (no re-encoding, no TensorFlow needed) with their
file name and their captions, in the token file's order.
"""

import collections
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from experiments.data.prepare import DatasetNotPreparedError

__all__ = ["Flickr8k", "find_files", "read_captions"]

# Both spellings: the official Flickr8k_Dataset.zip unpacks to "Flicker8k_Dataset".
IMAGE_DIRS = ("Flickr8k_Dataset", "Flicker8k_Dataset")
# The text files sit in Flickr8k_text/ (as Flickr8k_text.zip unpacks) or in manual_dir itself.
TEXT_DIRS = ("Flickr8k_text", ".")
CAPTIONS_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "validation": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}

_INSTRUCTIONS = f"""\
Flickr8k: request the two archives Flickr8k_Dataset.zip and Flickr8k_text.zip from the
University of Illinois (https://hockenmaier.cs.illinois.edu/DenotationGraph/, "Flickr 8k"),
unzip both into one directory and pass it as manual_dir. Expected layout:

  MANUAL_DIR/
    {IMAGE_DIRS[0]}/ (or {IMAGE_DIRS[1]}/)   the 8,091 .jpg photos
    {TEXT_DIRS[0]}/ (or these files directly in MANUAL_DIR)
      {CAPTIONS_FILE}          lines "<image>.jpg#<0-4><TAB><caption>"
      {SPLIT_FILES["train"]}   one image file name per line (6,000)
      {SPLIT_FILES["validation"]}     (1,000)
      {SPLIT_FILES["test"]}    (1,000)
"""


def _first_existing(root: Path, candidates: tuple[str, ...], name: str = "") -> Path | None:
    for candidate in candidates:
        path = root / candidate / name
        if path.exists():
            return path
    return None


def find_files(root: Path) -> tuple[Path, Path, dict[str, Path]]:
    """``(image_dir, captions_file, split -> list file)`` in ``root``, or an error naming every
    missing piece and the expected layout."""
    image_dir = _first_existing(root, IMAGE_DIRS)
    captions = _first_existing(root, TEXT_DIRS, CAPTIONS_FILE)
    splits = {split: _first_existing(root, TEXT_DIRS, file) for split, file in SPLIT_FILES.items()}
    missing = [f"{' or '.join(IMAGE_DIRS)}/"] if image_dir is None else []
    missing += [CAPTIONS_FILE] if captions is None else []
    missing += [SPLIT_FILES[split] for split, path in splits.items() if path is None]
    if image_dir is None or captions is None or missing:
        raise DatasetNotPreparedError(
            f"Dataset 'flickr8k': manual_dir={root} lacks {', '.join(missing)}.\n{_INSTRUCTIONS}"
        )
    return image_dir, captions, {split: path for split, path in splits.items() if path}


def read_captions(path: Path) -> dict[str, list[str]]:
    """Image file name -> its captions, in the file's order (``name.jpg#i<TAB>caption``)."""
    captions: dict[str, list[str]] = collections.defaultdict(list)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            key, tab, caption = line.rstrip("\n").partition("\t")
            if not tab or "#" not in key:
                raise ValueError(f"{path}:{number}: expected '<image>.jpg#<i><TAB><caption>'")
            captions[key.rsplit("#", 1)[0]].append(caption.strip())
    return dict(captions)


def _split_images(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Flickr8k(tfds.core.GeneratorBasedBuilder):
    """Flickr8k photos and captions from manually downloaded files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Official 6000/1000/1000 split."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly, as in bible_en_es: no per-dataset metadata directory.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "image/filename": tfds.features.Text(),
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            homepage="https://hockenmaier.cs.illinois.edu/DenotationGraph/",
            citation="Hodosh, Young & Hockenmaier 2013, JAIR 47, 853-899",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        image_dir, captions_file, split_files = find_files(Path(dl_manager.manual_dir))
        captions = read_captions(captions_file)
        images = {split: _split_images(path) for split, path in split_files.items()}
        _check_complete(image_dir, images, captions)
        return {
            split: self._generate_examples(image_dir, names, captions)
            for split, names in images.items()
        }

    def _generate_examples(
        self, image_dir: Path, names: list[str], captions: Mapping[str, list[str]]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for name in names:
            # Bytes, not a path: TFDS would re-encode a decoded image with TensorFlow.
            yield (
                name,
                {
                    "image": (image_dir / name).read_bytes(),
                    "image/filename": name,
                    "captions": captions[name],
                },
            )


def _check_complete(
    image_dir: Path, images: Mapping[str, list[str]], captions: Mapping[str, list[str]]
) -> None:
    """Every listed image has a file and captions; else say which (a partial unzip)."""
    listed = [name for names in images.values() for name in names]
    no_file = [name for name in listed if not (image_dir / name).is_file()]
    no_captions = [name for name in listed if not captions.get(name)]
    problems = []
    if no_file:
        problems.append(f"{len(no_file)} listed images missing from {image_dir} ({no_file[:3]})")
    if no_captions:
        problems.append(f"{len(no_captions)} listed images without captions ({no_captions[:3]})")
    if problems:
        raise DatasetNotPreparedError(
            f"Dataset 'flickr8k': {'; '.join(problems)}.\n{_INSTRUCTIONS}"
        )
