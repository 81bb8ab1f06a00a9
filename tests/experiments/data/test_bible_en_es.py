"""The shipped default dataset end to end: TFDS build offline, split, tokenizers, batches."""

import socket

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from experiments.data import bible_en_es
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from experiments.data.translation import make_translation_data

# The counts documented in experiments/data/bible/README.md.
SPLIT_SIZES = {"train": 27754, "validation": 1576, "test": 1481}
MAX_LENGTH = 41  # prime, so a mixed-up axis or bucket shows
BATCH_SIZE = 7
VOCAB_SIZE = 503


def _blocked(*args, **kwargs):
    raise AssertionError("the offline dataset touched the network")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def data(data_dir):
    """Built once per module, with the network blocked to prove the build is offline."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", _blocked)
        patch.setattr(socket.socket, "connect", _blocked)
        return make_translation_data(
            data_dir=data_dir,
            source_vocab_size=VOCAB_SIZE,
            target_vocab_size=VOCAB_SIZE,
            max_length=MAX_LENGTH,
            batch_size=BATCH_SIZE,
            seed=11,
        )


def _equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        np.array_equal(first[key], second[key]) for key in first
    )


def test_builds_array_record_and_loads_with_data_source(data, data_dir):
    for split, size in SPLIT_SIZES.items():
        source = tfds.data_source("bible_en_es", split=split, data_dir=data_dir, download=False)
        assert len(source) == size
    version_dir = data_dir / "bible_en_es" / "1.0.0"
    assert list(version_dir.glob("*.array_record-*"))
    record = data.splits["test"][0]
    assert set(record) == {"en", "es", "reference", "book", "chapter", "verse"}
    reference = record["reference"].decode()
    assert reference == f"{record['book'].decode()} {record['chapter']}:{record['verse']}"


def test_split_holds_out_whole_chapters(data, data_dir):
    chapters = {}
    for split in SPLIT_SIZES:
        source = tfds.data_source("bible_en_es", split=split, data_dir=data_dir, download=False)
        records = source.__getitems__(list(range(len(source))))
        chapters[split] = {(r["book"].decode(), int(r["chapter"])) for r in records}
        assert all(
            bible_en_es.split_of(book, chapter) == split for book, chapter in chapters[split]
        )
    assert not chapters["train"] & chapters["validation"]
    assert not chapters["train"] & chapters["test"]
    assert not chapters["validation"] & chapters["test"]
    assert (len(chapters["validation"]), len(chapters["test"])) == (65, 55)


def test_split_rule_is_stable():
    # CRC-32 is fixed by its standard: these never move between splits.
    assert bible_en_es.split_of("Genesis", 1) == "validation"
    assert bible_en_es.split_of("John", 4) == "test"
    assert bible_en_es.split_of("John", 3) == "train"
    assert [bible_en_es.split_of("Psalms", c) for c in range(1, 151)].count("test") == 5


def test_tokenizers_trained_on_train_split_and_cached(data, data_dir):
    source, target = data.source_tokenizer, data.target_tokenizer
    assert source is not target
    assert source.vocab_size == target.vocab_size == VOCAB_SIZE
    cache = data_dir / "bible_en_es" / "1.0.0" / "sentencepiece"
    assert source.path.parent == target.path.parent == cache
    assert source.path.name.startswith("en.bpe503.") and target.path.name.startswith("es.bpe503.")
    sentences, references = data.eval_pairs(20, split="test")
    for text, tokenizer in [*((s, source) for s in sentences), *((r, target) for r in references)]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_training_batches_shapes_dtypes_and_framing(data):
    iterator = data.train_iterator()
    widths = set()
    for _ in range(30):
        batch = next(iterator)
        assert set(batch) == {"source", "target", "source_length", "target_length"}
        assert all(array.dtype == np.int32 for array in batch.values())
        width = batch["source"].shape[1]
        assert batch["source"].shape == (BATCH_SIZE, width)
        assert batch["target"].shape == (BATCH_SIZE, width + 1)
        assert width in data.buckets
        widths.add(width)
        for row in range(BATCH_SIZE):
            source_length = batch["source_length"][row]
            target_length = batch["target_length"][row]
            source, target = batch["source"][row], batch["target"][row]
            assert 2 <= source_length <= MAX_LENGTH and 3 <= target_length <= MAX_LENGTH + 1
            assert source[source_length - 1] == EOS_ID and EOS_ID not in source[: source_length - 1]
            assert target[0] == BOS_ID and target[target_length - 1] == EOS_ID
            assert BOS_ID not in source and BOS_ID not in target[1:]
            assert not source[source_length:].any() and not target[target_length:].any()
            assert PAD_ID not in source[:source_length] and PAD_ID not in target[:target_length]
    assert len(widths) > 1  # length bucketing is on


def test_iterator_state_resumes_exactly(data, tmp_path):
    """Take N batches, checkpoint as the runner does, take M more; a fresh iterator restored
    from the checkpoint yields the same M batches."""
    iterator = data.train_iterator()
    for _ in range(5):
        next(iterator)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(iterator))
    expected = [next(iterator) for _ in range(11)]

    restored = handler.restore(
        epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(data.train_iterator())
    )
    assert all(
        _equal(a, b) for a, b in zip(expected, (next(restored) for _ in range(11)), strict=True)
    )
    # And a fresh iterator replays the stream from the start, deterministically.
    replay, again = data.train_iterator(), data.train_iterator()
    assert all(_equal(next(replay), next(again)) for _ in range(6))


def test_eval_batches_follow_eval_pairs(data):
    sources, references = data.eval_pairs(split="test")
    assert len(sources) == len(references) == SPLIT_SIZES["test"]
    batches = data.eval_batches(split="test")
    assert len(batches) == -(-SPLIT_SIZES["test"] // BATCH_SIZE)
    assert all(b["source"].shape[0] == BATCH_SIZE for b in batches)
    real_rows = sum(int((b["source_length"] > 0).sum()) for b in batches)
    assert real_rows == SPLIT_SIZES["test"]
    # Row i of the stream is sentence i of eval_pairs (truncated to max_length, EOS kept).
    for i in (0, 1, BATCH_SIZE + 2):
        batch, row = batches[i // BATCH_SIZE], i % BATCH_SIZE
        target = batch["target"][row, 1 : batch["target_length"][row]]
        assert (
            data.decode_targets([target])[0]
            == data.decode_targets(data.encode_targets([references[i]]))[0]
        )
        assert len(target) <= MAX_LENGTH


def test_decode_path_helpers(data):
    sources, references = data.eval_pairs(3)
    source_ids = data.encode_sources(sources)
    target_ids = data.encode_targets(references)
    assert source_ids.shape == (3, MAX_LENGTH) and target_ids.shape == (3, MAX_LENGTH + 1)
    assert (target_ids[:, 0] == BOS_ID).all()
    pieces = data.source_pieces(source_ids[0])
    assert pieces[-1] == "</s>" and len(pieces) == (source_ids[0] != PAD_ID).sum()
    hypotheses = data.decode_targets(target_ids)
    assert all(reference.startswith(h) for h, reference in zip(hypotheses, references, strict=True))


def test_shared_vocab_is_one_tokenizer_for_both_sides(data_dir):
    data = make_translation_data(
        data_dir=data_dir,
        source_vocab_size=VOCAB_SIZE,
        target_vocab_size=VOCAB_SIZE,
        max_length=MAX_LENGTH,
        batch_size=BATCH_SIZE,
        shared_vocab=True,
    )
    assert data.source_tokenizer is data.target_tokenizer
    assert data.source_tokenizer.path.name.startswith("en+es.bpe503.")
    text = "Y dijo Dios: Sea la luz. And God said, Let there be light."
    assert data.source_tokenizer.decode(data.source_tokenizer.encode(text)) == text


def test_bad_arguments_name_themselves(data, data_dir):
    with pytest.raises(ValueError, match="max_length: expected at least 2"):
        make_translation_data(data_dir=data_dir, max_length=1)
    with pytest.raises(ValueError, match="bucket_lengths: expected strictly ascending"):
        make_translation_data(data_dir=data_dir, max_length=32, bucket_lengths=(16, 8, 32))
    with pytest.raises(ValueError, match="target_vocab_size: expected the same"):
        make_translation_data(
            data_dir=data_dir, shared_vocab=True, source_vocab_size=500, target_vocab_size=600
        )
    with pytest.raises(ValueError, match=r"split: expected one of \['test', 'validation'\]"):
        data.eval_pairs(split="dev")
    with pytest.raises(ValueError, match="limit: expected None or a count >= 0, got -1"):
        data.eval_batches(-1)
