"""The captioning entry point on the offline digit scenes: batches, resume, evaluation."""

import socket

import grain
import numpy as np
import pytest
from etils import epath

from experiments.data.captioning import (
    CaptionData,
    frame_caption,
    make_caption_data,
    scale_boxes,
)
from experiments.data.digit_scenes import DIGIT_WORDS
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

NAME = "digit_scenes/smoke"
SPLIT_SIZES = {"validation": 60, "test": 60}
MAX_LENGTH = 23  # prime; the longest caption is 20 words + EOS
BATCH_SIZE = 7
MAX_BOXES = 4


def _blocked(*args, **kwargs):
    raise AssertionError("the offline dataset touched the network")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def data(data_dir) -> CaptionData:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", _blocked)
        patch.setattr(socket.socket, "connect", _blocked)
        return make_caption_data(
            NAME, data_dir=data_dir, batch_size=BATCH_SIZE, max_length=MAX_LENGTH, seed=11
        )


def _equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        np.array_equal(first[key], second[key]) for key in first
    )


def _digit_ids(data: CaptionData) -> dict[int, int]:
    return {data.vocabulary.id_of(word): digit for digit, word in enumerate(DIGIT_WORDS)}


def test_vocabulary_is_the_grammar_with_shared_specials(data):
    assert data.vocab_size == 23 == len(data.words)
    assert data.words[:4] == ("<pad>", "<unk>", "<s>", "</s>")
    assert data.vocabulary.id_of("zero") == 4 and data.vocabulary.id_of(",") == 22
    assert (data.image_size, data.channels, data.max_boxes) == (64, 1, MAX_BOXES)


def test_training_batches_shapes_dtypes_and_framing(data):
    iterator = data.train_iterator()
    lengths = set()
    for _ in range(12):
        batch = next(iterator)
        shapes = {key: (value.shape, value.dtype) for key, value in batch.items()}
        assert shapes == {
            "image": ((BATCH_SIZE, 64, 64, 1), np.float32),
            "caption": ((BATCH_SIZE, MAX_LENGTH + 1), np.int32),
            "caption_length": ((BATCH_SIZE,), np.int32),
            "word_boxes": ((BATCH_SIZE, MAX_LENGTH + 1), np.int32),
            "boxes": ((BATCH_SIZE, MAX_BOXES, 4), np.int32),
            "labels": ((BATCH_SIZE, MAX_BOXES), np.int32),
        }
        assert batch["image"].min() >= 0.0 and 0.99 < batch["image"].max() <= 1.0
        for row in range(BATCH_SIZE):
            caption, length = batch["caption"][row], batch["caption_length"][row]
            lengths.add(int(length))
            assert caption[0] == BOS_ID and caption[length - 1] == EOS_ID
            assert BOS_ID not in caption[1:] and EOS_ID not in caption[: length - 1]
            assert PAD_ID not in caption[:length] and not caption[length:].any()
            count = int((batch["labels"][row] >= 0).sum())
            assert 2 <= count <= MAX_BOXES
            assert (batch["boxes"][row, count:] == -1).all()
            assert (batch["labels"][row, count:] == -1).all()
    # 2, 3 and 4 digits: 5 or 6, 11 to 13, 17 to 20 words, + BOS and EOS.
    assert min(lengths) <= 8 and max(lengths) >= 19


def test_word_boxes_align_with_caption_positions(data):
    digit_ids = _digit_ids(data)
    batch = next(data.train_iterator())
    for row in range(BATCH_SIZE):
        for token, ref in zip(batch["caption"][row], batch["word_boxes"][row], strict=True):
            if int(token) in digit_ids:
                assert batch["labels"][row, ref] == digit_ids[int(token)]
            else:
                assert ref == -1
    # The method a metric uses on generated captions gives the stored truth on references.
    assert np.array_equal(data.word_boxes(batch["caption"], batch["labels"]), batch["word_boxes"])


def test_images_have_ink_only_inside_the_boxes(data):
    batch = next(data.train_iterator())
    for image, boxes in zip(batch["image"][..., 0], batch["boxes"], strict=True):
        outside = image.copy()
        for top, left, bottom, right in boxes[boxes[:, 0] >= 0]:
            inside = image[top:bottom, left:right]
            # Tight: ink on every edge of the box.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            outside[top:bottom, left:right] = 0
        assert not outside.any()


def test_iterator_state_resumes_exactly(data, tmp_path):
    """Take N batches, checkpoint as the runner does, take M more; a fresh iterator restored
    from the checkpoint yields the same M batches."""
    iterator = data.train_iterator()
    for _ in range(5):
        next(iterator)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(iterator))
    expected = [next(iterator) for _ in range(6)]
    restored = handler.restore(
        epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(data.train_iterator())
    )
    assert all(
        _equal(a, b) for a, b in zip(expected, (next(restored) for _ in range(6)), strict=True)
    )
    # And a fresh iterator replays the stream from the start, deterministically.
    replay, again = data.train_iterator(), data.train_iterator()
    assert all(_equal(next(replay), next(again)) for _ in range(3))
    # The state is small and plain, as CheckpointSave writes it.
    assert iterator.get_state() != data.train_iterator().get_state()


def test_seed_sets_the_order(data, data_dir):
    other = make_caption_data(NAME, data_dir=data_dir, batch_size=BATCH_SIZE, seed=12)
    assert not np.array_equal(
        next(data.train_iterator())["caption"], next(other.train_iterator())["caption"]
    )


def test_eval_batches_follow_eval_examples(data):
    examples = data.eval_examples(split="test")
    assert len(examples) == SPLIT_SIZES["test"]
    batches = data.eval_batches(split="test")
    assert len(batches) == -(-SPLIT_SIZES["test"] // BATCH_SIZE)
    assert all(b["caption"].shape == (BATCH_SIZE, MAX_LENGTH + 1) for b in batches)
    real_rows = sum(int((b["caption_length"] > 0).sum()) for b in batches)
    assert real_rows == SPLIT_SIZES["test"]
    padding = batches[-1]["caption_length"] == 0
    assert padding.sum() == len(batches) * BATCH_SIZE - SPLIT_SIZES["test"]
    assert not batches[-1]["image"][padding].any() and (batches[-1]["labels"][padding] == -1).all()
    for i in (0, 1, BATCH_SIZE + 2, SPLIT_SIZES["test"] - 1):
        batch, row, example = batches[i // BATCH_SIZE], i % BATCH_SIZE, examples[i]
        (reference,) = example.references
        assert data.decode_captions(batch["caption"][row : row + 1]) == [reference]
        assert np.array_equal(batch["image"][row], example.image)
        count = len(example.labels)
        assert np.array_equal(batch["boxes"][row, :count], example.boxes)
        assert np.array_equal(batch["labels"][row, :count], example.labels)
        (word_boxes,) = example.word_boxes
        length = batch["caption_length"][row]
        assert np.array_equal(batch["word_boxes"][row, 1 : length - 1], word_boxes)
    assert len(data.eval_examples(3, split="validation")) == 3
    # The references for BLEU: the same captions, in the word form the vocabulary decodes to.
    decoded = [data.decode_captions(b["caption"][b["caption_length"] > 0]) for b in batches]
    assert data.eval_references(split="test") == [(c,) for texts in decoded for c in texts]


def test_word_boxes_of_a_generated_caption(data):
    ids = data.encode_captions(["a seven left of a nine , a two above the nine"], width=14)
    labels = np.array([[9, 7, -1, -1]])
    #          BOS a  seven left of  a  nine ,  a  two above the nine EOS
    expected = [-1, -1, 1, -1, -1, -1, 0, -1, -1, -1, -1, -1, 0, -1]
    assert data.word_boxes(ids, labels).tolist() == [expected]  # "two" is not in the scene
    assert data.word_boxes(ids[0], labels[0]).tolist() == expected  # unbatched


def test_encode_decode_and_pieces(data):
    texts = ["a one left of a two", "an eight above a zero , a six below the zero"]
    ids = data.encode_captions(texts)
    assert ids.shape == (2, MAX_LENGTH + 1) and (ids[:, 0] == BOS_ID).all()
    assert data.decode_captions(ids) == texts
    assert data.caption_pieces(ids[0]) == ["<s>", *texts[0].split(), "</s>"]
    assert data.decode_captions(data.encode_captions(texts, width=5)) == [
        "a one left",
        "an eight above",
    ]


def test_smaller_images_scale_boxes_outward(data_dir, data):
    small = make_caption_data(
        NAME, data_dir=data_dir, batch_size=BATCH_SIZE, max_length=MAX_LENGTH, image_size=32
    )
    batch, full = small.eval_batches(7, split="test")[0], data.eval_batches(7, split="test")[0]
    assert batch["image"].shape == (BATCH_SIZE, 32, 32, 1)
    real = full["boxes"] >= 0
    assert np.array_equal(batch["boxes"][real], scale_boxes(full["boxes"], 0.5)[real])
    assert np.array_equal(batch["word_boxes"], full["word_boxes"])


def test_scale_boxes_rounds_outward():
    boxes = np.array([[3, 4, 9, 10], [0, 1, 64, 63]])
    assert scale_boxes(boxes, 0.5).tolist() == [[1, 2, 5, 5], [0, 0, 32, 32]]
    assert scale_boxes(boxes, 1.5).tolist() == [[4, 6, 14, 15], [0, 1, 96, 95]]


def test_frame_caption_truncates_keeping_eos():
    framed = frame_caption([7, 8, 9], [0, -1, 1], truncate_to=3)
    assert framed["caption"].tolist() == [BOS_ID, 7, 8, EOS_ID]
    assert framed["word_boxes"].tolist() == [-1, 0, -1, -1]
    with pytest.raises(ValueError, match=r"word_boxes: expected one per word \(3\), got 2"):
        frame_caption([7, 8, 9], [0, 1])


def test_bad_arguments_name_themselves(data, data_dir):
    with pytest.raises(ValueError, match=r"name: expected one of \['coco_captions', "):
        make_caption_data("mnist", data_dir=data_dir)
    with pytest.raises(ValueError, match="max_length: expected at least 2"):
        make_caption_data(NAME, data_dir=data_dir, max_length=1)
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        make_caption_data(NAME, data_dir=data_dir, batch_size=0)
    with pytest.raises(ValueError, match="image_size: expected None or a positive int, got -3"):
        make_caption_data(NAME, data_dir=data_dir, image_size=-3)
    with pytest.raises(ValueError, match=r"split: expected one of \['test', 'validation'\]"):
        data.eval_examples(split="train")
    with pytest.raises(ValueError, match="limit: expected None or a count >= 0, got -1"):
        data.eval_batches(-1)
