"""The caption experiment end to end on the smoke preset, through the real CLI; its loss,
decoding and attention-correctness wiring on hand-made inputs."""

import dataclasses
import functools
import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import attend, evaluate, run, visualize
from experiments import attention_correctness as correctness
from experiments import config as config_lib
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from experiments.tasks import caption
from tests.experiments import mixed_precision
from zoo.models.show_attend_tell import ShowAttendTell

RATES = ("peak_in_box", "mass_in_box", "chance", "chance_cells")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("run")
    metrics = run.main(
        [
            "caption",
            "--preset",
            "smoke",
            "--workdir",
            str(workdir),
            "--set",
            f"data.data_dir={data_dir}",
        ]
    )
    return workdir, metrics


@pytest.fixture(scope="module")
def smoke(finished_run):
    """The finished run's config, a fresh setup (its data prepared by then) and its data."""
    workdir, _ = finished_run
    config = config_lib.load(caption.Config, workdir / "config.json")
    setup = caption.setup(config, workdir)
    return config, setup.held_out.data, setup


def test_trains_evaluates_checkpoints_and_draws(finished_run):
    workdir, metrics = finished_run
    bleu = ["bleu1", "bleu2", "bleu3", "bleu4", "bleu4_greedy"]
    rates = [f"attention_{name}" for name in RATES] + ["reference_peak_in_box"]
    keys = {"loss", *bleu, *rates, "attention_words"}
    assert keys | {f"validation_{k}" for k in keys} <= set(metrics)
    assert metrics["loss"] > 0 and metrics["attention_words"] >= 0
    assert all(0.0 <= metrics[k] <= 100.0 for k in bleu)
    # Rates over generated digit words are NaN when the untrained model names no digit of
    # the scene; the teacher-forced one always has words to grade.
    assert all(math.isnan(metrics[k]) or 0.0 <= metrics[k] <= 1.0 for k in rates)
    assert 0.0 <= metrics["reference_peak_in_box"] <= 1.0
    config = json.loads((workdir / "config.json").read_text())
    assert config["model_name"] == "sat" and config["train"]["steps"] == 4
    assert config["loss"]["penalty_strength"] == 1.0
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {line["split"] for line in lines} == {"train", "eval", "test"}
    train = next(line for line in lines if line["split"] == "train")
    assert {"nll", "penalty", "accuracy"} <= set(train)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert list((workdir / "best").iterdir())
    assert (workdir / "plots" / "attention_0.png").stat().st_size > 1000


@pytest.mark.slow
def test_resume_trains_on_and_visualize_redraws(finished_run):
    workdir, _ = finished_run
    run.main(["caption", "--workdir", str(workdir), "--resume", "--steps", "5"])
    assert "5" in {p.name for p in (workdir / "checkpoints").iterdir()}
    plot = workdir / "plots" / "attention_0.png"
    plot.unlink()
    assert visualize.main([str(workdir)]) == [plot] and plot.exists()


def test_loss_is_nll_plus_the_penalty_per_token_and_zero_strength_drops_it(smoke):
    config, data, setup = smoke
    batch = next(data.train_iterator())

    @nnx.jit
    def losses(model, batch, rng):
        weighted = caption.loss_fn(model, batch, rng, penalty_strength=1.0)
        plain = caption.loss_fn(model, batch, rng, penalty_strength=0.0)
        dropout_free = caption.loss_fn(model, batch, None, penalty_strength=1.0)[1]["penalty"]
        _, weights = model(batch["image"], batch["caption"][:, :-1], return_weights=True)
        return weighted, plain, dropout_free, weights

    (total, parts), (without, plain), dropout_free, weights = losses(
        setup.model, batch, jax.random.key(3)
    )
    assert float(plain["penalty"]) == 0.0 and float(without) == float(plain["nll"])
    # The same rng: the same dropout, so the same NLL either way.
    np.testing.assert_allclose(parts["nll"], plain["nll"], rtol=1e-6)
    np.testing.assert_allclose(total, parts["nll"] + parts["penalty"], rtol=1e-6)
    # By hand: sum over captions of sum_i (1 - sum_t alpha_ti)^2, over the caption tokens.
    real = np.asarray(batch["caption"][:, 1:] != PAD_ID)
    totals = np.einsum("btl,bt->bl", np.asarray(weights), real)
    expected = ((1.0 - totals) ** 2).sum() / real.sum()
    np.testing.assert_allclose(dropout_free, expected, rtol=1e-5)
    assert config.loss.penalty_strength == 1.0


def test_greedy_decoding_follows_the_models_argmax_and_beam_captions_are_well_formed(smoke):
    config, data, setup = smoke
    batch = data.eval_batches(data.batch_size, split="test")[0]
    images = batch["image"]
    T = config.data.max_length
    out = nnx.jit(setup.evaluation.generate)(
        setup.model, {k: batch[k] for k in ("image", "caption")}
    )
    greedy, beam = np.asarray(out["greedy"]), np.asarray(out["beam"])
    for tokens in (greedy, beam):
        assert tokens.shape == (data.batch_size, T) and tokens.dtype == np.int32
        assert tokens.min() >= 0 and tokens.max() < data.vocab_size
        for row in tokens:  # nothing but padding after the end token
            ends = np.flatnonzero(row == EOS_ID)
            if ends.size:
                assert np.all(row[ends[0] + 1 :] == PAD_ID)
    # Greedy search is the step function's argmax, fed back, until the end token.
    model = setup.model
    memory = model.encode(jnp.asarray(images[:2]))
    decoder_state = model.init_decode_state(memory, T)
    previous = jnp.full((2,), BOS_ID, jnp.int32)
    expected = []
    for _ in range(T):
        logits, decoder_state = model.step(previous, decoder_state)
        previous = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        expected.append(np.asarray(previous))
    expected = np.stack(expected, axis=1)
    for row, want in zip(greedy[:2], expected, strict=True):
        length = int(np.argmax(want == EOS_ID)) + 1 if (want == EOS_ID).any() else T
        np.testing.assert_array_equal(row[:length], want[:length])


def test_digit_word_attention_on_hand_made_maps():
    # A 12 x 20 image under a 3 x 5 grid (4 x 4 pixel cells), two captions of 5 tokens.
    grid, image_size = (3, 5), (12, 20)
    boxes = np.full((2, 3, 4), -1, np.int32)
    boxes[0, 0] = (0, 0, 4, 8)  # cells (0, 0) and (0, 1)
    boxes[0, 1] = (4, 12, 12, 20)  # cells (1..2, 3..4)
    boxes[1, 0] = (8, 0, 12, 4)  # cell (2, 0)
    word_boxes = np.array([[-1, 0, -1, 1, -1], [-1, -1, 0, -1, -1]])
    weights = np.full((2, 5, 15), 0.01)
    peaks = {(0, 1): (0, 1), (0, 3): (2, 4), (1, 2): (0, 4)}  # the last misses its box
    for (row, step), (i, j) in peaks.items():
        weights[row, step, i * 5 + j] = 1.0
    result = correctness.word_attention(weights, word_boxes, boxes, grid, image_size)
    np.testing.assert_array_equal(result.peak_in_box, [True, True, False])
    np.testing.assert_allclose(result.chance, [32 / 240, 64 / 240, 16 / 240])
    np.testing.assert_allclose(result.chance_cells, [2 / 15, 4 / 15, 1 / 15])
    assert result.rates()["peak_in_box"] == pytest.approx(2 / 3)
    # Graded one step earlier (the article before each digit word), all three hit.
    for (row, step), (i, j) in {(0, 0): (0, 1), (0, 2): (2, 4), (1, 1): (2, 0)}.items():
        weights[row, step, i * 5 + j] = 1.0
    early = correctness.word_attention(weights, word_boxes, boxes, grid, image_size, lag=1)
    np.testing.assert_array_equal(early.peak_in_box, [True, True, True])
    empty = correctness.word_attention(weights, np.full((2, 5), -1), boxes, grid, image_size)
    assert empty.peak_in_box.shape == (0,) and math.isnan(empty.rates()["peak_in_box"])
    with pytest.raises(ValueError, match=r"weights must be \[B, T, gh \* gw\]"):
        correctness.word_attention(weights[:, :4], word_boxes, boxes, grid, image_size)


def test_attention_metric_with_the_datas_word_boxes_on_known_maps(smoke):
    """Real scenes and their own captions as the 'generated' words; maps placed by hand on
    the named digit's centre score 1, on the cell diagonally opposite score 0."""
    config, data, setup = smoke
    batch = data.eval_batches(data.batch_size, split="validation")[0]
    tokens = batch["caption"][:, 1:]
    word_boxes = data.word_boxes(tokens, batch["labels"])
    np.testing.assert_array_equal(word_boxes, batch["word_boxes"][:, 1:])
    gh, gw = setup.model.grid_shape(data.image_size, data.image_size)
    cell = data.image_size // gh
    hit = np.zeros((*tokens.shape, gh * gw))
    miss = np.zeros_like(hit)
    for row, step in zip(*np.nonzero(word_boxes >= 0), strict=True):
        top, left, bottom, right = batch["boxes"][row, word_boxes[row, step]]
        i, j = (top + bottom) // 2 // cell, (left + right) // 2 // cell
        hit[row, step, i * gw + j] = 1.0
        far_i, far_j = (gh - 1 if i < gh / 2 else 0), (gw - 1 if j < gw / 2 else 0)
        miss[row, step, far_i * gw + far_j] = 1.0
    image_size = (data.image_size, data.image_size)
    graded = (word_boxes >= 0).sum()
    for maps, rate in ((hit, 1.0), (miss, 0.0)):
        result = correctness.word_attention(maps, word_boxes, batch["boxes"], (gh, gw), image_size)
        assert result.peak_in_box.size == graded > 0
        assert result.rates()["peak_in_box"] == rate
    assert config.data.name == "digit_scenes/smoke"


def test_caption_bleu_with_several_references():
    hypotheses = ["a two left of a three", "a one above a five"]
    references = [["a two left of a three"], ["a one below a five", "a one above the five"]]
    scores = evaluate.caption_bleu(hypotheses, references)
    assert list(scores) == ["bleu1", "bleu2", "bleu3", "bleu4"]
    assert scores["bleu1"] == pytest.approx(100.0)  # every word is in some reference
    assert 0 < scores["bleu4"] < scores["bleu3"] < scores["bleu2"] < 100.0
    assert evaluate.caption_bleu(hypotheses[:1], references[:1])["bleu4"] == pytest.approx(100)
    with pytest.raises(ValueError, match="at least one reference"):
        evaluate.caption_bleu(hypotheses, [["x"], []])


def test_image_overlay_draws_a_panel_per_word_and_checks_shapes(tmp_path):
    image = np.random.default_rng(0).random((16, 16, 1))
    maps = np.random.default_rng(1).random((3, 2, 2))
    boxes = np.array([[-1, -1, -1, -1], [2, 3, 9, 11], [-1, -1, -1, -1]])
    path = visualize.image_overlay(
        image, ["a", "seven", "</s>"], maps, tmp_path / "o.png", boxes=boxes, title="a seven"
    )
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"maps must be \[T, gh, gw\] with T = 2"):
        visualize.image_overlay(image, ["a", "seven"], maps, tmp_path / "x.png")


def test_presets_and_the_switch_for_training_without_the_penalty():
    presets = caption.presets("sat")
    assert list(presets) == ["tiny", "paper", "smoke"]
    tiny = presets["tiny"]
    assert tiny.loss.penalty_strength == 1.0
    assert 64 // 2 ** len(tiny.model.conv_channels) == 8  # canvas64 -> an 8 x 8 grid
    off = config_lib.apply_overrides(tiny, ["loss.penalty_strength=0"])
    assert off.loss.penalty_strength == 0.0 and off.model == tiny.model


def test_the_model_reads_grey_scenes_with_their_coordinates(finished_run, smoke):
    workdir, _ = finished_run
    _, _, setup = smoke
    assert setup.model.config.image_channels == 1 and setup.model.config.coordinates
    saved = json.loads((workdir / "config.json").read_text())["model"]
    assert saved["image_channels"] == 1 and saved["coordinates"] is True
    assert setup.model.convs[0].kernel.shape[2] == 1 + 2  # grey + (row, column)


@pytest.mark.slow  # compiling a bf16 train step costs tens of seconds
def test_trains_in_bfloat16_over_float32_parameters(tmp_path):
    config = mixed_precision.smoke_config(caption, "sat", tmp_path)
    # The smoke scenes' layout (1 channel, 23 words), at a quarter of their 64 x 64 side.
    data = types.SimpleNamespace(channels=1, vocab_size=23, image_size=16)
    model_config = dataclasses.replace(config.model, vocab_size=23, image_channels=1)
    model = ShowAttendTell(model_config, rngs=nnx.Rngs(config.train.seed))
    B, T = config.train.batch_size, 9
    images = np.random.default_rng(0).uniform(size=(B, 16, 16, 1)).astype(np.float32)
    captions = mixed_precision.tokens((B, T + 1), data.vocab_size)
    captions[:, 0], captions[:, -1] = BOS_ID, EOS_ID
    loss_fn = functools.partial(caption.loss_fn, penalty_strength=1.0)
    batch = {"image": images, "caption": captions}
    losses = mixed_precision.train(model, loss_fn, batch, config.train)
    assert losses[-1] < losses[0], losses
    assert mixed_precision.param_dtypes(model) == {jnp.dtype(jnp.float32)}
    inputs = jnp.asarray(images)
    logits, weights = nnx.eval_shape(
        lambda m: m(inputs, captions[:, :-1], return_weights=True), model
    )
    state = nnx.eval_shape(lambda m: m.init_decode_state(m.encode(inputs), T), model)
    assert logits.dtype == state["annotations"].dtype == jnp.bfloat16
    # The LSTM state and the attention maps drawn over the images stay float32.
    assert state["memory"].dtype == state["hidden"].dtype == weights.dtype == jnp.float32


def test_attend_captions_your_image_and_draws_each_word(
    finished_run, capsys, tmp_path, monkeypatch
):
    from PIL import Image

    workdir, _ = finished_run
    drawn = []
    overlay = attend.visualize_lib.image_overlay

    def recording(image, words, maps, path, **kwargs):
        drawn.append((image.shape, list(words), maps.shape))
        return overlay(image, words, maps, path, **kwargs)

    monkeypatch.setattr(attend.visualize_lib, "image_overlay", recording)
    photo = tmp_path / "photo.jpg"  # colour, and not the scenes' size: prepared as they were
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "mine.png"
    text = attend.main([str(workdir), "--input", str(photo), "--out", str(out)])
    printed = capsys.readouterr().out
    assert text in printed and out.stat().st_size > 1000
    # The scenes' grey 64 x 64 input; one panel per word of the caption printed, end included.
    (shape, words, maps) = drawn[0]
    assert shape == (64, 64, 1) and maps[0] == len(words)
    assert " ".join(words[:-1]) == text and words[-1] == "</s>"
    with pytest.raises(SystemExit):
        attend.main([str(workdir), "--input", str(tmp_path / "missing.png")])
    assert f"cannot read the image {tmp_path / 'missing.png'}" in capsys.readouterr().err
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(SystemExit):
        attend.main([str(workdir), "--input", str(tmp_path / "text.png")])
    assert "cannot read the image" in capsys.readouterr().err
