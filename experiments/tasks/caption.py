"""Image captioning: Show, Attend and Tell (Xu et al. 2015, soft attention) on the shared runner.

Default data: scenes of real handwritten MNIST digits (``digit_scenes``, built offline) with
the box of every digit, so where the model looks can be checked. Loss: negative
log-likelihood of the caption plus the doubly stochastic penalty (eq. (14)); set
``loss.penalty_strength=0`` to train without it. Evaluation on held-out images: teacher-forced
loss, BLEU-1..4 of beam-search captions and BLEU-4 of greedy ones (sacrebleu), and attention
correctness: for every generated digit word that names a digit of the scene, is the
attention peak inside that digit's box, next to the chance rate. Pictures: the image and one
panel per generated word with its attention map over the image (the paper's Figures 2-3).

One addition to the paper: the model reads two more image channels, each pixel's row and
column (``data.coordinates``, CoordConv: ``experiments.data.captioning.with_coordinates``
says why); ``--set data.coordinates=false`` gives the paper's plain image input.
"""

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import attention_correctness as correctness_lib
from experiments import config as config_lib
from experiments import decode, losses, runner
from experiments import evaluate as evaluate_lib
from experiments import visualize as visualize_lib
from experiments.config import TrainConfig
from experiments.data import captioning
from experiments.data.tokenizer import PAD_ID
from experiments.data.words import split_words
from experiments.runner import Batch, Evaluation, Setup
from zoo.models.protocol import weights_graphdef
from zoo.models.show_attend_tell import (
    ShowAttendTell,
    ShowAttendTellConfig,
    doubly_stochastic_penalty,
)

MODELS = ("sat",)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # One of experiments.data.captioning.CAPTION_DATASETS: digit_scenes/canvas64 (default),
    # digit_scenes/canvas96, digit_scenes/smoke, or the real coco_captions and flickr8k.
    name: str = "digit_scenes/canvas64"
    data_dir: str = "runs/data"  # where TFDS datasets and vocabularies are prepared and cached
    manual_dir: str | None = None  # local raw files for datasets that need them (Flickr8k)
    max_length: int = 24  # caption tokens, EOS included; longer training captions are dropped
    image_size: int | None = None  # side of the square input; None: the dataset's own
    vocab_size: int = 10_000  # word vocabulary of a real dataset (the digit scenes' is fixed)
    # Append two channels holding each pixel's row and column in [-1, 1] to the images
    # (CoordConv, Liu et al. 2018), so the annotations know where they are.
    coordinates: bool = True

    def __post_init__(self) -> None:
        config_lib.check_range("data", "max_length", self.max_length, at_least=2, integer=True)
        config_lib.check_counts("data", self, "vocab_size", "image_size")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # lambda of the doubly stochastic penalty, eq. (14); 0 trains on the likelihood alone.
    # Added per caption to the caption's summed NLL, as in arctic-captions (alpha_c).
    penalty_strength: float = 1.0

    def __post_init__(self) -> None:
        config_lib.check_range("loss", "penalty_strength", self.penalty_strength, at_least=0)


@dataclasses.dataclass(frozen=True)
class EvalConfig(config_lib.BeamEvalConfig):
    """Held-out images captioned per evaluation (the same ones each time), ``plots`` of them
    drawn with per-word attention."""

    beam_size: int = 3
    length_penalty: float = 0.0


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str  # "caption"
    model_name: str  # "sat"
    data: DataConfig
    # vocab_size and image_channels come from the data: setup replaces them.
    model: ShowAttendTellConfig
    loss: LossConfig
    train: TrainConfig
    eval: EvalConfig

    def __post_init__(self) -> None:
        kernel = self.model.kernel
        if self.loss.penalty_strength > 0 and kernel not in ("auto", "additive"):
            raise config_lib.ConfigError(
                "loss.penalty_strength > 0 needs the attention weights (Xu et al. 2015, eq. "
                f"(14)), which model.kernel={kernel!r} never forms; set "
                "loss.penalty_strength=0 or model.kernel=additive"
            )


def presets(model: str) -> dict[str, Config]:
    del model  # one model
    # 64 x 64 scenes, three conv stages (stride 8) -> an 8 x 8 grid of 64-wide annotations.
    # The loss sits on a plateau (the captions' grammar learnt, the digits not yet told apart)
    # until the attention finds the digits, somewhere between steps 1,000 and 2,500 depending
    # on the seed and later with the penalty; 3,000 steps get past it in every seed tried.
    tiny = Config(
        experiment="caption",
        model_name="sat",
        # The longest digit-scene caption has 20 words: 21 tokens with EOS.
        data=DataConfig(name="digit_scenes/canvas64", max_length=21),
        model=ShowAttendTellConfig(vocab_size=23, embed_dim=64, hidden_dim=128, annotation_dim=64,
                                   attention_dim=64, image_channels=1, conv_channels=(16, 32, 64),
                                   dropout_rate=0.1),
        loss=LossConfig(penalty_strength=1.0),
        train=TrainConfig(steps=3000, batch_size=48, learning_rate=1e-2, warmup_steps=100,
                          eval_every=1000, checkpoint_every=250, log_every=25),
        eval=EvalConfig(examples=500, beam_size=3),
    )  # fmt: skip
    # The paper's decoder sizes (ShowAttendTellConfig's defaults: m = 512, n = 1800,
    # D = A = 512) over a VGG-like CNN on 96 x 96 scenes: three stages -> a 12 x 12 x 512 grid,
    # near VGG conv5_4's 14 x 14 x 512 (sec. 4.3). Adam, minibatches of 64 (sec. 4.3).
    paper = config_lib.replace(
        tiny,
        data={"name": "digit_scenes/canvas96"},
        model=ShowAttendTellConfig(image_channels=1, conv_channels=(64, 128, 256)),
        train=TrainConfig(steps=50_000, batch_size=64, learning_rate=1e-3, warmup_steps=500,
                          eval_every=2500, checkpoint_every=1000, log_every=50),
        eval=EvalConfig(examples=1000, beam_size=5),
    )  # fmt: skip
    sizes = dict(embed_dim=8, hidden_dim=12, annotation_dim=8, attention_dim=8)
    smoke = config_lib.replace(
        tiny,
        data={"name": "digit_scenes/smoke"},
        model=dict(sizes, conv_channels=(4, 4, 8)),
        train=config_lib.SMOKE_TRAIN,
        eval=EvalConfig(examples=12, beam_size=2, plots=1),
    )
    return {"tiny": tiny, "paper": paper, "smoke": smoke}


def load_config(path: pathlib.Path) -> Config:
    return config_lib.load(Config, path)


def make_model(config: Config) -> ShowAttendTell:
    """The model of a config whose data-dependent fields :func:`setup` has filled in."""
    return ShowAttendTell(config.model, rngs=nnx.Rngs(config.train.seed))


def setup(config: Config, workdir: pathlib.Path) -> Setup:
    del workdir
    data = captioning.make_caption_data(
        config.data.name,
        data_dir=pathlib.Path(config.data.data_dir),
        manual_dir=config.data.manual_dir,
        batch_size=config.train.batch_size,
        seed=config.train.seed,
        max_length=config.data.max_length,
        image_size=config.data.image_size,
        vocab_size=config.data.vocab_size,
    )
    channels = data.channels + captioning.COORDINATE_CHANNELS * config.data.coordinates
    model_config = dataclasses.replace(
        config.model, vocab_size=data.vocab_size, image_channels=channels, pad_id=PAD_ID
    )
    stride = 2 ** len(model_config.conv_channels)
    if data.image_size % stride:
        raise ValueError(
            f"data.image_size ({data.image_size}) must be a multiple of {stride}, the stride of "
            f"model.conv_channels ({len(model_config.conv_channels)} pooling stages)"
        )
    config = dataclasses.replace(config, model=model_config)
    model = make_model(config)
    coordinates = config.data.coordinates
    generate = functools.partial(
        generate_captions,
        coordinates=coordinates,
        max_length=data.max_length,
        beam_size=config.eval.beam_size,
        length_penalty=config.eval.length_penalty,
    )
    held_out = HeldOut(config, data, model.grid_shape(data.image_size, data.image_size), generate)
    strength = config.loss.penalty_strength
    return Setup(
        config=config,
        model=model,
        batches=data.train_iterator(),
        loss_fn=functools.partial(loss_fn, penalty_strength=strength, coordinates=coordinates),
        evaluation=Evaluation(
            held_out.batches,
            functools.partial(sums, coordinates=coordinates),
            held_out.metrics,
            generate,
        ),
        visualize=held_out.visualize,
        count_tokens=lambda batch: int(np.sum(batch["caption"][:, 1:] != PAD_ID)),
        best_metric="bleu4",
        best_mode="max",
        held_out=held_out,
    )


def _images(batch: Batch, coordinates: bool) -> jax.Array:
    """The batch's images as the model reads them (``data.coordinates``)."""
    return captioning.with_coordinates(batch["image"]) if coordinates else batch["image"]


def loss_fn(
    model: nnx.Module,
    batch: Batch,
    rng: jax.Array | None,
    *,
    penalty_strength: float,
    coordinates: bool,
) -> tuple[jax.Array, dict]:
    """(NLL + lambda * doubly stochastic penalty) per caption token; dropout keyed by ``rng``.

    Xu et al. 2015, eq. (14), summed per caption as in arctic-captions, then divided by the
    batch's caption tokens so the learning rate means the same as for the other tasks.
    """
    caption = batch["caption"]  # [B, T+1]: BOS w_1 .. w_m EOS PAD ..
    images, labels = _images(batch, coordinates), caption[:, 1:]
    if penalty_strength > 0:
        logits, weights = model(images, caption[:, :-1], return_weights=True, rngs=rng)
    else:  # no weights asked: any kernel, the fast ones included
        logits = model(images, caption[:, :-1], rngs=rng)
    nll, tokens = losses.mean_cross_entropy(logits, labels)
    penalty = jnp.zeros(())
    if penalty_strength > 0:
        real = labels != PAD_ID
        # Empty (padding) rows have no real step, so all their cells would count as unattended.
        penalty = doubly_stochastic_penalty(weights, real, strength=penalty_strength)
        penalty = jnp.where(real.any(axis=1), penalty, 0.0).sum() / tokens
    accuracy = losses.token_accuracy(logits, labels) / tokens
    return nll + penalty, {"nll": nll, "penalty": penalty, "accuracy": accuracy}


def sums(model: nnx.Module, batch: Batch, *, coordinates: bool) -> dict[str, jax.Array]:
    """Summed held-out caption NLL and its token count, teacher-forced."""
    caption = batch["caption"]
    logits = model(_images(batch, coordinates), caption[:, :-1])
    return losses.nll_sums(logits, caption[:, 1:])


def generate_captions(
    model: Any, batch: Batch, *, coordinates: bool, max_length: int, **beam: Any
) -> dict[str, jax.Array]:
    """Greedy and beam-search captions ``[B, max_length]`` (``beam``: the keywords of
    ``decode.best_beam``), and the attention ``[B, T, L]`` while teacher-forcing the reference
    captions and while re-reading the beam's."""
    images = _images(batch, coordinates)
    memory = model.encode(images)
    greedy = decode.greedy(model, memory, max_length=max_length)
    beam_tokens = decode.best_beam(model, memory, max_length=max_length, **beam)
    # The same parameters on the kernel that forms the weights (the fast ones do not).
    looking = nnx.merge(weights_graphdef(model), nnx.state(model))
    _, reference = looking(images, batch["caption"][:, :-1], return_weights=True)
    _, generated = looking(images, decode.with_bos(beam_tokens)[:, :-1], return_weights=True)
    return {"greedy": greedy, "beam": beam_tokens, "reference": reference, "generated": generated}


class HeldOut:
    """The held-out images of a split, read once; BLEU, attention correctness, overlays."""

    def __init__(
        self, config: Config, data: captioning.CaptionData, grid: tuple[int, int], generate: Any
    ):
        self.config = config
        self.generate = generate  # the evaluation's captions and attention
        self.data = data
        self.image_size = (data.image_size, data.image_size)
        self.grid = grid
        self.cached: dict[str, tuple[list[Batch], list[tuple[str, ...]]]] = {}

    def _split(self, split: str) -> tuple[list[Batch], list[tuple[str, ...]]]:
        """The held-out batches of ``split`` and every reference of each image, read once."""
        if split not in self.cached:
            limit = self.config.eval.examples
            batches = self.data.eval_batches(limit, split=split)
            examples = self.data.eval_examples(limit, split=split)
            self.cached[split] = (batches, [e.references for e in examples])
        return self.cached[split]

    def batches(self, split: str) -> list[Batch]:
        return self._split(split)[0]

    def metrics(
        self, split: str, totals: dict[str, float], batches: Any, outputs: list[Any]
    ) -> dict[str, float]:
        _, references = self._split(split)
        # References in the word form of the hypotheses (lower case, punctuation split off).
        references = [tuple(" ".join(split_words(r)) for r in refs) for refs in references]
        captions: dict[str, list[str]] = {"beam": [], "greedy": []}
        named = []  # the box each beam word names
        for batch, out in zip(batches, outputs, strict=True):
            rows = int((batch["caption_length"] > 0).sum())  # the rest is padding
            for kind, texts in captions.items():
                texts.extend(self.data.decode_captions(out[kind])[:rows])
            named.append(self.data.word_boxes(out["beam"], batch["labels"]))
        metrics = {"loss": losses.held_out_loss(totals)}
        metrics |= evaluate_lib.caption_bleu(captions["beam"], references)
        metrics["bleu4_greedy"] = evaluate_lib.caption_bleu(captions["greedy"], references)["bleu4"]
        grading = (named, self.grid, self.image_size)
        metrics |= correctness_lib.caption_metrics(batches, outputs, *grading)
        return metrics

    def visualize(self, model: nnx.Module, out_dir: pathlib.Path) -> list[pathlib.Path]:
        """The beam-search captions of the first test images, each word's attention drawn over
        its image with the box of the digit it names (Xu et al. 2015, Figs. 2-3)."""
        batch = self.data.eval_batches(self.config.eval.plots, split="test")[0]
        rows = min(self.config.eval.plots, int((batch["caption_length"] > 0).sum()))
        paths = [out_dir / f"attention_{i}.png" for i in range(rows)]
        self.draw(model, batch, paths)
        return paths

    def draw(
        self, model: nnx.Module, batch: Batch, paths: list[Any], *, beam_size: int | None = None
    ) -> list[str]:
        """The beam-search captions of the first ``len(paths)`` images of ``batch`` (another
        width: ``beam_size``), each word's attention drawn over its image into its path, with
        the box of the digit it names where the batch has the scenes' ``labels`` and ``boxes``.

        ``batch["caption"]`` is teacher-forced too (the reference attention): padding will do.
        """
        generate = self.generate
        if beam_size is not None:
            generate = functools.partial(generate, beam_size=beam_size)
        out = runner.apply(generate, model, {k: batch[k] for k in ("image", "caption")})
        captions = np.asarray(out["beam"])
        weights = np.asarray(out["generated"]).reshape(*captions.shape, *self.grid)
        named = self.data.word_boxes(captions, batch["labels"]) if "boxes" in batch else None
        boxes = None if named is None else captioning.named_boxes(named, batch["boxes"])
        texts = self.data.decode_captions(captions[: len(paths)])
        for i, (text, path) in enumerate(zip(texts, paths, strict=True)):
            words = self.data.caption_pieces(captions[i])
            n, image = len(words), batch["image"][i]
            box = None if boxes is None else boxes[i, :n]
            visualize_lib.image_overlay(image, words, weights[i, :n], path, boxes=box, title=text)
        return texts
