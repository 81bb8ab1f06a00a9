"""The lm experiment on the smoke preset through the real CLI, sampling from its run, and its
model trained in bfloat16."""

import dataclasses
import json

import jax.numpy as jnp
import pytest
from flax import nnx

from experiments import attend, run, sample, visualize
from experiments.tasks import lm
from tests.experiments import mixed_precision


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lm")
    data_dir = tmp_path_factory.mktemp("data")
    metrics = run.main(
        ["lm", "--preset", "smoke", "--workdir", str(workdir), "--set", f"data.data_dir={data_dir}"]
    )
    return workdir, metrics


def test_trains_and_reports_nats_per_token(finished_run):
    workdir, metrics = finished_run
    # An untrained character model sits near log(vocabulary) nats per character.
    assert 2.0 < metrics["loss"] < 5.0 and metrics["validation_loss"] > 0
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"], rel=1e-4)
    config = json.loads((workdir / "config.json").read_text())
    assert config["experiment"] == "lm" and config["data"]["tokenizer"] == "char"
    assert (workdir / "plots" / "self_attention.png").stat().st_size > 1000
    (workdir / "plots" / "self_attention.png").unlink()
    assert visualize.main([str(workdir)])[0].exists()


def test_sample_continues_the_prompt(finished_run, capsys):
    workdir, _ = finished_run
    greedy = sample.main(
        [str(workdir), "--prompt", "KING:", "--length", "12", "--method", "greedy"]
    )
    assert greedy == sample.main(
        [str(workdir), "--prompt", "KING:", "--length", "12", "--method", "greedy"]
    )
    drawn = [
        sample.main([str(workdir), "--prompt", "KING:", "--length", "12", "--seed", str(seed)])
        for seed in (0, 0, 1)
    ]
    assert drawn[0] == drawn[1] != drawn[2]
    assert capsys.readouterr().out.startswith("[step 4] KING:")


def test_sample_slides_past_the_trained_context_and_rejects_bad_requests(finished_run):
    workdir, _ = finished_run
    # The smoke run trains on 16 tokens and has 32 learned positions: 40 tokens slide.
    assert len(sample.main([str(workdir), "--prompt", "KING:", "--length", "40"])) == 40
    for argv, message in [
        (["--length", "0"], r"--length must be >= 1, got 0"),
        (["--prompt", "KING\u00c9\u20ac:"], r"outside the model's vocabulary: '\u00c9', '\u20ac'"),
        (["--window", "17"], r"--window 17 exceeds the trained context of 16 tokens"),
    ]:
        with pytest.raises(SystemExit, match=message):
            sample.main([str(workdir), "--prompt", "KING:", *argv])


def test_trains_in_bfloat16_over_float32_parameters(tmp_path):
    config = mixed_precision.smoke_config(lm, "transformer", tmp_path)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=83))
    model = lm.make_model(config)
    B, T = config.train.batch_size, config.data.context_length
    tokens = mixed_precision.tokens((B, T + 1), 83)
    losses = mixed_precision.train(model, lm.loss_fn, {"tokens": tokens}, config.train)
    assert losses[-1] < losses[0], losses
    assert mixed_precision.param_dtypes(model) == {jnp.dtype(jnp.float32)}
    logits, weights = nnx.eval_shape(lambda m: m(tokens[:, :-1], return_weights=True), model)
    hidden = nnx.eval_shape(lambda m: m.embed(tokens, jnp.arange(T + 1), rngs=None), model)
    assert logits.dtype == hidden.dtype == jnp.bfloat16
    assert {w.dtype for w in weights["decoder_self"]} == {jnp.dtype(jnp.float32)}


def test_attend_continues_your_prompt_and_outlines_the_query(
    finished_run, capsys, tmp_path, monkeypatch
):
    workdir, _ = finished_run
    out = tmp_path / "mine.png"
    drawn = []
    grid = attend.visualize_lib.head_grid

    def recording(weights, queries, keys, path, title="", **kwargs):
        drawn.append((list(queries), list(keys), kwargs["highlight"]))
        return grid(weights, queries, keys, path, title, **kwargs)

    monkeypatch.setattr(attend.visualize_lib, "head_grid", recording)
    argv = [str(workdir), "--input", "KING: the crown", "--query", "the", "--length", "5"]
    continuation = attend.main([*argv, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "KING: the crown" + continuation in printed and out.stat().st_size > 1000
    # Both axes carry the prompt's characters; the outlined row is the "e" ending "the".
    queries, keys, row = drawn[0]
    assert queries == keys and "".join(queries).replace("\u2423", " ") == "KING: the crown"
    assert row == 8
    with pytest.raises(SystemExit):
        attend.main([str(workdir), "--input", "KING", "--query", "queen"])
    assert "--query 'queen' is not in the prompt" in capsys.readouterr().err
    # Unknown characters are counted; a prompt past the trained context (16) keeps its end.
    attend.main([str(workdir), "--input", "KING \u20ac" + " of France" * 3, "--length", "2"])
    printed = capsys.readouterr().out
    assert "note: 1 characters or pieces outside the model's vocabulary" in printed
    assert "warning: the prompt is cut to its last 16 tokens" in printed
