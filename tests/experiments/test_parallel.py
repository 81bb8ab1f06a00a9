"""experiments.parallel: the runner trains data-parallel on a mesh, by config.

The multi-device runs happen in fresh processes (this file run as a script, see the end): the
CPU device count is fixed when JAX starts, and this pytest process already has one device.
The worker trains the toy task (tests/experiments/toy_task.py) through ``runner.train`` and
records what it sees; the asserts are here. The toy model is widened by a hidden layer of 12
units so that 4 devices have something to split.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python -m tests.experiments.test_parallel parity WORKDIR
"""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from typing import Any
from unittest import mock

import grain
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from experiments import config as config_lib
from experiments import parallel, runner, tasks
from experiments.checkpoints import Checkpoints
from experiments.data import pipeline
from experiments.metrics import MetricWriter
from tests.experiments import toy_task

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 180  # seconds: a hung collective fails the test instead of the whole run
STEPS = 5
GLOBAL_BATCH = 32  # the toy task's

# Where the "shard" rule puts each array of the widened toy model and of its Adam state on
# 4 devices, by shape: the largest axis that 4 divides, else replicated.
SHARDED = {
    (5, 12): [None, "data"],  # hidden kernel: 12 splits, 5 does not
    (12,): ["data"],  # hidden bias
    (12, 1): ["data"],  # output kernel
    (1,): [],  # output bias: nothing to split
    (): [],  # Adam's step count
}


# --------------------------------------------------------------------------------------------
# The worker (run in a fresh process).


class _Wide(nnx.Module):
    """The toy regression through a hidden layer; ``kernel`` is what toy_task evaluates."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(5, 12, rngs=rngs)
        self.out = nnx.Linear(12, 1, rngs=rngs)

    @property
    def kernel(self) -> nnx.Param:
        return self.out.kernel

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.tanh(self.hidden(x)))


def _specs(tree: Any) -> list[tuple[list[int], list[str | None], int]]:
    """(shape, partition spec, devices holding it) of every array of ``tree``."""
    return [
        (list(x.shape), list(x.sharding.spec), len(x.sharding.device_set))
        for x in jax.tree.leaves(tree)
    ]


def _sharded_points(shard: grain.sharding.ShardOptions) -> grain.MapDataset:
    """The toy task's points as a pipeline reads them: this process's part of every global
    batch, each row with the ``index`` of its point. Random access: ``[k]`` is batch k."""
    points = toy_task._Points()
    return (
        pipeline.shard_records(grain.MapDataset.range(len(points)), shard)
        .shuffle(seed=0)
        .repeat()
        .map(lambda i: {**points[i], "index": np.int32(i)})
        .batch(pipeline.shard_batch_size(GLOBAL_BATCH, shard))
    )


def _train(
    workdir: pathlib.Path,
    steps: int,
    *,
    devices: int,
    rule: str,
    resume: bool = False,
    batches: grain.DatasetIterator | None = None,
) -> dict[str, Any]:
    """The toy task through runner.train; what its state, metrics and evaluation looked like,
    and what it printed and drew. ``batches`` replaces the toy task's own."""
    record: dict[str, Any] = {
        "losses": [],
        "saved": [],
        "restored": [],
        "eval_devices": [],
        "plotted": 0,
    }

    class Writer(MetricWriter):
        def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
            if split == "train":
                record["losses"].append(float(metrics["loss"]))
            super().write(step, split, metrics)

    class Recording(Checkpoints):
        def save(self, step, params, opt_state, *args, **kwargs):
            record["saved"].append([_specs(params), _specs(opt_state)])
            super().save(step, params, opt_state, *args, **kwargs)

        def restore(self, *args, **kwargs):
            step, params, opt_state = super().restore(*args, **kwargs)
            record["restored"].append([_specs(params), _specs(opt_state)])
            return step, params, opt_state

    setup = toy_task.make_setup()
    setup.model = _Wide(nnx.Rngs(0))
    if batches is not None:
        setup.batches = batches
    evaluate = runner._Evaluator.__call__

    def evaluating(self: Any, state: nnx.State, split: str) -> dict[str, float]:
        leaves = jax.tree.leaves(state)  # the model's parameters, as the runner evaluates them
        record["eval_devices"].append(max(len(x.sharding.device_set) for x in leaves))
        record["final"] = [np.asarray(x).tolist() for x in leaves]
        return evaluate(self, state, split)

    def visualize(model: nnx.Module, out: pathlib.Path) -> list[pathlib.Path]:
        record["plotted"] += 1
        return []

    setup.visualize = visualize
    # One evaluation and one checkpoint, at the end (saving is most of the time of a step).
    config = dataclasses.replace(
        toy_task.train_config(steps),
        eval_every=steps,
        checkpoint_every=steps,
        devices=devices,
        param_sharding=rule,
    )
    printed = io.StringIO()
    with (
        contextlib.redirect_stderr(printed),  # the progress bar
        contextlib.redirect_stdout(printed),  # evaluation lines
        mock.patch.object(runner, "MetricWriter", Writer),
        mock.patch.object(runner, "Checkpoints", Recording),
        mock.patch.object(runner._Evaluator, "__call__", evaluating),
    ):
        runner.train(setup, config, workdir, resume=resume)
    record["printed"] = printed.getvalue()
    return record


def parity(workdir: pathlib.Path) -> dict[str, Any]:
    """One device against 4 (both rules); a resumed sharded run; 3 devices for 32 examples."""
    results: dict[str, Any] = {"device_count": jax.device_count()}
    for name, devices, rule in (("one", 1, "replicate"), ("replicate", 4, "replicate")):
        results[name] = _train(workdir / name, STEPS, devices=devices, rule=rule)
    # "shard" in two legs: 3 steps, then resumed from the checkpoint to STEPS.
    results["shard_3"] = _train(workdir / "shard", 3, devices=4, rule="shard")
    results["shard"] = _train(workdir / "shard", STEPS, devices=4, rule="shard", resume=True)
    try:
        _train(workdir / "odd", 1, devices=3, rule="replicate")  # toy batches hold 32
    except ValueError as error:
        results["odd_batch_error"] = str(error)
    return results


def distributed(workdir: pathlib.Path) -> dict[str, Any]:
    """This process's view of two runs over every device of every process: the toy task's
    batches (the same on both processes), then each process's own part of the points."""
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    points = _sharded_points(shard)
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        **_train(workdir / "same", 3, devices=0, rule="shard"),
        "sharded": _train(
            workdir / "sharded", 3, devices=0, rule="shard", batches=iter(points.to_iter_dataset())
        ),
        # What the sharded run read: the pipeline is deterministic, so a second look sees it.
        "indices": [points[k]["index"].tolist() for k in range(3)],
    }


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("check", choices=["parity", "distributed"])
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("--coordinator", help="host:port of jax.distributed's coordinator")
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args()
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # Short timeouts: a missing peer should fail the test, not hang it for minutes.
        jax.distributed.initialize(
            args.coordinator,
            num_processes=2,
            process_id=args.process_id,
            initialization_timeout=60,
            heartbeat_timeout_seconds=30,
            shutdown_timeout_seconds=30,
        )
    result = {"parity": parity, "distributed": distributed}[args.check](args.workdir)
    print("RESULT " + json.dumps(result), flush=True)
    if args.coordinator:
        jax.distributed.shutdown()


# --------------------------------------------------------------------------------------------
# Running workers.


def _worker(check: str, workdir: pathlib.Path, devices: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # Set before JAX starts in the worker: the CPU device count is fixed at initialization.
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "tests.experiments.test_parallel", check, str(workdir)]
    return subprocess.Popen(
        [*command, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _results(procs: list[subprocess.Popen]) -> list[dict[str, Any]]:
    results = []
    deadline = time.monotonic() + TIMEOUT
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                pytest.fail(
                    f"worker exited with {proc.returncode}:\n{stdout[-2000:]}\n{stderr[-4000:]}"
                )
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not finish in {TIMEOUT} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    (result,) = _results([_worker("parity", tmp_path_factory.mktemp("parity"), 4)])
    return result


def _assert_placed(specs: list, rule: str, devices: int) -> None:
    shapes = {tuple(shape) for shape, _, _ in specs}
    assert shapes <= set(SHARDED), shapes
    for shape, spec, held_by in specs:
        assert spec == (SHARDED[tuple(shape)] if rule == "shard" else []), (shape, spec)
        assert held_by == devices, (shape, held_by)


def _assert_close(got: list, want: list) -> None:
    """float32 rounding apart: the device count changes only the order of the sums."""
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# On 4 emulated devices.


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["replicate", "shard"])
def test_four_devices_train_like_one(runs, rule):
    assert runs["device_count"] == 4
    losses = runs[rule]["losses"]
    if rule == "shard":  # in two legs: steps 1-3, then resumed from the checkpoint for 4-5
        losses = runs["shard_3"]["losses"] + losses
    assert len(losses) == STEPS
    _assert_close(losses, runs["one"]["losses"])
    _assert_close(runs[rule]["final"], runs["one"]["final"])
    assert runs["one"]["losses"][-1] < runs["one"]["losses"][0]  # it trains at all


@pytest.mark.parametrize("rule", ["replicate", "shard"])
def test_state_stays_placed_by_the_rule(runs, rule):
    legs = [runs["shard_3"], runs["shard"]] if rule == "shard" else [runs[rule]]
    saves = [save for leg in legs for save in leg["saved"]]
    assert len(saves) == len(legs)  # the state after the last step of each leg
    for params, opt_state in saves:
        _assert_placed(params, rule, 4)
        _assert_placed(opt_state, rule, 4)
    if rule == "shard":  # the rule did split something, and left something whole
        assert [spec for _, spec, _ in saves[0][0]].count([]) == 1
    for leg in legs:  # evaluation and pictures see the parameters whole, on one device
        assert leg["eval_devices"] and set(leg["eval_devices"]) == {1}


def test_resume_restores_onto_the_sharding(runs):
    ((params, opt_state),) = runs["shard"]["restored"]
    _assert_placed(params, "shard", 4)
    _assert_placed(opt_state, "shard", 4)


def test_one_device_is_todays_placement(runs):
    for params, opt_state in runs["one"]["saved"]:
        _assert_placed(params, "replicate", 1)
        _assert_placed(opt_state, "replicate", 1)


def test_batch_the_devices_cannot_split_is_a_clear_error(runs):
    assert runs["odd_batch_error"] == (
        "batch['x'] has leading size 32, which cannot be split evenly over the 3 devices; "
        "make train.batch_size a multiple of 3"
    )


# --------------------------------------------------------------------------------------------
# Two processes of 2 CPU devices each, one mesh across both (jax.distributed, gloo).


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Both processes' results, in process order, and the run directory they shared."""
    workdir = tmp_path_factory.mktemp("distributed")
    address = f"127.0.0.1:{_free_port()}"
    results = _results(
        [
            _worker("distributed", workdir, 2, "--coordinator", address, "--process-id", str(i))
            for i in range(2)
        ]
    )
    return sorted(results, key=lambda r: r["process_index"]), workdir


@pytest.mark.slow  # about 35 s with the next test: two JAX processes on two shared cores
def test_two_processes_train_like_one_device(runs, two_processes):
    results, _ = two_processes
    assert [r["process_index"] for r in results] == [0, 1]
    for r in results:
        assert r["process_count"] == 2 and r["global_devices"] == 4
        # Both processes feed the same 32 examples: the global batch of 64 holds each twice,
        # so its mean loss and gradient are the single device's.
        assert len(r["losses"]) == 3
        _assert_close(r["losses"], runs["shard_3"]["losses"])
        _assert_close(r["final"], runs["shard_3"]["final"])  # the parameters after 3 steps
        for params, opt_state in r["saved"]:
            _assert_placed(params, "shard", 4)
            _assert_placed(opt_state, "shard", 4)
        assert set(r["eval_devices"]) == {1}


def _records(workdir: pathlib.Path) -> list[tuple[int, str]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(record["step"], record["split"]) for record in map(json.loads, lines)]


@pytest.mark.slow
def test_two_processes_read_their_own_data_and_only_the_first_writes(two_processes, tmp_path):
    results, workdir = two_processes
    first, second = results
    # Each process reads half of every global batch, and the halves are distinct points.
    mine = [{i for batch in r["indices"] for i in batch} for r in results]
    for r, indices in zip(results, mine, strict=True):
        assert [len(batch) for batch in r["indices"]] == [GLOBAL_BATCH // 2] * 3
        assert len(indices) == 3 * GLOBAL_BATCH // 2  # no point twice in a process either
    assert not mine[0] & mine[1]
    # The global batch is the processes' halves joined in process order: training on it on
    # one device (here, in this process) gives the same losses and parameters.
    halves = [_sharded_points(grain.sharding.ShardOptions(i, 2, True)) for i in range(2)]
    joined = grain.MapDataset.range(3).map(
        lambda k: jax.tree.map(lambda *parts: np.concatenate(parts), halves[0][k], halves[1][k])
    )
    assert [joined[k]["index"].tolist() for k in range(3)] == [
        a + b for a, b in zip(first["indices"], second["indices"], strict=True)
    ]
    one = _train(tmp_path, 3, devices=1, rule="replicate", batches=iter(joined.to_iter_dataset()))
    for r in results:
        _assert_close(r["sharded"]["losses"], one["losses"])
        _assert_close(r["sharded"]["final"], one["final"])
    # Every process evaluated (gathering the model takes all of them) ...
    assert [len(r["sharded"]["eval_devices"]) for r in results] == [2, 2]  # validation, test
    # ... but one wrote each record once, printed and drew; the other stayed silent.
    for run in ("same", "sharded"):
        assert _records(workdir / run) == [
            (1, "train"),
            (2, "train"),
            (3, "train"),
            (3, "eval"),
            (3, "test"),
        ]
        assert len(list((workdir / run / "tensorboard").iterdir())) == 1
    assert [r["sharded"]["plotted"] for r in results] == [1, 0]
    assert "step 3: weight_sum" in first["sharded"]["printed"]
    assert second["sharded"]["printed"] == second["printed"] == ""


# --------------------------------------------------------------------------------------------
# In this process: the rule, the mesh and the errors.


@pytest.mark.parametrize(
    "shape,devices,want",
    [
        ((6, 10), 2, P(None, "data")),  # the largest divisible axis
        ((10, 6), 2, P("data")),
        ((7, 6, 5), 3, P(None, "data")),  # the only divisible axis, not the largest
        ((8, 8), 4, P("data")),  # a tie: the first
        ((7, 5), 4, P()),  # nothing divides: replicated
        ((), 4, P()),  # a scalar
        ((7, 5), 1, P("data")),  # one device: "split" into one piece
    ],
)
def test_shard_rule(shape, devices, want):
    assert parallel.spec_for(shape, devices, "shard") == want
    assert parallel.spec_for(shape, devices, "replicate") == P()


ERRORS = [
    (
        lambda: parallel.make_mesh(2),
        r"train.devices must be between 0 \(all\) and the 1 cpu devices available, got 2",
    ),
    (
        lambda: parallel.make_mesh(-1),
        r"train.devices must be between 0 \(all\) and the 1 cpu devices available, got -1",
    ),
    (
        lambda: parallel.spec_for((4,), 2, "fsdp"),
        r"train.param_sharding must be one of \('replicate', 'shard'\), got 'fsdp'",
    ),
    (
        lambda: parallel.place({}, parallel.make_mesh(1), "zero"),
        r"train.param_sharding must be one of .* got 'zero'",
    ),
    (
        lambda: parallel.place_batch({"x": np.zeros(3), "n": np.int32(3)}, parallel.make_mesh(0)),
        r"batch\['n'\] is a scalar; every batch entry needs a leading batch axis",
    ),
]


@pytest.mark.parametrize("call,message", ERRORS)
def test_bad_setting_names_it(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_one_device_mesh_places_everything_whole():
    mesh = parallel.make_mesh(0)
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count() == 1
    batch = parallel.place_batch({"x": np.arange(6.0).reshape(3, 2)}, mesh)
    np.testing.assert_array_equal(batch["x"], np.arange(6.0).reshape(3, 2))
    params = parallel.place({"w": np.ones((3, 4), np.float32)}, mesh, "shard")
    assert params["w"].sharding.spec == P(None, "data")  # the larger axis
    np.testing.assert_array_equal(parallel.gather(params)["w"], np.ones((3, 4)))


def test_a_writer_of_another_process_writes_nothing(tmp_path):
    for active, workdir in ((True, tmp_path / "first"), (False, tmp_path / "other")):
        writer = MetricWriter(workdir, active=active)
        writer.write(1, "train", {"loss": 0.5})
        writer.close()
        assert workdir.exists() == active
        assert writer.path.exists() == active


def test_devices_can_be_set_from_the_command_line(tmp_path):
    from experiments import run

    command = ["lm", "--preset", "smoke", "--set", "train.devices=4"]
    args = run.parse_args([*command, "--set", "train.param_sharding=shard"])
    config = run.resolve_config(args, tasks.load("lm"), tmp_path)
    assert (config.train.devices, config.train.param_sharding) == (4, "shard")
    assert config_lib.TrainConfig().devices == 1  # today's single-device run by default
    assert config_lib.TrainConfig().param_sharding == "replicate"


if __name__ == "__main__":
    _worker_main()
