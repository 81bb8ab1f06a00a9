"""The translate experiment end to end on the smoke preset, through the real CLI; its model
trained in bfloat16."""

import json

import jax.numpy as jnp
import pytest
from flax import nnx

from experiments import attend, run, runner, visualize
from experiments import config as config_lib
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from experiments.tasks import translate
from tests.experiments import mixed_precision
from zoo.models.rnnsearch import RNNSearch


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


@pytest.mark.slow
def test_resume_trains_on_and_visualize_redraws(finished_run):
    workdir, _ = finished_run
    run.main(["translate", "--workdir", str(workdir), "--resume", "--steps", "6"])
    assert "6" in {p.name for p in (workdir / "checkpoints").iterdir()}
    plot = workdir / "plots" / "alignment_0.png"
    plot.unlink()
    assert visualize.main([str(workdir)]) == [plot] and plot.exists()


@pytest.mark.slow
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
        (
            ["translate", "--set", "model.dtype=bf16"],
            r"dtype must be one of \('auto', 'float32', 'bfloat16', 'float16'\), got 'bf16'",
        ),
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


def test_a_config_saved_before_the_precision_fields_loads_with_their_defaults(tmp_path):
    for model in ("rnnsearch", "transformer"):
        saved = config_lib.to_dict(translate.presets(model)["smoke"])
        del saved["model"]["dtype"], saved["model"]["param_dtype"]
        (tmp_path / "config.json").write_text(json.dumps(saved))
        loaded = config_lib.load(translate.Config, tmp_path / "config.json")
        assert (loaded.model.dtype, loaded.model.param_dtype) == ("auto", "float32")


@pytest.mark.slow  # compiling a bf16 train step costs tens of seconds
def test_rnnsearch_trains_in_bfloat16_over_float32_parameters(tmp_path):
    config = mixed_precision.smoke_config(translate, "rnnsearch", tmp_path)
    model = RNNSearch(config.model, rngs=nnx.Rngs(0))
    B, S, T = config.train.batch_size, 11, 7
    source = mixed_precision.tokens((B, S), config.model.source_vocab_size)
    source[1, 5:] = PAD_ID  # a short sentence
    target = mixed_precision.tokens((B, T + 1), config.model.target_vocab_size, seed=1)
    target[:, 0], target[:, -1] = BOS_ID, EOS_ID
    batch = {"source": source, "target": target}
    losses = mixed_precision.train(model, translate.loss_fn, batch, config.train)
    assert losses[-1] < losses[0], losses
    assert mixed_precision.param_dtypes(model) == {jnp.dtype(jnp.float32)}
    logits, weights = nnx.eval_shape(
        lambda m: m(source, target[:, :-1], return_weights=True), model
    )
    carry = nnx.eval_shape(lambda m: m.init_decode_state(m.encode(source), T), model)
    assert logits.dtype == carry["annotations"].dtype == jnp.bfloat16
    # The GRU state and the alignment weights drawn in the pictures stay float32.
    assert carry["state"].dtype == weights.dtype == jnp.float32


def test_attend_translates_your_sentence_and_draws_its_alignment(
    finished_run, capsys, tmp_path, monkeypatch
):
    workdir, _ = finished_run
    out = tmp_path / "mine.png"
    drawn = []
    heatmap = attend.visualize_lib.alignment_heatmap

    def recording(weights, source, target, path, title=""):
        drawn.append((list(source), list(target)))
        return heatmap(weights, source, target, path, title=title)

    monkeypatch.setattr(attend.visualize_lib, "alignment_heatmap", recording)
    text = "in the beginning god created the heaven and the earth"
    hypothesis = attend.main([str(workdir), "--input", text, "--out", str(out)])
    printed = capsys.readouterr().out
    assert hypothesis in printed and f"plot: {out}" in printed
    assert out.stat().st_size > 1000
    # The axes carry the input's pieces and the translation's.
    (source, target) = drawn[0]
    assert "".join(source).replace("\u2581", " ").strip().startswith("in the beginning")
    assert source[-1] == target[-1] == "</s>"
    assert "".join(target[:-1]).replace("\u2581", " ").strip() == hypothesis.strip()
    # Characters no tokenizer piece covers are counted, a source too long is cut, and said.
    attend.main([str(workdir), "--input", "ωωω " + "and " * 40, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "outside the model's vocabulary read as <unk>" in printed
    assert "warning: the source is cut to 23 pieces" in printed
    # Another beam width is the run's config with eval.beam_size set.
    narrow = runner.load_run(workdir, overrides=["eval.beam_size=1"])
    assert narrow.config.eval.beam_size == 1
    assert narrow.setup.held_out.generate.keywords["beam_size"] == 1  # what attend decodes with
    assert attend.main([str(workdir), "--input", text, "--beam_size", "1", "--out", str(out)])
    with pytest.raises(SystemExit):
        attend.main([str(workdir), "--input", "x", "--beam_size", "0"])
    assert "--beam_size must be >= 1" in capsys.readouterr().err


@pytest.mark.slow  # trains a second model
def test_attend_on_rnnencdec_translates_and_says_it_has_no_attention(data_dir, capsys, tmp_path):
    workdir = tmp_path / "encdec"
    argv = ["translate", "--model", "rnnencdec", "--preset", "smoke", "--steps", "1"]
    run.main([*argv, "--workdir", str(workdir), "--set", f"data.data_dir={data_dir}"])
    capsys.readouterr()
    out = tmp_path / "none.png"
    hypothesis = attend.main([str(workdir), "--input", "and god said", "--out", str(out)])
    printed = capsys.readouterr().out
    assert hypothesis in printed and "RNNencdec has no attention" in printed
    assert not out.exists()
