"""The translate experiment end to end on the smoke preset, through the real CLI."""

import json

import pytest

from experiments import run, visualize


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("run")
    metrics = run.main(
        [
            "translate",
            "--preset",
            "smoke",
            "--workdir",
            str(workdir),
            "--set",
            f"data.data_dir={data_dir}",
        ]
    )
    return workdir, metrics


def test_trains_evaluates_checkpoints_and_draws(finished_run):
    workdir, metrics = finished_run
    assert {"bleu", "loss", "validation_bleu", "validation_loss"} <= set(metrics)
    assert 0.0 <= metrics["bleu"] <= 100.0 and metrics["loss"] > 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["model_name"] == "rnnsearch" and config["train"]["steps"] == 4
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    splits = {json.loads(line)["split"] for line in lines}
    assert splits == {"train", "eval", "test"}
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert list((workdir / "best").iterdir())
    assert (workdir / "plots" / "alignment_0.png").stat().st_size > 1000


def test_resume_trains_on_and_visualize_redraws(finished_run):
    workdir, _ = finished_run
    run.main(["translate", "--workdir", str(workdir), "--resume", "--steps", "6"])
    assert "6" in {p.name for p in (workdir / "checkpoints").iterdir()}
    plot = workdir / "plots" / "alignment_0.png"
    plot.unlink()
    assert visualize.main([str(workdir)]) == [plot] and plot.exists()


def test_transformer_translates_and_draws_every_head(tmp_path, data_dir):
    metrics = run.main(
        [
            "translate",
            "--model",
            "transformer",
            "--preset",
            "smoke",
            "--workdir",
            str(tmp_path),
            "--set",
            f"data.data_dir={data_dir}",
        ]
    )
    assert 0.0 <= metrics["bleu"] <= 100.0 and metrics["loss"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["train"]["label_smoothing"] == 0.1
    assert (tmp_path / "plots" / "cross_attention_0.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv,message",
    [
        (["translat"], r"unknown experiment 'translat'; choose one of \[.*'translate'.*\]"),
        (
            ["translate", "--model", "rnn"],
            r"unknown model 'rnn' for translate; choose one of \['rnnsearch', 'rnnencdec', 'transformer'\]",
        ),
        (
            ["translate", "--preset", "huge"],
            r"unknown preset 'huge' for rnnsearch; choose one of \['tiny', 'paper', 'smoke'\]",
        ),
        (
            ["translate", "--set", "model.width=3"],
            r"unknown config field 'model.width': RNNSearchConfig has",
        ),
        (["translate", "--set", "train.steps=many"], r"train.steps: expected int, got 'many'"),
    ],
)
def test_cli_errors_list_the_valid_choices(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        run.main([*argv, "--workdir", str(tmp_path)])


def test_cli_refuses_to_overwrite_or_reconfigure_a_run(finished_run):
    workdir, _ = finished_run
    with pytest.raises(SystemExit, match=r"already holds a run; pass --resume"):
        run.main(["translate", "--preset", "smoke", "--workdir", str(workdir)])
    with pytest.raises(SystemExit, match=r"--resume continues .* under its saved config"):
        run.main(["translate", "--preset", "tiny", "--workdir", str(workdir), "--resume"])


def test_visualize_needs_a_run_directory(tmp_path):
    with pytest.raises(SystemExit, match=r"is not a run directory \(no config.json\)"):
        visualize.main([str(tmp_path)])
