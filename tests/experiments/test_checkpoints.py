"""Checkpoints verify what they restore: a flipped byte, a changed data set or a damaged record
is a CheckpointError naming the step, and fall_back=True takes the newest intact one."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.checkpoints import CheckpointError, Checkpoints, data_lengths

OPTIMIZER = optax.adam(1e-3)
RECORDS = 37  # prime, like the shapes below


class Model(nnx.Module):
    def __init__(self, seed: int):
        # Random values: zstd cannot shrink them, so a flipped byte in the file is a flipped
        # value rather than a broken frame.
        rng = np.random.default_rng(seed)
        self.w = nnx.Param(jnp.asarray(rng.standard_normal((67, 61)), jnp.float32))
        self.b = nnx.Param(jnp.asarray(rng.standard_normal(13), jnp.float32))


def _params(seed: int) -> nnx.State:
    """The parameters as the runner holds them: ``nnx.split(model, nnx.Param, ...)[1]``."""
    return nnx.state(Model(seed), nnx.Param)


def _iterator(records: int = RECORDS, *, epochs: int | None = None) -> grain.DatasetIterator:
    dataset = grain.MapDataset.range(records).shuffle(seed=3).repeat(epochs).batch(2)
    return iter(dataset.to_iter_dataset())


def _checkpoints(workdir: pathlib.Path) -> Checkpoints:
    return Checkpoints(workdir, keep_last=3, best_metric="loss", best_mode="min")


def _save(workdir: pathlib.Path, steps: tuple[int, ...]) -> dict[int, tuple[nnx.State, int]]:
    """Checkpoints at ``steps``, each with its own parameters and iterator position."""
    saved = {}
    checkpoints = _checkpoints(workdir)
    iterator = _iterator()
    for step in steps:
        next(iterator)
        params = _params(step)
        checkpoints.save(step, params, OPTIMIZER.init(params), iterator, {"loss": 1.0 / step})
        saved[step] = (params, iterator.get_state()["next_index"])
    checkpoints.close()
    return saved


def _restore(workdir: pathlib.Path, **kwargs):
    checkpoints = _checkpoints(workdir)
    template = jax.tree.map(jnp.zeros_like, _params(0))
    iterator = _iterator()
    try:
        step, params, _ = checkpoints.restore(
            template, OPTIMIZER.init(template), iterator, **kwargs
        )
        return step, params, iterator.get_state()["next_index"], checkpoints.skipped
    finally:
        checkpoints.close()


def _flip_a_byte(step_dir: pathlib.Path) -> None:
    files = [f for f in (step_dir / "params").rglob("*") if f.is_file() and "d" in f.parts]
    largest = max(files, key=lambda f: f.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))


def _equal(first: nnx.State, second: nnx.State) -> bool:
    leaves = zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True)
    return all(np.array_equal(a, b) for a, b in leaves)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Steps 1, 2, 3: the pristine copy each test copies from."""
    workdir = tmp_path_factory.mktemp("pristine")
    return workdir, _save(workdir, (1, 2, 3))


@pytest.fixture
def workdir(saved, tmp_path):
    shutil.copytree(saved[0], tmp_path / "run")
    return tmp_path / "run"


def test_intact_checkpoint_restores_equal_and_records_checksums(saved, workdir):
    step, params, position, skipped = _restore(workdir)
    assert (step, position, skipped) == (3, saved[1][3][1], ())
    assert _equal(params, saved[1][3][0])
    meta = json.loads((workdir / "checkpoints" / "3" / "meta" / "metadata").read_text())
    checksums = meta["checksums"]
    assert set(checksums["params"]) == {"['b'].value", "['w'].value"}
    assert all(len(leaf["sha256"]) == 64 for leaf in checksums["params"].values())
    assert checksums["data_lengths"] == data_lengths(_iterator()) == [RECORDS]


def test_flipped_byte_is_an_error_naming_the_step_and_an_older_one(workdir):
    _flip_a_byte(workdir / "checkpoints" / "3")
    with pytest.raises(CheckpointError) as error:
        _restore(workdir)
    message = str(error.value)
    assert "checkpoint 3" in message and str(workdir / "checkpoints") in message
    assert "params['w'].value" in message
    assert "newest older checkpoint is step 2" in message


def test_fall_back_takes_the_newest_intact_step_and_says_what_it_skipped(saved, workdir):
    _flip_a_byte(workdir / "checkpoints" / "3")
    step, params, position, skipped = _restore(workdir, fall_back=True)
    assert (step, position) == (2, saved[1][2][1])
    assert _equal(params, saved[1][2][0])
    assert [s.step for s in skipped] == [3]
    assert "corrupt" in skipped[0].reason


def test_fall_back_with_nothing_intact_lists_every_failure(workdir):
    for step in (1, 2, 3):
        _flip_a_byte(workdir / "checkpoints" / str(step))
    with pytest.raises(CheckpointError, match=r"no intact checkpoint(.|\n)*  3: (.|\n)*  1: "):
        _restore(workdir, fall_back=True)


def test_restore_model_verifies_too(saved, workdir):
    checkpoints = _checkpoints(workdir)
    model = Model(0)
    assert checkpoints.restore_model(model, best=True) == 3  # the lowest loss, 1/3
    np.testing.assert_array_equal(model.w[...], saved[1][3][0]["w"][...])
    _flip_a_byte(workdir / "best" / "3")
    with pytest.raises(CheckpointError, match=r"checkpoint 3 in .*best is corrupt"):
        checkpoints.restore_model(Model(0), best=True)
    checkpoints.close()


def test_a_data_set_of_another_size_is_refused(tmp_path):
    checkpoints = _checkpoints(tmp_path)
    params = _params(1)
    for records, epochs, match in [
        (RECORDS - 5, None, r"read \[37\] records then and reads \[32\] now"),  # repeated forever
        (5, 1, r"IndexError: .*next_index"),  # grain's own range check
    ]:
        iterator = _iterator()
        for _ in range(10):
            next(iterator)
        checkpoints.save(10, params, OPTIMIZER.init(params), iterator)
        template = jax.tree.map(jnp.zeros_like, params)
        with pytest.raises(CheckpointError, match=match):
            checkpoints.restore(
                template, OPTIMIZER.init(template), _iterator(records, epochs=epochs)
            )
    checkpoints.close()


def test_altered_iterator_state_is_refused(workdir):
    state_file = next((workdir / "checkpoints" / "3" / "data").glob("process_0-of-1.json"))
    state = json.loads(state_file.read_text())
    state["next_index"] += 2
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"checkpoint 3 .*data iterator state"):
        _restore(workdir)


def test_checkpoint_without_checksums_restores_unverified(saved, workdir):
    meta_file = workdir / "checkpoints" / "3" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["checksums"]
    meta_file.write_text(json.dumps(meta))
    step, params, _, _ = _restore(workdir)
    assert step == 3 and _equal(params, saved[1][3][0])


def test_unfinished_write_is_not_a_step(saved, workdir):
    # Orbax writes into N.orbax-checkpoint-tmp-* and renames it when complete.
    (workdir / "checkpoints" / "4.orbax-checkpoint-tmp-1234" / "params").mkdir(parents=True)
    checkpoints = _checkpoints(workdir)
    assert checkpoints.latest_step() == 3
    checkpoints.close()
    assert _restore(workdir)[0] == 3


SHARDED = """
import json, pathlib, sys
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
from flax import nnx
import tests.experiments.test_checkpoints as t

mesh = jax.make_mesh((4,), ("data",))
rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

class Model(nnx.Module):
    def __init__(self, value):
        rng = np.random.default_rng(value)
        self.w = nnx.Param(jnp.asarray(rng.standard_normal((68, 61)), jnp.float32) * value)
        self.b = nnx.Param(jnp.ones(13) * value)

def placed(value):
    params = nnx.state(Model(value), nnx.Param)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.device_put(x, rows if "w" in jax.tree_util.keystr(path) else replicated),
        params,
    )

workdir = pathlib.Path(sys.argv[1])
params = placed(1)
checkpoints = t._checkpoints(workdir)
checkpoints.save(5, params, t.OPTIMIZER.init(params), t._iterator())
template = placed(0)
step, restored, _ = checkpoints.restore(template, t.OPTIMIZER.init(template), t._iterator())
checkpoints.close()
t._flip_a_byte(workdir / "checkpoints" / "5")
try:
    t._checkpoints(workdir).restore(template, t.OPTIMIZER.init(template), t._iterator())
    error = None
except t.CheckpointError as raised:
    error = str(raised)
print(json.dumps({
    "equal": t._equal(restored, params),
    "split_by_rows": restored["w"][...].sharding.spec == P("data"),
    "error": error,
}))
"""


def test_arrays_split_over_devices_are_hashed_whole(tmp_path):
    """Four fake CPU devices, the kernel split by rows as ``param_sharding="shard"`` does."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    root = pathlib.Path(__file__).parents[2]
    result = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tmp_path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["equal"] and outcome["split_by_rows"]
    assert "checkpoint 5" in outcome["error"] and "params['w'].value" in outcome["error"]
