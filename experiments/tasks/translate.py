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
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx

from experiments import config as config_lib
from experiments import evaluate as evaluate_lib
from experiments import runner
from experiments import visualize as visualize_lib
from experiments.config import TrainConfig
from experiments.data import translation
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from experiments.losses import masked_cross_entropy, token_accuracy
from experiments.runner import Batch, Evaluation, Setup
from zoo import decoding
from zoo.models.protocol import weights_graphdef
from zoo.models.rnnsearch import RNNSearch, RNNSearchConfig
from zoo.models.transformer import BASE, BIG, Transformer, TransformerConfig

MODELS = ("rnnsearch", "rnnencdec", "transformer")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "bible_en_es"  # a TFDS name: the shipped default, or e.g. wmt14_translate/fr-en
    data_dir: str = "runs/data"  # where TFDS datasets and tokenizers are prepared and cached
    manual_dir: str | None = None  # local files for datasets that need them (TFDS manual_dir)
    max_length: int = 50  # tokens per side; longer pairs are dropped (RNNsearch-50)

    def __post_init__(self) -> None:
        # A sentence needs a token and its end token.
        config_lib.check_range("data", "max_length", self.max_length, at_least=2, integer=True)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # Held-out sentences scored and translated for BLEU (none of them seen in training), in
    # batches of train.batch_size.
    examples: int = 500
    beam_size: int = 5  # beam width for BLEU
    length_penalty: float = 0.6  # GNMT alpha (Wu et al. 2016, eq. 14); 0 = none
    plots: int = 4  # held-out sentences drawn as alignment heatmaps

    def __post_init__(self) -> None:
        for name in ("examples", "beam_size", "plots"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.length_penalty < 0:
            raise ValueError(f"eval.length_penalty must be >= 0, got {self.length_penalty}")


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


def presets(model: str) -> dict[str, Any]:
    if model == "transformer":
        return _transformer_presets()
    attention = model == "rnnsearch"
    # Sized to train in about ten minutes on 2 CPU cores (the main job's budget is 15).
    tiny_model = RNNSearchConfig(
        source_vocab_size=4000,
        target_vocab_size=4000,
        embed_dim=128,
        hidden_dim=192,
        attention_dim=192,
        maxout_dim=96,
        attention=attention,
    )
    tiny = Config(
        experiment="translate",
        model_name=model,
        data=DataConfig(max_length=40),
        model=tiny_model,
        train=TrainConfig(
            steps=1500,
            batch_size=64,
            learning_rate=2e-3,
            warmup_steps=100,
            eval_every=1500,
            checkpoint_every=250,
            log_every=25,
        ),
        eval=EvalConfig(examples=300, beam_size=4),
    )
    paper = Config(
        experiment="translate",
        model_name=model,
        data=DataConfig(max_length=50),
        model=RNNSearchConfig(attention=attention),  # the paper's sizes, appendix A.2
        # Appendix B.2: minibatches of 80 sentences, Adadelta; about 5 days on a GPU.
        train=TrainConfig(
            steps=300_000,
            batch_size=80,
            learning_rate=1.0,
            schedule="constant",
            warmup_steps=0,
            optimizer="adadelta",
            eval_every=5000,
            checkpoint_every=1000,
        ),
        eval=EvalConfig(beam_size=12, examples=2000),
    )
    smoke = dataclasses.replace(
        tiny,
        data=DataConfig(max_length=24),
        model=dataclasses.replace(
            tiny_model,
            source_vocab_size=300,
            target_vocab_size=300,
            embed_dim=16,
            hidden_dim=24,
            attention_dim=16,
            maxout_dim=8,
        ),
        train=dataclasses.replace(
            tiny.train, steps=4, batch_size=8, eval_every=4, checkpoint_every=2, log_every=1
        ),
        eval=EvalConfig(examples=8, beam_size=2, plots=1),
    )
    return {"tiny": tiny, "paper": paper, "smoke": smoke}


_VOCAB = 8000  # the shared vocabulary of the base and big presets


def _transformer_presets() -> dict[str, Config]:
    # The paper's recipe (sec. 5.3-5.4): Adam, warm-up then 1/sqrt(step), label smoothing 0.1,
    # residual dropout 0.1, post-LN, shared vocabulary and tied embeddings.
    paper_train = TrainConfig(
        steps=100_000,
        batch_size=128,
        learning_rate=7e-4,  # the peak of eq. (3) for d_model 512 and 4000 warm-up steps
        schedule="rsqrt",
        warmup_steps=4000,
        optimizer="adam",
        label_smoothing=0.1,
        eval_every=5000,
        checkpoint_every=1000,
    )
    tiny = Config(
        experiment="translate",
        model_name="transformer",
        data=DataConfig(max_length=40),
        model=TransformerConfig(
            vocab_size=4000, model_dim=128, ff_dim=512, num_heads=4, num_layers=3
        ),
        # Sized to the same ten minutes of 2 CPU cores as RNNsearch's tiny preset.
        train=dataclasses.replace(
            paper_train,
            steps=1500,
            batch_size=64,
            learning_rate=1.5e-3,
            warmup_steps=300,
            eval_every=1500,
            checkpoint_every=250,
            log_every=25,
        ),
        eval=EvalConfig(examples=300, beam_size=4),
    )
    base = dataclasses.replace(
        tiny,
        data=DataConfig(max_length=50),
        model=dataclasses.replace(BASE, vocab_size=_VOCAB),  # Table 3 base, a smaller vocabulary
        train=paper_train,
        eval=EvalConfig(examples=2000, beam_size=4),
    )
    smoke = dataclasses.replace(
        tiny,
        data=DataConfig(max_length=24),
        model=TransformerConfig(vocab_size=300, model_dim=16, ff_dim=32, num_heads=2, num_layers=1),
        train=dataclasses.replace(
            tiny.train, steps=4, batch_size=8, eval_every=4, checkpoint_every=2, log_every=1
        ),
        eval=EvalConfig(examples=8, beam_size=2, plots=1),
    )
    big = dataclasses.replace(
        base,
        model=dataclasses.replace(BIG, vocab_size=_VOCAB),
        train=dataclasses.replace(paper_train, learning_rate=5e-4),
    )
    return {"tiny": tiny, "base": base, "big": big, "smoke": smoke}


def load_config(path: pathlib.Path) -> Config:
    return config_lib.load(Config, path)


def setup(config: Config, workdir: pathlib.Path) -> Setup:
    del workdir
    transformer = isinstance(config.model, TransformerConfig)
    if isinstance(config.model, TransformerConfig):
        source_vocab = target_vocab = config.model.vocab_size
    else:
        source_vocab, target_vocab = config.model.source_vocab_size, config.model.target_vocab_size
    data = translation.make_translation_data(
        name=config.data.name,
        data_dir=pathlib.Path(config.data.data_dir),
        manual_dir=None if config.data.manual_dir is None else pathlib.Path(config.data.manual_dir),
        source_vocab_size=source_vocab,
        target_vocab_size=target_vocab,
        # The Transformer ties source and target embeddings: one shared vocabulary.
        shared_vocab=transformer,
        max_length=config.data.max_length,
        batch_size=config.train.batch_size,
        seed=config.train.seed,
    )
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, pad_id=PAD_ID))
    rngs = nnx.Rngs(config.train.seed)
    model = (
        Transformer(config.model, rngs=rngs)
        if isinstance(config.model, TransformerConfig)
        else RNNSearch(config.model, rngs=rngs)
    )
    generate = functools.partial(
        translate,
        beam_size=config.eval.beam_size,
        length_penalty=config.eval.length_penalty,
        max_length=config.data.max_length,
    )
    held_out = HeldOut(config, data, generate)
    return Setup(
        config=config,
        model=model,
        batches=data.train_iterator(),
        loss_fn=functools.partial(loss_fn, label_smoothing=config.train.label_smoothing),
        evaluation=Evaluation(
            batches=held_out.batches,
            sums=sums,
            generate=generate,
            metrics=held_out.metrics,
        ),
        visualize=held_out.visualize,
        count_tokens=lambda batch: int(np.sum(batch["target"] != PAD_ID)),
        best_metric="bleu",
        best_mode="max",
        held_out=held_out,
    )


def _forward(model: Any, source: jax.Array, target_in: jax.Array, rng: Any) -> jax.Array:
    """Teacher-forced logits; dropout (the Transformer's) keyed by ``rng`` when given."""
    return model(source, target_in, rngs=rng)


def loss_fn(
    model: nnx.Module, batch: Batch, rng: jax.Array, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Mean cross-entropy per target token under teacher forcing (Bahdanau et al. eq. (1)),
    optionally against label-smoothed targets (Vaswani et al. sec. 5.4)."""
    target = batch["target"]  # [B, T+1]: BOS y_1 .. y_n EOS pad ..
    logits = _forward(model, batch["source"], target[:, :-1], rng)
    total, tokens = masked_cross_entropy(logits, target[:, 1:], label_smoothing=label_smoothing)
    tokens = jax.numpy.maximum(tokens, 1)
    return total / tokens, {"accuracy": token_accuracy(logits, target[:, 1:]) / tokens}


def sums(model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
    """Summed held-out cross-entropy and its token count, teacher-forced."""
    target = batch["target"]
    total, tokens = masked_cross_entropy(
        _forward(model, batch["source"], target[:, :-1], None), target[:, 1:]
    )
    return {"nll": total, "tokens": tokens}


def translate(
    model: Any, batch: Batch, *, beam_size: int, length_penalty: float, max_length: int
) -> jax.Array:
    """The best beam-search translation of each source, ``[B, max_length]``."""
    # The Transformer's cache has room for BOS and max_length tokens.
    state = model.init_decode_state(model.encode(batch["source"]), max_length + 1)
    result = decoding.beam_search(
        model.step,
        state,
        beam_size=beam_size,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        max_length=max_length,
        length_penalty=length_penalty,
    )
    return result.tokens[:, 0]


class HeldOut:
    """The held-out sentences of a split, read once; BLEU; alignment pictures."""

    def __init__(self, config: Config, data: translation.TranslationData, generate: Any):
        self.config = config
        self.data = data
        self.generate = generate  # the evaluation's beam search
        self.cached: dict[str, list[Batch]] = {}

    def batches(self, split: str) -> list[Batch]:
        if split not in self.cached:
            self.cached[split] = self.data.eval_batches(self.config.eval.examples, split=split)
        return self.cached[split]

    def metrics(
        self, split: str, totals: dict[str, float], batches: Any, outputs: list[Any]
    ) -> dict[str, float]:
        sources, references = self.data.eval_pairs(self.config.eval.examples, split=split)
        hypotheses = self.data.decode_targets(np.concatenate(outputs))[: len(sources)]
        metrics = {
            "loss": totals["nll"] / max(totals["tokens"], 1.0),
            "bleu": evaluate_lib.corpus_bleu(hypotheses, references),
        }
        for bucket, bleu in evaluate_lib.bleu_by_length(sources, hypotheses, references).items():
            metrics[f"bleu_len_{bucket}"] = bleu
        return metrics

    def translate_texts(
        self, model: nnx.Module, sources: list[str], *, beam_size: int | None = None
    ) -> list[str]:
        """Beam-search translations of raw source sentences, as the evaluation makes them
        (``beam_size``: another width than the run's)."""
        generate = self.generate
        if beam_size is not None:
            generate = functools.partial(generate, beam_size=beam_size)
        size, hypotheses = self.config.train.batch_size, []
        for start in range(0, len(sources), size):
            chunk = sources[start : start + size]
            # Pad the last chunk to the full batch so the decoder compiles once.
            padded = chunk + [chunk[-1]] * (size - len(chunk))
            ids = self.data.encode_sources(padded, self.config.data.max_length)
            tokens = runner.apply(generate, model, {"source": ids})
            hypotheses += self.data.decode_targets(np.asarray(tokens))[: len(chunk)]
        return hypotheses

    def attention(
        self, model: Any, sources: list[str], hypotheses: list[str]
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """``(source ids [B, S], target ids [B, T+1], weights)``: the attention while
        teacher-forcing each translation, ``[B, T, S]`` or, for the Transformer, a dict of
        per-layer ``[B, N, *, *]`` (Transformer.__call__'s)."""
        width = self.config.data.max_length
        source_ids = self.data.encode_sources(sources, width)
        target_ids = self.data.encode_targets(hypotheses, width + 1)
        looking = nnx.merge(weights_graphdef(model), nnx.state(model))
        batch = {"source": source_ids, "target": target_ids}
        return source_ids, target_ids, jax.device_get(runner.apply(_alignment, looking, batch))

    def visualize(self, model: nnx.Module, out_dir: pathlib.Path) -> list[pathlib.Path]:
        """The alignment (Bahdanau et al. 2014, Fig. 3) of a few test sentences' beam-search
        translations; for the Transformer, every layer's and head's cross-attention."""
        sources, _ = self.data.eval_pairs(self.config.eval.plots, split="test")
        kind = (
            "cross_attention" if isinstance(self.config.model, TransformerConfig) else "alignment"
        )
        paths = [out_dir / f"{kind}_{i}.png" for i in range(len(sources))]
        return self.draw(model, sources, self.translate_texts(model, sources), paths)

    def draw(
        self,
        model: nnx.Module,
        sources: list[str],
        hypotheses: list[str],
        paths: list[pathlib.Path],
    ) -> list[pathlib.Path]:
        """Each translation's attention into its path: the alignment heatmap, or for the
        Transformer every layer's and head's cross-attention."""
        source_ids, target_ids, weights = self.attention(model, sources, hypotheses)
        for i, (source, hypothesis, path) in enumerate(
            zip(sources, hypotheses, paths, strict=True)
        ):
            source_pieces = self.data.source_pieces(source_ids[i])
            target_pieces = self.data.target_pieces(target_ids[i, 1:])
            T, S = len(target_pieces), len(source_pieces)
            title = f"{source}\n-> {hypothesis}"
            if isinstance(weights, dict):  # Transformer: every layer's and head's cross-attention
                cross = np.stack([w[i, :, :T, :S] for w in weights["cross"]])
                visualize_lib.head_grid(cross, target_pieces, source_pieces, path, title)
            else:
                visualize_lib.alignment_heatmap(
                    weights[i, :T, :S], source_pieces, target_pieces, path, title=title
                )
        return paths


def _alignment(model: Any, batch: Batch) -> Any:
    """The attention while teacher-forcing ``batch["target"]``: ``[B, T, S]``, or the
    Transformer's per-layer weights."""
    return model(batch["source"], batch["target"][:, :-1], return_weights=True)[1]
