"""The shared runner: checkpoints, resume after SIGKILL, Ctrl-C, corrupt checkpoints, logs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx

from experiments import runner
from experiments.checkpoints import CheckpointError, Checkpoints
from tests.experiments import toy_task

ROOT = pathlib.Path(__file__).parents[2]


def _saved_steps(workdir: pathlib.Path) -> list[int]:
    """Finished checkpoints only: orbax writes into a temporary directory, then renames it."""
    folder = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) if folder.exists() else []
    )


def _final_params(workdir: pathlib.Path) -> np.ndarray:
    setup = toy_task.make_setup()
    checkpoints = Checkpoints(workdir, keep_last=2, best_metric="weight_sum", best_mode="max")
    step = checkpoints.restore_model(setup.model)
    checkpoints.close()
    return step, np.asarray(setup.model.kernel[...])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    runner.train(toy_task.make_setup(), toy_task.train_config(12), workdir, resume=False)
    return workdir


def test_logs_metrics_and_keeps_last_and_best(uninterrupted):
    records = [
        json.loads(line)
        for line in (uninterrupted / "metrics.jsonl").read_text().split("\n")
        if line
    ]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert all({"loss", "grad_norm", "tokens_per_second"} <= set(r) for r in train)
    assert np.mean([r["loss"] for r in train[-3:]]) < 0.5 * np.mean([r["loss"] for r in train[:3]])
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == ["11", "12"]
    assert len(list((uninterrupted / "best").iterdir())) == 1
    assert list((uninterrupted / "tensorboard").iterdir())


@pytest.mark.slow
def test_resume_after_sigkill_reaches_the_same_parameters(uninterrupted, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.experiments.toy_task", str(tmp_path), "12"]
    process = subprocess.Popen(
        [*command, "--sleep", "0.5"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = _saved_steps(tmp_path)
        if steps and max(steps) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(_saved_steps(tmp_path))
    assert killed_at < 12, "the run finished before it could be killed"
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    step, resumed = _final_params(tmp_path)
    want_step, want = _final_params(uninterrupted)
    assert step == want_step == 12
    np.testing.assert_array_equal(resumed, want)


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.experiments.toy_task",
            str(tmp_path),
            "1000",
            "--sleep",
            "0.2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not _saved_steps(tmp_path):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "interrupted: saved step" in output
    saved = int(output.split("interrupted: saved step ")[1].split()[0])
    assert saved in _saved_steps(tmp_path)


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(uninterrupted, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    # Every checkpoint corrupt: nothing intact to fall back to.
    for path in (workdir / "checkpoints").glob("*/params/**/*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"garbage")
    before = sorted(str(p) for p in workdir.rglob("*"))
    with pytest.raises(CheckpointError, match=r"checkpoint 12 .* left untouched"):
        runner.train(toy_task.make_setup(), toy_task.train_config(14), workdir, resume=True)
    assert sorted(str(p) for p in workdir.rglob("*") if "tensorboard" not in str(p)) == [
        p for p in before if "tensorboard" not in p
    ]


def test_incompatible_model_is_a_clear_error(uninterrupted):
    setup = toy_task.make_setup()
    setup.model = nnx.Linear(5, 2, rngs=nnx.Rngs(0))  # a different shape than was saved
    with pytest.raises(CheckpointError, match="different model/config"):
        runner.train(setup, toy_task.train_config(14), uninterrupted, resume=True)
