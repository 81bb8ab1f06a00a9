"""The shared runner: checkpoints, resume after SIGKILL, Ctrl-C and SIGTERM, corrupt
checkpoints, logs."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
from flax import nnx

from experiments import runner
from experiments.checkpoints import CheckpointError, Checkpoints
from tests.experiments import toy_task

ROOT = pathlib.Path(__file__).parents[2]


def _saved_steps(workdir: pathlib.Path, folder: str = "checkpoints") -> list[int]:
    """Finished checkpoints only: orbax writes into a temporary directory, then renames it."""
    path = workdir / folder
    return sorted(int(p.name) for p in path.glob("*") if p.name.isdigit()) if path.exists() else []


def _records(workdir: pathlib.Path) -> list[tuple[int, str]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(record["step"], record["split"]) for record in map(json.loads, lines)]


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
    # The steps redone after the kill are recorded once.
    assert _records(tmp_path) == _records(uninterrupted)


def _sparse(steps: int = 12):
    # An evaluation and a checkpoint every 4 steps: steps that save nothing, and fewer saves.
    return dataclasses.replace(toy_task.train_config(steps), eval_every=4, checkpoint_every=4)


# What an uninterrupted run of _sparse() records, in order.
SPARSE_RECORDS = [
    *[r for s in range(1, 13) for r in [(s, "train")] + ([(s, "eval")] if s % 4 == 0 else [])],
    (12, "test"),
]

INT, TERM = signal.SIGINT, signal.SIGTERM
SLOW = pytest.mark.slow  # each case trains twice, ~4 s; the three fast ones cover the paths
# ([(point, on its n-th call, send signal)], the step saved last, exit status). Steps 4 and 8
# evaluate and save; "save" is inside Checkpoints.save, between the checkpoint of checkpoints/
# and that of best/.
INTERRUPTIONS = [
    # The batch of step 6 is drawn: the saved data position must be that of step 6.
    pytest.param([("batch", 6, INT)], 6, 130, id="after a batch"),
    # Step 6 has consumed (donated) the arrays a save reads.
    pytest.param([("step", 6, TERM)], 6, 130, id="SIGTERM inside the step"),
    # The second Ctrl-C quits without saving step 8: the run continues from step 4, and
    # metrics.jsonl then drops the records of steps 5 to 8 it had written.
    pytest.param([("eval", 2, INT), ("eval", 2, INT)], 4, 130, id="twice inside an evaluation"),
    pytest.param([("save", 1, INT)], 4, 130, id="inside a save", marks=SLOW),
    # The evaluation of step 8 finishes, and its checkpoint (best/ included) is saved.
    pytest.param([("eval", 2, INT)], 8, 130, id="inside an evaluation", marks=SLOW),
    # The second Ctrl-C lands in the save that the first one asked for: it waits for it.
    pytest.param(
        [("batch", 6, INT), ("save", 2, INT)], 6, 130, id="twice, in the save", marks=SLOW
    ),
]


def _interrupted(workdir: pathlib.Path, triggers) -> int:
    """Train _sparse() with the signals of ``triggers`` sent at their points; its exit status."""
    hooks: dict[str, list] = {}
    for point, call, signum in triggers:
        hooks.setdefault(point, []).append(toy_task.signal_on_call(call, signum))

    def at(point: str):
        return lambda: [hook() for hook in hooks.get(point, [])]

    class Signalling(Checkpoints):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            save = self.latest.save

            def saving(*args, **kwargs):
                saved = save(*args, **kwargs)
                at("save")()
                return saved

            self.latest.save = saving

    setup = toy_task.make_setup(hooks={p: at(p) for p in toy_task.HOOK_POINTS if p in hooks})
    with mock.patch.object(runner, "Checkpoints", Signalling), pytest.raises(SystemExit) as exit:
        runner.train(setup, _sparse(), workdir, resume=False)
    return exit.value.code


@pytest.mark.parametrize(("triggers", "saved", "status"), INTERRUPTIONS)
def test_a_signal_saves_a_step_that_resumes_to_the_same_parameters(
    triggers, saved, status, uninterrupted, tmp_path, capsys
):
    handlers = signal.getsignal(INT), signal.getsignal(TERM)
    assert _interrupted(tmp_path, triggers) == status
    assert (signal.getsignal(INT), signal.getsignal(TERM)) == handlers  # restored
    printed = capsys.readouterr().out
    if len(triggers) == 2 and triggers[1][0] != "save":
        assert f"interrupted: the latest checkpoint is step {saved} in {tmp_path}" in printed
    else:
        assert f"interrupted: saved step {saved} in {tmp_path}; continue with --resume" in printed
    assert _saved_steps(tmp_path)[-1] == saved
    # Each step it saved has its records, and the evaluations among them their best/ checkpoint.
    assert [r for r in _records(tmp_path) if r[0] <= saved] == [
        r for r in SPARSE_RECORDS if r[0] <= saved and r[1] != "test"
    ]
    assert _saved_steps(tmp_path, "best")[-1:] == [s for s in (4, 8) if s <= saved][-1:]
    leftovers = [p.name for p in tmp_path.rglob("*") if "tmp" in p.name]  # orbax's, ours
    assert not leftovers, leftovers

    runner.train(toy_task.make_setup(), _sparse(), tmp_path, resume=True)
    step, resumed = _final_params(tmp_path)
    _, want = _final_params(uninterrupted)
    assert step == 12
    np.testing.assert_array_equal(resumed, want)
    assert _records(tmp_path) == SPARSE_RECORDS


@pytest.mark.slow
def test_sigterm_stops_a_run_process_with_status_130(uninterrupted, tmp_path):
    """The signal from outside the test process, as a scheduler sends it (to itself, at a
    chosen point, so that the test does not depend on timing)."""
    command = [sys.executable, "-m", "tests.experiments.toy_task", str(tmp_path), "12"]
    result = subprocess.run(
        [*command, "--signal", "SIGTERM", "batch", "5"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 130, result.stderr
    assert "SIGTERM: stopping once the step in progress is done and saved" in result.stderr
    assert f"interrupted: saved step 5 in {tmp_path}; continue with --resume" in result.stdout
    runner.train(toy_task.make_setup(), toy_task.train_config(12), tmp_path, resume=True)
    np.testing.assert_array_equal(_final_params(tmp_path)[1], _final_params(uninterrupted)[1])


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


def test_a_full_disk_while_saving_is_an_os_error(tmp_path):
    class Full(Checkpoints):
        def save(self, step, *args, **kwargs):
            raise ValueError(
                'RESOURCE_EXHAUSTED: Error writing local file "x": Failed to write 11091 bytes '
                "to file 18: No space left on device [os_error_code='28']"
            )

    with (
        mock.patch.object(runner, "Checkpoints", Full),
        pytest.raises(OSError, match=r"cannot save checkpoint 1 in .*: No space left") as raised,
    ):
        runner.train(toy_task.make_setup(), toy_task.train_config(1), tmp_path, resume=False)
    assert raised.value.errno == 28
