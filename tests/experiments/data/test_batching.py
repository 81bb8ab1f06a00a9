import numpy as np
import pytest

from experiments.data.batching import (
    bucket_length,
    collate,
    default_buckets,
    length_sorted_groups,
    sequence_length,
)

SEQUENCES = {"source": 0, "target": 1}


def _example(source_length: int, target_length: int) -> dict[str, np.ndarray]:
    # Distinct values per position so a misplaced copy shows.
    return {
        "source": np.arange(10, 10 + source_length, dtype=np.int32),
        "target": np.arange(100, 100 + target_length, dtype=np.int32),
    }


def test_default_buckets():
    assert default_buckets(64) == (16, 32, 48, 64)
    assert default_buckets(50) == (16, 32, 40, 50)
    assert default_buckets(7) == (7,)
    with pytest.raises(ValueError, match="max_length: expected a positive length, got 0"):
        default_buckets(0)


def test_bucket_length():
    assert [bucket_length(n, (8, 16)) for n in (0, 1, 8, 9, 16)] == [8, 8, 8, 16, 16]
    with pytest.raises(ValueError, match="at most the largest bucket 16, got 17"):
        bucket_length(17, (8, 16))


def test_sequence_length_discounts_extra_tokens():
    assert sequence_length(_example(5, 7), SEQUENCES) == 6
    assert sequence_length(_example(7, 5), SEQUENCES) == 7


def test_collate_pads_all_sequences_to_one_bucket():
    batch = collate([_example(3, 4), _example(11, 6)], sequences=SEQUENCES, buckets=(5, 13))
    assert batch["source"].shape == (2, 13)
    assert batch["target"].shape == (2, 14)
    assert all(array.dtype == np.int32 for array in batch.values())
    np.testing.assert_array_equal(batch["source_length"], [3, 11])
    np.testing.assert_array_equal(batch["target_length"], [4, 6])
    np.testing.assert_array_equal(batch["source"][0], [10, 11, 12] + [0] * 10)
    np.testing.assert_array_equal(batch["target"][1, :7], [100, 101, 102, 103, 104, 105, 0])


def test_collate_fills_short_batches_with_empty_rows():
    batch = collate([_example(2, 3)], sequences=SEQUENCES, buckets=(4,), batch_size=3)
    assert batch["source"].shape == (3, 4)
    np.testing.assert_array_equal(batch["source_length"], [2, 0, 0])
    assert not batch["source"][1:].any() and not batch["target"][1:].any()


def test_collate_errors():
    with pytest.raises(ValueError, match="examples: expected at least one"):
        collate([], sequences=SEQUENCES, buckets=(4,))
    with pytest.raises(ValueError, match="batch_size: expected at least 2, got 1"):
        collate([_example(1, 1)] * 2, sequences=SEQUENCES, buckets=(4,), batch_size=1)


def test_length_sorted_groups_partition_the_window():
    window = [_example(n, 1) for n in (9, 2, 7, 4, 5, 3, 8)]
    groups = length_sorted_groups(
        window,
        np.random.default_rng(3),
        group_size=3,
        length=lambda e: sequence_length(e, SEQUENCES),
    )
    assert sorted(len(group) for group in groups) == [1, 3, 3]
    lengths = sorted([len(e["source"]) for e in group] for group in groups)
    assert lengths == [[2, 3, 4], [5, 7, 8], [9]]
