"""Each JAX process reads its own slice of the training data; ``batch_size`` is the global batch.

The shard (process index and count) is an explicit argument of every training pipeline, so
these run in one process; the real two-process run is in tests/experiments/test_parallel.py.
Records carry their own index as a token (``ID0 + i``), so every batch row names its record.
"""

from collections.abc import Callable
from unittest import mock

import grain
import jax
import numpy as np
import pytest

from experiments.data import captioning, language_model, pipeline, translation, windows
from experiments.data.tokenizer import BOS_ID, EOS_ID

RECORDS = 53  # prime: no shard count divides it, so the remainder matters
ID0 = 5  # past the special ids
GLOBAL_BATCH = 6  # 3 rows per process with 2 processes
Shard = grain.sharding.ShardOptions


def _shards(count: int, drop_remainder: bool = True) -> list[Shard]:
    return [Shard(i, count, drop_remainder) for i in range(count)]


# --------------------------------------------------------------------------------------------
# The slicing and the batch split.


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("drop_remainder", [True, False])
def test_shards_are_disjoint_and_cover_the_records(count, drop_remainder):
    records = grain.MapDataset.range(RECORDS)
    parts = [list(pipeline.shard_records(records, s)) for s in _shards(count, drop_remainder)]
    seen = [i for part in parts for i in part]
    assert len(seen) == len(set(seen))  # disjoint
    for index, part in enumerate(parts):
        assert all(i % count == index for i in part)  # every count-th record from the index on
    if drop_remainder:  # equal shards, the last RECORDS % count records left out
        assert {len(part) for part in parts} == {RECORDS // count}
        assert sorted(seen) == list(range(RECORDS - RECORDS % count))
    else:
        assert sorted(seen) == list(range(RECORDS))


def test_one_process_reads_everything_untouched():
    records = grain.MapDataset.range(RECORDS)
    assert pipeline.shard_records(records, pipeline.ONE_PROCESS) is records
    assert pipeline.shard_batch_size(GLOBAL_BATCH, pipeline.ONE_PROCESS) == GLOBAL_BATCH


def test_the_global_batch_splits_evenly_or_says_so():
    assert pipeline.shard_batch_size(12, Shard(2, 4)) == 3
    with pytest.raises(ValueError, match=r"batch_size: expected a multiple of the 4 processes.* 6"):
        pipeline.shard_batch_size(6, Shard(0, 4))
    with pytest.raises(ValueError, match=r"batch_size: expected a positive int, got 0"):
        pipeline.shard_batch_size(0, Shard(0, 2))
    with pytest.raises(ValueError, match=r"shard: expected at least one record for shard 2 of 3"):
        pipeline.shard_records(grain.MapDataset.range(2), Shard(2, 3))


# --------------------------------------------------------------------------------------------
# The three training pipelines, each with the shard passed in.


def _tokens(i: int) -> np.ndarray:
    return np.full(1 + i % 3, ID0 + i, dtype=np.int32)  # lengths 1-3: grouped by length


def _translation(shard: Shard, num_epochs: int | None) -> grain.IterDataset:
    return pipeline.train_dataset(
        list(range(RECORDS)),
        featurize=lambda i: {
            "source": _tokens(i),
            "target": np.concatenate([[BOS_ID], _tokens(i)]),
        },
        sequences=translation.SEQUENCES,
        max_length=4,
        batch_size=GLOBAL_BATCH,
        buckets=(2, 4),
        seed=3,
        sort_window=2,
        num_epochs=num_epochs,
        shard=shard,
    )


def _caption(i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng
    return {
        "caption": np.asarray([BOS_ID, ID0 + i, EOS_ID], dtype=np.int32),
        "word_boxes": np.full(3, -1, dtype=np.int32),
        "image": np.zeros((2, 2, 1), np.float32),
        "boxes": np.zeros((0, 4), np.int32),
        "labels": np.zeros((0,), np.int32),
    }


def _captioning(shard: Shard, num_epochs: int | None) -> grain.IterDataset:
    return captioning.train_dataset(
        list(range(RECORDS)),
        featurize=_caption,
        max_length=4,
        batch_size=GLOBAL_BATCH,
        seed=3,
        num_epochs=num_epochs,
        shard=shard,
    )


CONTEXT = 4
# A stream 5, 6, 7, ...: the window at offset i starts with ID0 + i.
STREAM = np.arange(ID0, ID0 + RECORDS + CONTEXT, dtype=np.uint16)


def _windows(shard: Shard, num_epochs: int | None) -> grain.IterDataset:
    return windows.train_windows(
        STREAM,
        context_length=CONTEXT,
        batch_size=GLOBAL_BATCH,
        seed=3,
        num_epochs=num_epochs,
        shard=shard,
    )


# pipeline -> (dataset of a shard, the batch key whose column 0 or 1 holds ID0 + record)
PIPELINES: dict[str, tuple[Callable[[Shard, int | None], grain.IterDataset], str, int]] = {
    "translation": (_translation, "source", 0),
    "captioning": (_captioning, "caption", 1),
    "windows": (_windows, "tokens", 0),
}


def _ids(batch: dict[str, np.ndarray], key: str, column: int) -> list[int]:
    return [int(i) - ID0 for i in batch[key][:, column]]


@pytest.mark.parametrize("name", PIPELINES)
def test_each_process_batches_its_own_records(name):
    make, key, column = PIPELINES[name]
    seen = []
    for shard in _shards(2):
        batches = list(make(shard, 1))  # one epoch
        assert batches and {len(b[key]) for b in batches} == {GLOBAL_BATCH // 2}
        ids = [i for batch in batches for i in _ids(batch, key, column)]
        assert len(ids) == len(set(ids)) and all(i % 2 == shard.shard_index for i in ids)
        seen.append(set(ids))
    assert not seen[0] & seen[1]  # the two halves of every global batch are distinct examples


@pytest.mark.parametrize("name", PIPELINES)
def test_a_shard_resumes_exactly_from_its_state(name):
    make, key, column = PIPELINES[name]
    dataset = make(Shard(1, 2, True), None)
    iterator = iter(dataset)
    for _ in range(10):  # into the second epoch of the shard (26 records, 3 a batch)
        next(iterator)
    state = iterator.get_state()
    expected = [_ids(next(iterator), key, column) for _ in range(4)]
    resumed = iter(dataset)
    resumed.set_state(state)
    assert [_ids(next(resumed), key, column) for _ in range(4)] == expected


# --------------------------------------------------------------------------------------------
# The entry points take the shard from JAX.


def _as_process(index: int, count: int):
    return mock.patch.multiple(
        jax,
        process_index=mock.Mock(return_value=index),
        process_count=mock.Mock(return_value=count),
    )


@pytest.mark.parametrize(
    "make",
    [
        translation.make_translation_data,
        captioning.make_caption_data,
        language_model.make_lm_data,
    ],
)
def test_a_batch_the_processes_cannot_share_fails_before_any_work(make, tmp_path):
    with (
        _as_process(0, 4),
        pytest.raises(ValueError, match=r"batch_size: expected a multiple of the 4 processes"),
    ):
        make(data_dir=tmp_path / "never prepared", batch_size=6)
    assert not (tmp_path / "never prepared").exists()


def test_language_model_data_reads_this_process_offsets(tmp_path):
    """Process 1 of 2 gets half the global batch, from the odd offsets of the training stream."""
    with _as_process(1, 2):
        data = language_model.make_lm_data(
            data_dir=tmp_path, context_length=CONTEXT, batch_size=GLOBAL_BATCH, seed=3
        )
    assert data.batch_size == GLOBAL_BATCH
    want = windows.train_windows(
        data.streams["train"],
        context_length=CONTEXT,
        batch_size=GLOBAL_BATCH,
        seed=3,
        shard=Shard(1, 2, True),
    )
    got, expected = iter(data.train_iterator()), iter(want)
    for _ in range(3):
        tokens = next(got)["tokens"]
        assert tokens.shape == (GLOBAL_BATCH // 2, CONTEXT + 1)
        np.testing.assert_array_equal(tokens, next(expected)["tokens"])
