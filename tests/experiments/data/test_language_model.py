"""The language-model entry point on the shipped plays: offline build, windows, eval, resume."""

import socket

import grain
import numpy as np
import pytest
from etils import epath

from experiments.data import shakespeare_plays
from experiments.data.language_model import make_lm_data
from experiments.data.tokenizer import EOS_ID, PAD_ID

CONTEXT = 61  # prime, so a mixed-up axis shows
BATCH = 7


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
        return make_lm_data(data_dir=data_dir, context_length=CONTEXT, batch_size=BATCH, seed=7)


def _split_text(split: str) -> str:
    """A split's stream as text: its plays in order, each followed by a newline."""
    plays = shakespeare_plays.read_plays()
    return "".join(
        p["text"] + "\n" for p in plays if shakespeare_plays.split_of(p["play"]) == split
    )


def test_streams_are_the_split_texts_one_id_per_character(data, data_dir):
    for split in ("train", "validation", "test"):
        text = _split_text(split)
        assert len(data.streams[split]) == len(text)
        assert data.decode(data.streams[split]) == text
    assert data.eval_splits == ("validation", "test")
    # The vocabulary comes from the training split and is saved next to the prepared data.
    assert data.vocab_size == 4 + len(set(_split_text("train")))
    saved = (
        data_dir / "shakespeare_plays" / "by_play" / "1.0.0" / "characters" / "characters.all.json"
    )
    assert saved.exists()


def test_training_windows_are_contiguous_slices_of_the_training_text(data):
    train_text = _split_text("train")
    iterator = data.train_iterator()
    for _ in range(3):
        batch = next(iterator)
        assert set(batch) == {"tokens", "tokens_length"}
        assert batch["tokens"].shape == (BATCH, CONTEXT + 1) and batch["tokens"].dtype == np.int32
        for row in batch["tokens"]:
            assert PAD_ID not in row
            window = data.decode(row)
            assert len(window) == CONTEXT + 1 and window in train_text
            # Inputs and targets are the same slice shifted by one character.
            assert data.decode(row[1:]) == window[1:] and data.decode(row[:-1]) == window[:-1]


def test_iterator_state_resumes_exactly(data, tmp_path):
    """Take N batches, checkpoint as the runner does, take M more; a fresh iterator restored
    from the checkpoint yields the same M batches."""
    iterator = data.train_iterator()
    for _ in range(5):
        next(iterator)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(iterator))
    expected = [next(iterator)["tokens"] for _ in range(4)]
    restored = handler.restore(
        epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(data.train_iterator())
    )
    assert all(np.array_equal(next(restored)["tokens"], e) for e in expected)
    resumed = data.train_iterator(state=iterator.get_state())
    follow = next(iterator)["tokens"]
    assert np.array_equal(next(resumed)["tokens"], follow)


def test_eval_batches_score_every_validation_character_once(data):
    batches = data.eval_batches(split="validation")
    assert batches == [] or all(b["tokens"].shape == (BATCH, CONTEXT + 1) for b in batches)
    targets = [
        b["tokens"][row, 1:length] for b in batches for row, length in enumerate(b["tokens_length"])
    ]
    scored = np.concatenate([t for t in targets if len(t)])
    text = _split_text("validation")
    assert len(scored) == len(text) - 1 and data.decode(scored) == text[1:]
    # The tail is padding, which a loss ignores.
    last = batches[-1]
    assert (last["tokens"][last["tokens_length"] == 0] == PAD_ID).all()
    again = data.eval_batches(split="validation")
    assert all(
        np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(batches, again, strict=True)
    )
    assert len(data.eval_batches(split="test", limit=10)) == 2  # 10 windows in batches of 7


def test_joined_splits_and_prompts(data):
    joined = data.stream("validation+test")
    assert len(joined) == len(data.streams["validation"]) + len(data.streams["test"])
    assert data.decode(joined) == _split_text("validation") + _split_text("test")
    prompt = "ROMEO.\nBut soft!"
    ids = data.encode(prompt)
    assert ids.dtype == np.int32 and len(ids) == len(prompt) and data.decode(ids) == prompt
    assert data.pieces(ids)[:7] == ["R", "O", "M", "E", "O", ".", "\\n"]


def test_bpe_option_round_trips_and_breaks_lines_with_eos(data_dir):
    bpe = make_lm_data(
        data_dir=data_dir, context_length=CONTEXT, batch_size=BATCH, tokenizer="bpe", vocab_size=307
    )
    assert bpe.vocab_size == 307
    text = _split_text("test")
    assert bpe.decode(bpe.streams["test"]) == text
    assert int((bpe.streams["test"] == EOS_ID).sum()) == text.count("\n")
    assert len(bpe.streams["train"]) < len(_split_text("train")) / 1.5  # pieces, not characters
    batch = next(bpe.train_iterator())
    assert batch["tokens"].shape == (BATCH, CONTEXT + 1) and batch["tokens"].max() < 307


def test_by_position_config_through_the_same_interface(data_dir):
    data = make_lm_data("shakespeare_plays/by_position", data_dir=data_dir, context_length=CONTEXT)
    whole = sum(len(p["text"]) for p in shakespeare_plays.read_plays())
    # Each record (a play or the piece of one inside a split) is followed by a newline.
    assert len(data.streams["train"]) == int(whole * 0.9) + 9
    assert next(data.train_iterator())["tokens"].shape == (12, CONTEXT + 1)  # baby GPT's batch


def test_bad_arguments_name_themselves(data, data_dir):
    with pytest.raises(ValueError, match=r"name: expected one of \['lm1b', 'shakespeare_plays', "):
        make_lm_data("shakespeare", data_dir=data_dir)
    with pytest.raises(ValueError, match="context_length: expected a positive int, got 0"):
        make_lm_data(data_dir=data_dir, context_length=0)
    with pytest.raises(
        ValueError, match=r"tokenizer: expected one of \['char', 'bpe'\], got 'word'"
    ):
        make_lm_data(data_dir=data_dir, tokenizer="word")
    with pytest.raises(ValueError, match="vocab_size: expected None or more than 4, got 3"):
        make_lm_data(data_dir=data_dir, vocab_size=3)
    with pytest.raises(
        ValueError,
        match=r"split: expected one of \['validation', 'test'\] or several joined by '\+', got 'dev'",
    ):
        data.eval_batches(split="dev")
    with pytest.raises(
        ValueError, match=r"context_length: expected at most \d+ for the training split"
    ):
        make_lm_data(data_dir=data_dir, context_length=2_000_000)
