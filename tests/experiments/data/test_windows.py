"""Windows on a synthetic stream 0, 1, 2, ...: a window is contiguous iff its ids count up."""

import numpy as np
import pytest

from experiments.data.windows import eval_windows, stream_dtype, token_stream, train_windows

LENGTH = 101  # stream length, context and batch: primes, so a swapped axis shows
CONTEXT = 7
BATCH = 5
STREAM = np.arange(LENGTH, dtype=np.uint16)


def _starts(batches) -> list[int]:
    return [int(row[0]) for batch in batches for row in batch["tokens"]]


def test_train_windows_are_contiguous_and_shifted_by_one():
    iterator = iter(train_windows(STREAM, context_length=CONTEXT, batch_size=BATCH, seed=3))
    for _ in range(13):
        batch = next(iterator)
        tokens = batch["tokens"]
        assert tokens.shape == (BATCH, CONTEXT + 1) and tokens.dtype == np.int32
        assert (batch["tokens_length"] == CONTEXT + 1).all()
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        assert (targets == inputs + 1).all()  # the target of each position is the next token


def test_an_epoch_draws_every_offset_once_in_a_seeded_order():
    def epoch(seed: int, epochs: int = 1) -> list[int]:
        dataset = train_windows(
            STREAM, context_length=CONTEXT, batch_size=1, seed=seed, num_epochs=epochs
        )
        return _starts(dataset)

    offsets = LENGTH - CONTEXT  # the last window ends with the stream's last token
    assert sorted(epoch(0)) == list(range(offsets))
    assert epoch(0) == epoch(0) and epoch(0) != epoch(1)
    two = epoch(0, epochs=2)
    assert two[:offsets] == epoch(0) and sorted(two[offsets:]) == list(range(offsets))
    assert two[offsets:] != two[:offsets]  # a new order every epoch


def test_iterator_state_resumes_exactly():
    dataset = train_windows(STREAM, context_length=CONTEXT, batch_size=BATCH, seed=5)
    iterator = iter(dataset)
    for _ in range(4):
        next(iterator)
    state = iterator.get_state()
    expected = _starts(next(iterator) for _ in range(6))
    resumed = iter(dataset)
    resumed.set_state(state)
    assert _starts(next(resumed) for _ in range(6)) == expected


def test_eval_windows_predict_every_token_once():
    windows = eval_windows(STREAM, context_length=CONTEXT)
    assert len(windows) == -(-(LENGTH - 1) // CONTEXT)
    targets = np.concatenate([window[1:] for window in windows])
    assert list(targets) == list(range(1, LENGTH))
    assert all(window.dtype == np.int32 for window in windows)
    assert len(windows[-1]) == (LENGTH - 1) % CONTEXT + 1  # 100 = 14 * 7 + 2: a short tail


def test_eval_windows_limit_spreads_them_over_the_split():
    windows = eval_windows(STREAM, context_length=CONTEXT, limit=3)
    assert [int(w[0]) for w in windows] == [0, 7 * 7, 14 * 7]
    assert eval_windows(STREAM, context_length=CONTEXT, limit=0) == []
    assert len(eval_windows(STREAM, context_length=CONTEXT, limit=999)) == 15
    with pytest.raises(ValueError, match="limit: expected None or a count >= 0, got -1"):
        eval_windows(STREAM, context_length=CONTEXT, limit=-1)


def test_short_streams_and_bad_arguments_are_named():
    with pytest.raises(
        ValueError,
        match=r"context_length: expected at most 100 for the training split \(101 tokens\), got 101",
    ):
        train_windows(STREAM, context_length=101, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        train_windows(STREAM, context_length=CONTEXT, batch_size=0, seed=0)
    with pytest.raises(
        ValueError, match="stream: expected at least 2 tokens to predict one, got 1"
    ):
        eval_windows(STREAM[:1], context_length=CONTEXT)


def test_token_stream_is_written_once_then_memory_mapped(tmp_path):
    path = tmp_path / "streams" / "train.bin"
    pieces = [np.array([4, 5, 6]), np.array([], dtype=np.int32), np.array([70000 % 65536])]
    stream = token_stream(iter(pieces), path=path, dtype=stream_dtype(300))
    assert isinstance(stream, np.memmap) and stream.dtype == np.uint16
    assert list(stream) == [4, 5, 6, 4464] and path.stat().st_size == 8

    def never():
        raise AssertionError("re-encoded a cached stream")
        yield

    assert list(token_stream(never(), path=path, dtype=np.dtype(np.uint16))) == [4, 5, 6, 4464]
    assert stream_dtype(1 << 16) == np.uint16 and stream_dtype((1 << 16) + 1) == np.int32
    with pytest.raises(ValueError, match="ids: expected at most 65535 for uint16"):
        token_stream(
            iter([np.array([65536])]), path=tmp_path / "big.bin", dtype=np.dtype(np.uint16)
        )
    assert not (tmp_path / "big.bin").exists()
