"""Translation on the shared runner: RNNsearch and RNNencdec (Bahdanau et al. 2014) and the
Transformer encoder-decoder (Vaswani et al. 2017).

Default data: English -> Spanish Bible verses (``bible_en_es``, shipped, offline).
Evaluation: teacher-forced loss on the held-out split, corpus BLEU of beam-search
translations, and BLEU by source length (Bahdanau et al.'s Figure 2). Pictures: alignment
heatmaps of held-out sentences (their Figure 3); for the Transformer, every layer's and head's
cross-attention.
"""

import dataclasses
import functools
import operator
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx

from experiments import config as config_lib
from experiments import decode, losses, runner
from experiments import evaluate as evaluate_lib
from experiments import visualize as visualize_lib
from experiments.config import TrainConfig
from experiments.data import translation
from experiments.data.tokenizer import PAD_ID
from experiments.runner import Batch, Evaluation, Setup
from zoo.models.protocol import on_weights_kernel
from zoo.models.rnnsearch import RNNSearch, RNNSearchConfig
from zoo.models.transformer import BASE, BIG, Transformer, TransformerConfig

MODELS = ("rnnsearch", "rnnencdec", "transformer")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The keywords of ``experiments.data.translation.make_translation_data``."""

    name: str = "bible_en_es"  # a TFDS name: the shipped default, or e.g. wmt14_translate/fr-en
    data_dir: str = "runs/data"  # where TFDS datasets and tokenizers are prepared and cached
    manual_dir: str | None = None  # local files for datasets that need them (TFDS manual_dir)
    max_length: int = 50  # tokens per side; longer pairs are dropped (RNNsearch-50)

    def __post_init__(self) -> None:
        # A sentence needs a token and its end token.
        config_lib.check_range("data", "max_length", self.max_length, at_least=2, integer=True)


@dataclasses.dataclass(frozen=True)
class EvalConfig(config_lib.BeamEvalConfig):
    """Held-out sentences (none of them seen in training) scored and translated for BLEU, in
    batches of train.batch_size; ``plots`` of them drawn as alignment heatmaps."""


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str  # "translate"
    model_name: str  # one of MODELS
    data: DataConfig
    # RNNsearch / RNNencdec: source and target vocabulary sizes also size the tokenizers; the
    # Transformer: vocab_size sizes the shared source-target tokenizer (sec. 3.4).
    model: RNNSearchConfig | TransformerConfig
    train: TrainConfig
    eval: EvalConfig


# Every model's tiny preset trains in about ten minutes on 2 CPU cores (the main job's budget is
# 15), its smoke preset in seconds.
_TINY: dict[str, Any] = {
    "data": DataConfig(max_length=40),
    "eval": EvalConfig(examples=300, beam_size=4),
}
_TINY_TRAIN: dict[str, Any] = dict(
    steps=1500, batch_size=64, eval_every=1500, checkpoint_every=250, log_every=25
)
_SMOKE: dict[str, Any] = {
    "data": {"max_length": 24},
    "train": config_lib.SMOKE_TRAIN,
    "eval": EvalConfig(examples=8, beam_size=2, plots=1),
}


def presets(model: str) -> dict[str, Any]:
    if model == "transformer":
        return _transformer_presets()
    paper = Config(
        experiment="translate",
        model_name=model,
        data=DataConfig(max_length=50),
        model=RNNSearchConfig(attention=model == "rnnsearch"),  # the sizes of appendix A.2
        # Appendix B.2: minibatches of 80 sentences, Adadelta; about 5 days on a GPU.
        train=TrainConfig(steps=300_000, batch_size=80, learning_rate=1.0, schedule="constant",
                          warmup_steps=0, optimizer="adadelta", eval_every=5000,
                          checkpoint_every=1000),
        eval=EvalConfig(beam_size=12, examples=2000),
    )  # fmt: skip
    sizes = dict(embed_dim=128, hidden_dim=192, attention_dim=192, maxout_dim=96)
    tiny = config_lib.replace(
        paper,
        model=dict(sizes, source_vocab_size=4000, target_vocab_size=4000),
        train=TrainConfig(**_TINY_TRAIN, learning_rate=2e-3, warmup_steps=100),
        **_TINY,
    )
    sizes = dict(embed_dim=16, hidden_dim=24, attention_dim=16, maxout_dim=8)
    smoke = config_lib.replace(
        tiny, model=dict(sizes, source_vocab_size=300, target_vocab_size=300), **_SMOKE
    )
    return {"tiny": tiny, "paper": paper, "smoke": smoke}


def _transformer_presets() -> dict[str, Config]:
    # The paper's recipe (sec. 5.3-5.4): Adam, warm-up then 1/sqrt(step), label smoothing 0.1,
    # residual dropout 0.1, post-LN, shared vocabulary and tied embeddings; Table 3's base and
    # big models on a smaller vocabulary.
    base = Config(
        experiment="translate",
        model_name="transformer",
        data=DataConfig(max_length=50),
        model=dataclasses.replace(BASE, vocab_size=8000),
        # learning_rate: the peak of eq. (3) for d_model 512 and 4000 warm-up steps
        train=TrainConfig(steps=100_000, batch_size=128, learning_rate=7e-4, schedule="rsqrt",
                          warmup_steps=4000, optimizer="adam", label_smoothing=0.1,
                          eval_every=5000, checkpoint_every=1000),
        eval=EvalConfig(examples=2000, beam_size=4),
    )  # fmt: skip
    big = config_lib.replace(
        base, model=dataclasses.replace(BIG, vocab_size=8000), train={"learning_rate": 5e-4}
    )
    sizes = dict(model_dim=128, ff_dim=512, num_heads=4, num_layers=3)
    tiny = config_lib.replace(
        base,
        model=dict(sizes, vocab_size=4000),
        train=dict(_TINY_TRAIN, learning_rate=1.5e-3, warmup_steps=300),
        **_TINY,
    )
    sizes = dict(vocab_size=300, model_dim=16, ff_dim=32, num_heads=2, num_layers=1)
    smoke = config_lib.replace(tiny, model=sizes, **_SMOKE)
    return {"tiny": tiny, "base": base, "big": big, "smoke": smoke}


def setup(config: Config, workdir: pathlib.Path) -> Setup:
    del workdir
    if isinstance(config.model, TransformerConfig):
        source_vocab = target_vocab = config.model.vocab_size
    else:
        source_vocab, target_vocab = config.model.source_vocab_size, config.model.target_vocab_size
    data = translation.make_translation_data(
        **dataclasses.asdict(config.data),
        source_vocab_size=source_vocab,
        target_vocab_size=target_vocab,
        # The Transformer ties source and target embeddings: one shared vocabulary.
        shared_vocab=isinstance(config.model, TransformerConfig),
        batch_size=config.train.batch_size,
        seed=config.train.seed,
    )
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, pad_id=PAD_ID))
    make_model = Transformer if isinstance(config.model, TransformerConfig) else RNNSearch
    model = make_model(config.model, rngs=nnx.Rngs(config.train.seed))  # type: ignore[arg-type]
    generate = functools.partial(translate, max_length=config.data.max_length, **config.eval.beam())
    held_out = HeldOut(config, data, generate)
    return Setup(
        config=config,
        model=model,
        batches=data.train_iterator(),
        loss_fn=functools.partial(loss_fn, label_smoothing=config.train.label_smoothing),
        evaluation=Evaluation(held_out.batches, sums, held_out.metrics, generate),
        visualize=held_out.visualize,
        count_tokens=lambda batch: int(np.sum(batch["target"] != PAD_ID)),
        best_metric="bleu",
        held_out=held_out,
    )


def _forward(model: Any, batch: Batch, rng: Any = None, **kwargs: Any) -> tuple[Any, jax.Array]:
    """Teacher-forced ``(logits or (logits, weights), labels)``: ``batch["target"]`` is
    ``[B, T+1]``, BOS y_1 .. y_n EOS pad ..; dropout (the Transformer's) keyed by ``rng``."""
    target = batch["target"]
    return model(batch["source"], target[:, :-1], rngs=rng, **kwargs), target[:, 1:]


def loss_fn(
    model: nnx.Module, batch: Batch, rng: jax.Array, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Mean cross-entropy per target token under teacher forcing (Bahdanau et al. eq. (1)),
    optionally against label-smoothed targets (Vaswani et al. sec. 5.4)."""
    logits, labels = _forward(model, batch, rng)
    loss, tokens = losses.mean_cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return loss, {"accuracy": losses.token_accuracy(logits, labels) / tokens}


def sums(model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
    """Summed held-out cross-entropy and its token count, teacher-forced."""
    return losses.nll_sums(*_forward(model, batch))


def translate(model: Any, batch: Batch, **beam: Any) -> jax.Array:
    """The best beam-search translation of each source, ``[B, max_length]`` (``beam``: the
    keywords of ``decode.best_beam``)."""
    return decode.best_beam(model, model.encode(batch["source"]), **beam)


class HeldOut:
    """The held-out sentences of a split, read once; BLEU; alignment pictures."""

    def __init__(self, config: Config, data: translation.TranslationData, generate: Any):
        self.config, self.data = config, data
        self.generate = generate  # the evaluation's beam search
        limit = config.eval.examples  # a split's held-out batches, read once:
        self.batches = functools.cache(lambda split: data.eval_batches(limit, split=split))

    def metrics(
        self, split: str, totals: dict[str, float], batches: Any, outputs: list[Any]
    ) -> dict[str, float]:
        sources, references = self.data.eval_pairs(self.config.eval.examples, split=split)
        hypotheses = self.data.decode_targets(np.concatenate(outputs))[: len(sources)]
        bleu = evaluate_lib.translation_bleu(sources, hypotheses, references)
        return {"loss": losses.held_out_loss(totals), **bleu}

    def translate_texts(self, model: nnx.Module, sources: list[str]) -> list[str]:
        """Beam-search translations of raw source sentences, as the evaluation makes them."""
        ids = self.data.encode_sources(sources, self.config.data.max_length)
        size = self.config.train.batch_size
        out = decode.in_batches(self.generate, model, {"source": ids}, size)
        return self.data.decode_targets(out)

    def attention(
        self, model: Any, sources: list[str], hypotheses: list[str]
    ) -> list[visualize_lib.Aligned]:
        """Each translation with its attention while teacher-forced (``visualize.aligned``)."""
        width = self.config.data.max_length
        source_ids = self.data.encode_sources(sources, width)
        target_ids = self.data.encode_targets(hypotheses, width + 1)
        batch = {"source": source_ids, "target": target_ids}
        weights = jax.device_get(runner.apply(_alignment, on_weights_kernel(model), batch))
        aligned = []
        for i, (source, hypothesis) in enumerate(zip(sources, hypotheses, strict=True)):
            source_pieces = self.data.source_pieces(source_ids[i])
            target_pieces = self.data.target_pieces(target_ids[i, 1:])
            row = jax.tree.map(operator.itemgetter(i), weights)
            aligned.append(
                visualize_lib.aligned(source, hypothesis, source_pieces, target_pieces, row)
            )
        return aligned

    def visualize(self, model: nnx.Module, out_dir: pathlib.Path) -> list[pathlib.Path]:
        """The alignment (Bahdanau et al. 2014, Fig. 3) of a few test sentences' beam-search
        translations; for the Transformer, every layer's and head's cross-attention."""
        sources, _ = self.data.eval_pairs(self.config.eval.plots, split="test")
        kind = "alignment" if isinstance(self.config.model, RNNSearchConfig) else "cross_attention"
        paths = [out_dir / f"{kind}_{i}.png" for i in range(len(sources))]
        return self.draw(model, sources, self.translate_texts(model, sources), paths)

    def draw(
        self, model: nnx.Module, sources: list[str], hypotheses: list[str], paths: list[Any]
    ) -> list[pathlib.Path]:
        """Each translation's attention into its path (``visualize.translation_attention``)."""
        for sentence, path in zip(self.attention(model, sources, hypotheses), paths, strict=True):
            visualize_lib.translation_attention(sentence, path)
        return paths


def _alignment(model: Any, batch: Batch) -> Any:
    """The attention while teacher-forcing ``batch["target"]``: ``[B, T, S]``, or the
    Transformer's per-layer weights."""
    return _forward(model, batch, return_weights=True)[0][1]
