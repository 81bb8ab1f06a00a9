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
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import config as config_lib
from experiments import evaluate as evaluate_lib
from experiments import visualize as visualize_lib
from experiments.config import TrainConfig
from experiments.data import translation
from experiments.runner import Batch, Setup
from zoo import decoding
from zoo.models.rnnsearch import RNNSearch, RNNSearchConfig
from zoo.models.transformer import BASE, BIG, Transformer, TransformerConfig, weights_graphdef

MODELS = ("rnnsearch", "rnnencdec", "transformer")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "bible_en_es"  # a TFDS name: the shipped default, or e.g. wmt14_translate/fr-en
    data_dir: str = "runs/data"  # where TFDS datasets and tokenizers are prepared and cached
    manual_dir: str | None = None  # local files for datasets that need them (TFDS manual_dir)
    max_length: int = 50  # tokens per side; longer pairs are dropped (RNNsearch-50)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    examples: int = 500  # held-out sentences translated for BLEU (None of them in training)
    beam_size: int = 5  # beam width for BLEU
    length_penalty: float = 0.6  # GNMT alpha (Wu et al. 2016, eq. 14); 0 = none
    batch_size: int = 100  # sentences decoded at once
    plots: int = 4  # held-out sentences drawn as alignment heatmaps


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str  # "translate"
    model_name: str  # one of MODELS
    data: DataConfig
    model: RNNSearchConfig  # source/target vocabulary sizes also size the tokenizers
    train: TrainConfig
    eval: EvalConfig


@dataclasses.dataclass(frozen=True)
class TransformerTranslateConfig:
    experiment: str  # "translate"
    model_name: str  # "transformer"
    data: DataConfig
    model: TransformerConfig  # vocab_size sizes the shared source-target tokenizer (sec. 3.4)
    train: TrainConfig
    eval: EvalConfig


def presets(model: str) -> dict[str, Any]:
    if model == "transformer":
        return _transformer_presets()
    attention = model == "rnnsearch"
    # Sized to train in about ten minutes on 2 CPU cores (the main job's budget is 15).
    tiny = Config(
        experiment="translate",
        model_name=model,
        data=DataConfig(max_length=40),
        model=RNNSearchConfig(
            source_vocab_size=4000,
            target_vocab_size=4000,
            embed_dim=128,
            hidden_dim=192,
            attention_dim=192,
            maxout_dim=96,
            attention=attention,
        ),
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
            tiny.model,
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
        eval=EvalConfig(examples=8, beam_size=2, batch_size=8, plots=1),
    )
    return {"tiny": tiny, "paper": paper, "smoke": smoke}


def _transformer_presets() -> dict[str, TransformerTranslateConfig]:
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
    tiny = TransformerTranslateConfig(
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
        model=dataclasses.replace(BASE, vocab_size=8000),  # Table 3 base, a smaller vocabulary
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
        eval=EvalConfig(examples=8, beam_size=2, batch_size=8, plots=1),
    )
    big = dataclasses.replace(
        base,
        model=dataclasses.replace(BIG, vocab_size=base.model.vocab_size),
        train=dataclasses.replace(paper_train, learning_rate=5e-4),
    )
    return {"tiny": tiny, "base": base, "big": big, "smoke": smoke}


def load_config(path: pathlib.Path) -> Config | TransformerTranslateConfig:
    model_name = json.loads(path.read_text())["model_name"]
    kind = TransformerTranslateConfig if model_name == "transformer" else Config
    return config_lib.load(kind, path)


def make_model(config: Config | TransformerTranslateConfig) -> RNNSearch | Transformer:
    rngs = nnx.Rngs(config.train.seed)
    if isinstance(config.model, TransformerConfig):
        return Transformer(dataclasses.replace(config.model, pad_id=translation.PAD_ID), rngs=rngs)
    return RNNSearch(dataclasses.replace(config.model, pad_id=translation.PAD_ID), rngs=rngs)


def setup(config: Config | TransformerTranslateConfig, workdir: pathlib.Path) -> Setup:
    del workdir
    transformer = isinstance(config, TransformerTranslateConfig)
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
    model = make_model(config)
    graphdef = nnx.graphdef(model)
    # Pictures need the weights, which only the reference kernel returns.
    weights_graph = weights_graphdef(model) if isinstance(model, Transformer) else graphdef
    evaluation = _Evaluation(config.eval, data, graphdef, weights_graph, config.data.max_length)
    return Setup(
        model=model,
        batches=data.train_iterator(),
        loss_fn=functools.partial(loss_fn, label_smoothing=config.train.label_smoothing),
        evaluate=evaluation.evaluate,
        visualize=evaluation.visualize,
        count_tokens=lambda batch: int(np.sum(batch["target"] != translation.PAD_ID)),
        best_metric="bleu",
        best_mode="max",
    )


def _forward(model: nnx.Module, source: jax.Array, target_in: jax.Array, rng: Any) -> jax.Array:
    """Teacher-forced logits; dropout (Transformer only) keyed by ``rng`` when given."""
    if isinstance(model, Transformer):
        return model(source, target_in, rngs=rng)
    return model(source, target_in)  # RNNsearch uses no dropout


def loss_fn(
    model: nnx.Module, batch: Batch, rng: jax.Array, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Mean cross-entropy per target token under teacher forcing (Bahdanau et al. eq. (1)),
    optionally against label-smoothed targets (Vaswani et al. sec. 5.4)."""
    target = batch["target"]  # [B, T+1]: BOS y_1 .. y_n EOS pad ..
    logits = _forward(model, batch["source"], target[:, :-1], rng).astype(jnp.float32)
    labels = target[:, 1:]
    real = (labels != translation.PAD_ID).astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
    tokens = jnp.maximum(real.sum(), 1.0)
    accuracy = ((logits.argmax(-1) == labels) * real).sum() / tokens
    return (losses * real).sum() / tokens, {"accuracy": accuracy}


class _Evaluation:
    """Held-out loss, beam-search BLEU and alignment pictures, jitted once per run."""

    def __init__(
        self,
        config: EvalConfig,
        data: Any,
        graphdef: nnx.GraphDef,
        weights_graph: nnx.GraphDef,
        max_length: int,
    ):
        self.config = config
        self.data = data
        self.graphdef = graphdef
        self.weights_graph = weights_graph  # the same model on a kernel that returns weights
        self.max_length = max_length
        self.eval_loss = jax.jit(self._eval_loss)
        self.translate = jax.jit(self._translate)

    def _model(self, state: nnx.State) -> Any:
        return nnx.merge(self.graphdef, state)

    def _eval_loss(self, state: nnx.State, batch: Batch) -> tuple[jax.Array, jax.Array]:
        model = self._model(state)
        target = batch["target"]
        logits = _forward(model, batch["source"], target[:, :-1], None)
        labels = target[:, 1:]
        real = labels != translation.PAD_ID
        # The log-softmax in float32 whatever the model's compute dtype.
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return (losses * real).sum(), real.sum()

    def _translate(self, state: nnx.State, source: jax.Array) -> jax.Array:
        model = self._model(state)
        if isinstance(model, Transformer):
            init = model.init_decode_state(source, self.max_length + 1)
            step = model.step
        else:
            init = model.encode(source)

            def step(tokens: jax.Array, carry: dict) -> tuple[jax.Array, dict]:
                logits, carry, _ = model.step(tokens, carry)
                return logits, carry

        result = decoding.beam_search(
            step,
            init,
            beam_size=self.config.beam_size,
            bos_id=translation.BOS_ID,
            eos_id=translation.EOS_ID,
            pad_id=translation.PAD_ID,
            max_length=self.max_length,
            length_penalty=self.config.length_penalty,
        )
        return result.tokens[:, 0]

    def evaluate(self, model: nnx.Module, split: str) -> dict[str, float]:
        state = nnx.state(model)
        total, count = 0.0, 0.0
        for batch in self.data.eval_batches(split=split):
            loss, tokens = self.eval_loss(state, batch)
            total, count = total + float(loss), count + float(tokens)
        sources, references = self.data.eval_pairs(self.config.examples, split=split)
        hypotheses = self.translate_texts(state, sources)
        metrics = {
            "loss": total / max(count, 1.0),
            "bleu": evaluate_lib.corpus_bleu(hypotheses, references),
        }
        for bucket, bleu in evaluate_lib.bleu_by_length(sources, hypotheses, references).items():
            metrics[f"bleu_len_{bucket}"] = bleu
        return metrics

    def translate_texts(self, state: nnx.State, sources: list[str]) -> list[str]:
        hypotheses: list[str] = []
        size = self.config.batch_size
        for start in range(0, len(sources), size):
            chunk = sources[start : start + size]
            # Pad the last chunk to the full batch so the decoder compiles once.
            padded = chunk + [chunk[-1]] * (size - len(chunk))
            tokens = self.translate(state, self.data.encode_sources(padded, self.max_length))
            hypotheses += self.data.decode_targets(np.asarray(tokens))[: len(chunk)]
        return hypotheses

    def visualize(self, model: nnx.Module, out_dir: pathlib.Path) -> list[pathlib.Path]:
        state = nnx.state(model)
        sources, _ = self.data.eval_pairs(self.config.plots, split="test")
        hypotheses = self.translate_texts(state, sources)
        paths = []
        for i, (source, hypothesis) in enumerate(zip(sources, hypotheses, strict=True)):
            source_ids = self.data.encode_sources([source], self.max_length)
            target_ids = self.data.encode_targets([hypothesis], self.max_length + 1)
            _, weights = _alignment(self.weights_graph, state, source_ids, target_ids)
            source_pieces = self.data.source_pieces(source_ids[0])
            target_pieces = self.data.target_pieces(target_ids[0, 1:])
            T, S = len(target_pieces), len(source_pieces)
            title = f"{source}\n-> {hypothesis}"
            if isinstance(weights, dict):  # Transformer: every layer's and head's cross-attention
                cross = np.stack([np.asarray(w[0, :, :T, :S]) for w in weights["cross"]])
                path = visualize_lib.head_grid(
                    cross, target_pieces, source_pieces, out_dir / f"cross_attention_{i}.png", title
                )
            else:
                path = visualize_lib.alignment_heatmap(
                    np.asarray(weights[0, :T, :S]),
                    source_pieces,
                    target_pieces,
                    out_dir / f"alignment_{i}.png",
                    title=title,
                )
            paths.append(path)
        return paths


@functools.partial(jax.jit, static_argnums=0)
def _alignment(
    graphdef: nnx.GraphDef, state: nnx.State, source: jax.Array, target: jax.Array
) -> tuple[jax.Array, Any]:
    """Teacher-forced pass over a translation: (logits, alignment weights [B, T, S], or the
    Transformer's per-layer weights)."""
    return nnx.merge(graphdef, state)(source, target[:, :-1], return_weights=True)
