"""The tasks' decoding helpers: decoding in batches of a fixed size."""

import numpy as np
from flax import nnx

from experiments import decode
from experiments.data.tokenizer import BOS_ID


def test_in_batches_fills_the_last_batch_and_keeps_the_real_rows():
    seen = []

    def double(model, batch):
        seen.append(batch["x"].shape)  # once per trace: each batch shape compiles once
        return batch["x"] * 2

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    x = np.arange(7 * 2, dtype=np.int32).reshape(7, 2)
    out = decode.in_batches(double, model, {"x": x}, size=3)
    np.testing.assert_array_equal(out, x * 2)
    assert seen == [(3, 2)]


def test_with_bos_frames_decoded_tokens():
    tokens = np.array([[5, 6], [7, 8]], np.int32)
    np.testing.assert_array_equal(decode.with_bos(tokens), [[BOS_ID, 5, 6], [BOS_ID, 7, 8]])
