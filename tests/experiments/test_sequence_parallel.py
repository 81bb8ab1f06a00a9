"""Sequence-parallel LM training through the CLI: ring attention over the "sequence" axis of a
data x sequence mesh of 4 emulated CPU devices trains like one device."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _train(workdir: pathlib.Path, data_dir: pathlib.Path, *settings: str) -> list[float]:
    argv = ["lm", "--preset", "smoke", "--steps", "3", "--workdir", str(workdir)]
    argv += ["--set", f"data.data_dir={data_dir}", "--set", "train.eval_every=3"]
    for setting in settings:
        argv += ["--set", setting]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    subprocess.run(
        [sys.executable, "-m", "experiments.run", *argv],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if row.get("split") == "train"]


@pytest.mark.slow  # two processes, each compiling the LM
def test_ring_attention_over_a_sequence_axis_trains_like_one_device(tmp_path):
    data_dir = tmp_path / "data"
    one = _train(tmp_path / "one", data_dir, "model.kernel=reference")
    ring = _train(tmp_path / "ring", data_dir, "train.mesh=data:2,sequence:2", "model.kernel=ring")
    assert len(one) == len(ring) == 3
    np.testing.assert_allclose(ring, one, rtol=1e-5)
    saved = json.loads((tmp_path / "ring" / "config.json").read_text())
    assert saved["train"]["mesh"] == "data:2,sequence:2" and saved["model"]["kernel"] == "ring"


def test_bad_meshes_are_named():
    from experiments.config import TrainConfig

    with pytest.raises(ValueError, match=r"train.mesh: expected comma-separated NAME:SIZE"):
        TrainConfig(mesh="data:2,model:2")
    with pytest.raises(ValueError, match=r"train.devices=3 and train.mesh='data:2' disagree"):
        TrainConfig(mesh="data:2", devices=3)
