"""Image captioning: Show, Attend and Tell (Xu et al. 2015, soft attention) on the shared runner.

Default data: scenes of real handwritten MNIST digits (``digit_scenes``, built offline) with
the box of every digit. Loss: the caption's NLL plus the doubly stochastic penalty (eq. (14);
``loss.penalty_strength=0`` drops it). Evaluation: teacher-forced loss, BLEU-1..4 of beam
captions and BLEU-4 of greedy ones, and attention correctness (``attention_correctness``):
is the attention peak of each generated digit word inside that digit's box. Pictures: one
panel per generated word with its attention over the image (the paper's Figures 2-3).

One addition to the paper: the model also reads each pixel's row and column
(``model.coordinates``, CoordConv: ``zoo.models.show_attend_tell.with_coordinates`` says why);
``--set model.coordinates=false`` gives the paper's plain image input.
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
from experiments.runner import Batch, Evaluation, Setup
from zoo.models.protocol import on_weights_kernel
from zoo.models.show_attend_tell import (
    ShowAttendTell,
    ShowAttendTellConfig,
    doubly_stochastic_penalty,
)

MODELS = ("sat",)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The keywords of ``experiments.data.captioning.make_caption_data``."""

    # One of experiments.data.captioning.CAPTION_DATASETS: digit_scenes/canvas64 (default),
    # digit_scenes/canvas96, digit_scenes/smoke, or the real coco_captions and flickr8k.
    name: str = "digit_scenes/canvas64"
    data_dir: str = "runs/data"  # where TFDS datasets and vocabularies are prepared and cached
    manual_dir: str | None = None  # local raw files for datasets that need them (Flickr8k)
    max_length: int = 24  # caption tokens, EOS included; longer training captions are dropped
    image_size: int | None = None  # side of the square input; None: the dataset's own
    vocab_size: int = 10_000  # word vocabulary of a real dataset (the digit scenes' is fixed)

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
                "loss.penalty_strength > 0 needs the attention weights (Xu et al. 2015, eq. (14)), "
                f"which model.kernel={kernel!r} never forms; set loss.penalty_strength=0 or "
                "model.kernel=additive"
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
                                   attention_dim=64, image_channels=1, coordinates=True,
                                   conv_channels=(16, 32, 64), dropout_rate=0.1),
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
        model=ShowAttendTellConfig(image_channels=1, coordinates=True,
                                   conv_channels=(64, 128, 256)),
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


def setup(config: Config, workdir: pathlib.Path) -> Setup:
    del workdir
    data = captioning.make_caption_data(
        **dataclasses.asdict(config.data),
        batch_size=config.train.batch_size,
        seed=config.train.seed,
    )
    filled = {"vocab_size": data.vocab_size, "image_channels": data.channels, "pad_id": PAD_ID}
    config = config_lib.replace(config, model=filled)
    model = ShowAttendTell(config.model, rngs=nnx.Rngs(config.train.seed))
    beam = config.eval.beam()
    generate = functools.partial(generate_captions, max_length=data.max_length, **beam)
    grid = model.grid_shape(data.image_size, data.image_size)  # raises on a size it cannot pool
    held_out = HeldOut(config, data, grid, generate)
    return Setup(
        config=config,
        model=model,
        batches=data.train_iterator(),
        loss_fn=functools.partial(loss_fn, penalty_strength=config.loss.penalty_strength),
        evaluation=Evaluation(held_out.batches, sums, held_out.metrics, generate),
        visualize=held_out.visualize,
        count_tokens=lambda batch: int(np.sum(batch["caption"][:, 1:] != PAD_ID)),
        best_metric="bleu4",
        held_out=held_out,
    )


def _forward(model: Any, batch: Batch, rng: Any = None, **kwargs: Any) -> tuple[Any, jax.Array]:
    """Teacher-forced ``(logits or (logits, weights), labels)``: ``batch["caption"]`` is
    ``[B, T+1]``, BOS w_1 .. w_m EOS PAD ..; dropout keyed by ``rng``."""
    caption = batch["caption"]
    return model(batch["image"], caption[:, :-1], rngs=rng, **kwargs), caption[:, 1:]


def loss_fn(
    model: nnx.Module, batch: Batch, rng: jax.Array | None, *, penalty_strength: float
) -> tuple[jax.Array, dict]:
    """(NLL + lambda * doubly stochastic penalty) per caption token; dropout keyed by ``rng``.

    Xu et al. 2015, eq. (14), summed per caption as in arctic-captions, then divided by the
    batch's caption tokens so the learning rate means the same as for the other tasks.
    """
    if penalty_strength > 0:
        (logits, weights), labels = _forward(model, batch, rng, return_weights=True)
        penalty = doubly_stochastic_penalty(weights, labels != PAD_ID, strength=penalty_strength)
    else:  # no weights asked: any kernel, the fast ones included
        (logits, labels), penalty = _forward(model, batch, rng), jnp.zeros(())
    nll, tokens = losses.mean_cross_entropy(logits, labels)
    penalty = penalty.sum() / tokens
    accuracy = losses.token_accuracy(logits, labels) / tokens
    return nll + penalty, {"nll": nll, "penalty": penalty, "accuracy": accuracy}


def sums(model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
    """Summed held-out caption NLL and its token count, teacher-forced."""
    return losses.nll_sums(*_forward(model, batch))


def generate_captions(model: Any, batch: Batch, *, max_length: int, **beam: Any) -> dict[str, Any]:
    """Greedy and beam-search captions ``[B, max_length]`` (``beam``: the keywords of
    ``decode.best_beam``), and the attention ``[B, T, L]`` while teacher-forcing the reference
    captions and while re-reading the beam's."""
    memory = model.encode(batch["image"])
    greedy = decode.greedy(model, memory, max_length=max_length)
    beam_tokens = decode.best_beam(model, memory, max_length=max_length, **beam)
    looking = on_weights_kernel(model)  # the fast kernels never form the weights
    (_, reference), _ = _forward(looking, batch, return_weights=True)
    beam_batch = {"image": batch["image"], "caption": decode.with_bos(beam_tokens)}
    (_, generated), _ = _forward(looking, beam_batch, return_weights=True)
    return {"greedy": greedy, "beam": beam_tokens, "reference": reference, "generated": generated}


class HeldOut:
    """The held-out images of a split, read once; BLEU, attention correctness, overlays."""

    def __init__(
        self, config: Config, data: captioning.CaptionData, grid: tuple[int, int], generate: Any
    ):
        self.config, self.data, self.grid = config, data, grid
        self.generate = generate  # the evaluation's captions and attention
        limit = config.eval.examples  # a split's held-out batches and references, read once:
        self.batches = functools.cache(lambda split: data.eval_batches(limit, split=split))
        self.references = functools.cache(lambda split: data.eval_references(limit, split=split))

    def metrics(
        self, split: str, totals: dict[str, float], batches: Any, outputs: list[Any]
    ) -> dict[str, float]:
        references = self.references(split)

        def bleu(kind: str) -> dict[str, float]:  # the last batch's padding rows dropped
            ids = np.concatenate([out[kind] for out in outputs])[: len(references)]
            return evaluate_lib.caption_bleu(self.data.decode_captions(ids), references)

        size = (self.data.image_size, self.data.image_size)
        grading = (batches, outputs, self.data.word_boxes, self.grid, size)
        metrics = {"loss": losses.held_out_loss(totals), **bleu("beam")}
        metrics["bleu4_greedy"] = bleu("greedy")["bleu4"]
        return metrics | correctness_lib.caption_metrics(*grading)

    def visualize(self, model: nnx.Module, out_dir: pathlib.Path) -> list[pathlib.Path]:
        """The beam-search captions of the first test images, each word's attention drawn over
        its image with the box of the digit it names (Xu et al. 2015, Figs. 2-3)."""
        batch = self.data.eval_batches(self.config.eval.plots, split="test")[0]
        rows = min(self.config.eval.plots, int((batch["caption_length"] > 0).sum()))
        paths = [out_dir / f"attention_{i}.png" for i in range(rows)]
        self.draw(model, batch, paths)
        return paths

    def draw(self, model: nnx.Module, batch: Batch, paths: list[Any]) -> list[str]:
        """The beam-search captions of the first ``len(paths)`` images of ``batch``, each word's
        attention drawn over its image into its path, with the box of the digit it names where
        the batch has ``labels`` and ``boxes``; ``batch["caption"]`` may be padding."""
        out = runner.apply(self.generate, model, {k: batch[k] for k in ("image", "caption")})
        captions = np.asarray(out["beam"])
        weights = np.asarray(out["generated"]).reshape(*captions.shape, *self.grid)
        named = self.data.word_boxes(captions, batch["labels"]) if "boxes" in batch else None
        boxes = None if named is None else captioning.named_boxes(named, batch["boxes"])
        texts = self.data.decode_captions(captions[: len(paths)])
        for i, (text, path) in enumerate(zip(texts, paths, strict=True)):
            words = self.data.caption_pieces(captions[i])
            box = None if boxes is None else boxes[i, : len(words)]
            visualize_lib.image_overlay(
                batch["image"][i], words, weights[i, : len(words)], path, boxes=box, title=text
            )
        return texts
