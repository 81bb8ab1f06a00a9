"""COCO and Flickr8k through the captioning interface: clear, fast failures when they are not
here, and the reading path on tiny stand-ins (no network, no TensorFlow)."""

import importlib.util
import io
import socket
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments.data.captioning import make_caption_data
from experiments.data.prepare import DatasetNotPreparedError, prepare
from experiments.data.tokenizer import BOS_ID, UNK_ID


@pytest.fixture
def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "offline (blocked by the test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)


@pytest.fixture
def no_tensorflow(monkeypatch):
    """As on our machines, even where a developer has TensorFlow installed."""
    find_spec = importlib.util.find_spec

    def without_tensorflow(name, *args, **kwargs):
        return None if name == "tensorflow" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_tensorflow)


def _jpeg(seed: int, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG")
    return buffer.getvalue()


# ---- COCO ----------------------------------------------------------------------------------


def test_coco_not_prepared_fails_fast_and_says_how(tmp_path, offline, no_tensorflow):
    start = time.monotonic()
    with pytest.raises(DatasetNotPreparedError) as error:
        make_caption_data("coco_captions", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert f"'coco_captions' is not prepared in data_dir={tmp_path}" in message
    assert "needs TensorFlow, which is not installed here" in message
    assert "tfds build coco_captions --file_format=array_record --data_dir=DIR" in message
    assert f"copy DIR/coco_captions/ to {tmp_path}/coco_captions/" in message


def _fake_coco_builder():
    """A builder with the name, splits and caption features of TFDS's coco_captions, not
    registered (so TFDS's own, which needs TensorFlow, stays the registered one)."""
    with tfds.core.registered.skip_registration():

        class CocoCaptions(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.1.0")
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]  # noqa: RUF012

            def _info(self):
                features = {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "image/filename": tfds.features.Text(),
                    "image/id": np.int64,
                    "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
                }
                return tfds.core.DatasetInfo(
                    builder=self, features=tfds.features.FeaturesDict(features)
                )

            def _split_generators(self, dl_manager):
                splits = ("train", "val", "test", "restval")
                return {split: self._generate_examples(split) for split in splits}

            def _generate_examples(self, split):
                for i in range(3):
                    captions = [
                        {"text": f"A Cat sits on {split} mat {k}.", "id": k} for k in range(5)
                    ]
                    example = {
                        "image": _jpeg(i),
                        "image/filename": f"{split}{i}.jpg",
                        "image/id": i,
                        "captions": captions,
                    }
                    yield i, example

    return CocoCaptions


def test_coco_prepared_elsewhere_is_read_without_tensorflow(tmp_path, offline, no_tensorflow):
    builder = _fake_coco_builder()(data_dir=tmp_path, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    data = make_caption_data("coco_captions", data_dir=tmp_path, batch_size=2, image_size=13)
    # Vocabulary from training captions only, lower-cased, most frequent first.
    assert data.words[4:11] == (".", "a", "cat", "mat", "on", "sits", "train")
    assert "val" not in data.words and data.vocabulary.id_of("val") == UNK_ID
    batch = next(data.train_iterator())
    assert batch["image"].shape == (2, 13, 13, 3) and batch["image"].dtype == np.float32
    assert batch["boxes"].shape == (2, 0, 4) and (batch["word_boxes"] == -1).all()
    assert (batch["caption"][:, 0] == BOS_ID).all()
    (example, *_) = data.eval_examples(split="validation")
    assert example.references == tuple(f"A Cat sits on val mat {k}." for k in range(5))
    # For BLEU, in the word form of decoded captions: lower case, punctuation split off.
    references = tuple(f"a cat sits on val mat {k} ." for k in range(5))
    assert data.eval_references(1, split="validation") == [references]
    assert [len(w) for w in example.word_boxes] == [8] * 5  # a cat sits on val mat k .
    assert len(list((tmp_path / "coco_captions").rglob("words10000.*.json"))) == 1


# ---- Flickr8k ------------------------------------------------------------------------------

NAMES = [f"{1000 + i}_a1b2.jpg" for i in range(5)]
SPLIT_LISTS = {
    "Flickr_8k.trainImages.txt": NAMES[:3],
    "Flickr_8k.devImages.txt": NAMES[3:4],
    "Flickr_8k.testImages.txt": NAMES[4:],
}


def _flickr_files(root, *, text=True, drop_image=None):
    """The original archives' layout, unzipped (with the official zip's misspelt folder)."""
    images = root / "Flicker8k_Dataset"
    images.mkdir(parents=True)
    for i, name in enumerate(NAMES):
        if name != drop_image:
            # One grayscale photo, as Flickr8k has a few.
            (images / name).write_bytes(_jpeg(i, "L" if i == 1 else "RGB", (30 + 7 * i, 24)))
    if text:
        folder = root / "Flickr8k_text"
        folder.mkdir()
        lines = [
            f"{name}#{k}\tA dog{' runs' if i < 3 else ' sleeps'} in picture {k} ."
            for i, name in enumerate(NAMES)
            for k in range(5)
        ]
        (folder / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
        for file, names in SPLIT_LISTS.items():
            (folder / file).write_text("\n".join(names) + "\n")
    return root


def test_flickr8k_without_manual_dir_fails_fast_and_shows_the_layout(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(DatasetNotPreparedError) as error:
        make_caption_data("flickr8k", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "'flickr8k' is not prepared" in message and "no manual_dir given" in message
    assert "python -m experiments.data flickr8k --manual_dir THAT_DIR" in message
    assert "Flickr8k_Dataset/" in message and "Flickr8k.token.txt" in message
    with pytest.raises(DatasetNotPreparedError, match=r"manual_dir=.*nowhere is missing or empty"):
        prepare("flickr8k", data_dir=tmp_path, manual_dir=tmp_path / "nowhere")


def test_flickr8k_names_the_missing_files(tmp_path, offline):
    manual = _flickr_files(tmp_path / "manual", text=False)
    with pytest.raises(DatasetNotPreparedError) as error:
        make_caption_data("flickr8k", data_dir=tmp_path / "data", manual_dir=manual)
    message = str(error.value)
    assert "lacks Flickr8k.token.txt, Flickr_8k.trainImages.txt" in message
    assert "Flickr8k_Dataset" not in message.split("lacks")[1].split(".\n")[0]
    missing = _flickr_files(tmp_path / "partial", drop_image=NAMES[2])
    with pytest.raises(DatasetNotPreparedError, match=rf"1 listed images missing .*{NAMES[2]}"):
        make_caption_data("flickr8k", data_dir=tmp_path / "data", manual_dir=missing)


def test_flickr8k_builds_from_local_files(tmp_path, offline):
    manual = _flickr_files(tmp_path / "manual")
    data = make_caption_data(
        "flickr8k", data_dir=tmp_path / "data", manual_dir=manual, batch_size=2, image_size=11
    )
    assert "runs" in data.words and "sleeps" not in data.words  # training captions only
    batch = next(data.train_iterator())
    assert batch["image"].shape == (2, 11, 11, 3) and batch["labels"].shape == (2, 0)
    (example,) = data.eval_examples(split="test")
    assert example.references == tuple(f"A dog sleeps in picture {k} ." for k in range(5))
    assert example.image.shape == (11, 11, 3)
    assert data.decode_captions(data.eval_batches(split="test")[0]["caption"][:1]) == [
        "a dog <unk> in picture 0 ."
    ]
    # Prepared now: later calls need no manual_dir.
    again = make_caption_data("flickr8k", data_dir=tmp_path / "data", image_size=11)
    assert again.words == data.words
