"""Every model takes every compatible kernel by name: one training step through the CLI per
experiment and selectable kernel (or score), its config.json the run's truth."""

import json

import pytest

from experiments import run

# (experiment, model, the settings that choose the kernel).
CASES = [
    ("translate", "rnnsearch", ["model.kernel=additive"]),
    ("translate", "rnnsearch", ["model.kernel=blockwise_additive"]),
    ("translate", "rnnsearch", ["model.kernel=pallas_additive"]),
    ("translate", "rnnsearch", ["model.score=general", "model.kernel=blockwise"]),
    ("translate", "rnnsearch", ["model.score=dot", "model.kernel=reference"]),
    ("translate", "transformer", ["model.kernel=blockwise"]),
    ("lm", "transformer", ["model.kernel=reference"]),
    ("lm", "transformer", ["model.kernel=blockwise"]),
    # The doubly stochastic penalty needs the weights, which the fast kernels never form.
    ("caption", "sat", ["model.kernel=blockwise_additive", "loss.penalty_strength=0"]),
    ("caption", "sat", ["model.kernel=pallas_additive", "loss.penalty_strength=0"]),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow  # ten compiled runs
@pytest.mark.parametrize(
    ("experiment", "model", "settings"), CASES, ids=[" ".join(c[2]) + f" {c[0]}" for c in CASES]
)
def test_one_step_on_the_kernel(experiment, model, settings, tmp_path, data_dir):
    argv = [experiment, "--model", model, "--preset", "smoke", "--steps", "1"]
    argv += ["--workdir", str(tmp_path), "--set", f"data.data_dir={data_dir}"]
    metrics = run.main(argv + [item for s in settings for item in ("--set", s)])
    assert all(value == value for value in metrics.values())  # no NaN
    saved = json.loads((tmp_path / "config.json").read_text())
    for setting in settings:
        group, _, rest = setting.partition(".")
        name, _, value = rest.partition("=")
        assert saved[group][name] == type(saved[group][name])(value)
    assert any((tmp_path / "plots").glob("*.png"))


def test_a_kernel_that_cannot_serve_the_loss_is_an_error_before_training(tmp_path):
    argv = ["caption", "--preset", "smoke", "--workdir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"penalty_strength > 0 needs the attention weights"):
        run.main([*argv, "--set", "model.kernel=blockwise_additive"])
    with pytest.raises(SystemExit, match=r"kernel must be one of .* for the dot score"):
        run.main(
            [
                "translate",
                "--preset",
                "smoke",
                "--set",
                "model.score=dot",
                "--workdir",
                str(tmp_path),
                "--set",
                "model.kernel=blockwise_additive",
            ]
        )
