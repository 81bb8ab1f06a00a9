"""Language modelling: a decoder-only Transformer on the shared runner.

Default data: ten Shakespeare plays (``shakespeare_plays``, shipped, offline), character level,
with two whole plays held out. Evaluation: mean negative log-likelihood in nats per token
(per character at character level) over every held-out window. Pictures: per-layer, per-head
causal self-attention maps of a held-out line.
"""

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx

from experiments import config as config_lib
from experiments import losses, parallel, runner
from experiments import visualize as visualize_lib
from experiments.config import TrainConfig, mesh_axes
from experiments.data import language_model
from experiments.data.tokenizer import PAD_ID
from experiments.runner import Batch, Evaluation, Setup
from zoo.kernels import ring_attention
from zoo.models.protocol import on_kernel, on_weights_kernel
from zoo.models.transformer import TransformerConfig, TransformerLM

MODELS = ("transformer",)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "shakespeare_plays"  # or shakespeare_plays/by_position, tiny_shakespeare, lm1b
    data_dir: str = "runs/data"  # where TFDS datasets, vocabularies and streams are cached
    manual_dir: str | None = None  # a local copy of the raw files, for the real datasets
    tokenizer: str = "char"  # "char" | "bpe" (sentencepiece)
    bpe_vocab_size: int = 2048  # pieces of the BPE vocabulary (tokenizer="bpe" only)
    context_length: int = 64  # tokens each training window predicts

    def __post_init__(self) -> None:
        config_lib.check_choice("data", "tokenizer", self.tokenizer, ("char", "bpe"))
        config_lib.check_counts("data", self, "bpe_vocab_size", "context_length")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    windows: int | None = 400  # held-out windows scored (evenly spaced); None = all
    plot_length: int = 40  # tokens of the held-out line drawn as attention maps

    def __post_init__(self) -> None:
        config_lib.check_counts("eval", self, "windows", "plot_length")


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str  # "lm"
    model_name: str  # "transformer"
    data: DataConfig
    # vocab_size is the tokenizer's: setup replaces it with the data's vocabulary size.
    model: TransformerConfig
    train: TrainConfig
    eval: EvalConfig

    def __post_init__(self) -> None:
        if self.model.max_length < self.data.context_length:
            raise config_lib.ConfigError(
                f"model.max_length ({self.model.max_length}) must cover data.context_length "
                f"({self.data.context_length})"
            )
        sequence = dict(mesh_axes(self.train.mesh)).get("sequence", 1)
        if (self.model.kernel == "ring") != (sequence > 1):
            raise config_lib.ConfigError(
                "model.kernel=ring and a train.mesh axis 'sequence' of two or more devices go "
                "together, e.g. --set train.mesh=data:2,sequence:2 --set model.kernel=ring; "
                f"got model.kernel={self.model.kernel!r}, train.mesh={self.train.mesh!r}"
            )


def presets(model: str) -> dict[str, Config]:
    del model  # one model
    # nanoGPT's CPU "baby GPT" (config/train_shakespeare_char.py, CPU settings): 4 layers,
    # 4 heads, 128 wide, context 64, batch 12, 2000 iterations, dropout 0, lr 1e-3.
    tiny = Config(
        experiment="lm",
        model_name="transformer",
        data=DataConfig(context_length=64),
        model=TransformerConfig(
            vocab_size=83,
            model_dim=128,
            ff_dim=512,
            num_heads=4,
            num_layers=4,
            dropout_rate=0.0,
            pre_norm=True,
            positions="learned",
            max_length=256,
            scale_embeddings=False,
            attention_bias=False,
            activation="gelu",
            init_std=0.02,
            layer_norm_epsilon=1e-5,
        ),
        train=TrainConfig(
            steps=2000,
            batch_size=12,
            learning_rate=1e-3,
            schedule="cosine",
            warmup_steps=100,
            optimizer="adamw",
            weight_decay=0.1,
            eval_every=500,
            checkpoint_every=500,
            log_every=50,
        ),
        eval=EvalConfig(),
    )
    sizes = dict(model_dim=768, ff_dim=3072, num_heads=12, num_layers=12)
    gpt2_small = config_lib.replace(
        tiny,
        data=DataConfig(tokenizer="bpe", bpe_vocab_size=8192, context_length=1024),
        model=dict(sizes, dropout_rate=0.1, max_length=1024, attention_bias=True),
        train=dict(steps=100_000, batch_size=8, learning_rate=6e-4, warmup_steps=2000),
    )
    smoke = config_lib.replace(
        tiny,
        data={"context_length": 16},
        model=dict(model_dim=16, ff_dim=32, num_heads=2, num_layers=2, max_length=32),
        train={**config_lib.SMOKE_TRAIN, "batch_size": 4},
        eval=EvalConfig(windows=8, plot_length=12),
    )
    return {"tiny": tiny, "gpt2_small": gpt2_small, "smoke": smoke}


def make_data(config: Config, *, batch_size: int | None = None) -> Any:
    return language_model.make_lm_data(
        config.data.name,
        data_dir=pathlib.Path(config.data.data_dir),
        manual_dir=config.data.manual_dir,
        context_length=config.data.context_length,
        batch_size=batch_size or config.train.batch_size,
        seed=config.train.seed,
        tokenizer=config.data.tokenizer,
        vocab_size=config.data.bpe_vocab_size if config.data.tokenizer == "bpe" else None,
    )


def make_model(config: Config) -> TransformerLM:
    """The model of a config whose vocabulary size is the data's (:func:`setup` fills it)."""
    kernel = None
    if config.model.kernel == "ring":  # sequence-parallel over the run's mesh
        mesh = parallel.make_mesh(config.train.devices, mesh_axes(config.train.mesh))
        # Zigzag over the ring so that causal attention keeps every device equally busy
        # (Llama 3's context parallelism); the kernel permutes the sequence itself.
        kernel = functools.partial(
            ring_attention, mesh=mesh, axis_name="sequence", batch_axis="data", layout="zigzag"
        )
    return TransformerLM(config.model, kernel=kernel, rngs=nnx.Rngs(config.train.seed))


def setup(config: Config, workdir: pathlib.Path) -> Setup:
    del workdir
    data = make_data(config)
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, vocab_size=data.vocab_size)
    )
    model = make_model(config)
    held_out = HeldOut(config, data)
    return Setup(
        config=config,
        model=model,
        batches=data.train_iterator(),
        loss_fn=loss_fn,
        evaluation=Evaluation(batches=held_out.batches, sums=sums, metrics=held_out.metrics),
        visualize=held_out.visualize,
        count_tokens=lambda batch: int(np.sum(batch["tokens"][:, 1:] != PAD_ID)),
        best_metric="loss",
        best_mode="min",
        held_out=held_out,
    )


def loss_fn(model: nnx.Module, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy in nats; dropout keyed by the step's rng."""
    tokens = batch["tokens"]  # [B, T+1]
    loss, _ = losses.mean_cross_entropy(model(tokens[:, :-1], rngs=rng), tokens[:, 1:])
    return loss, {}


def sums(model: Any, batch: Batch) -> dict[str, jax.Array]:
    """Summed negative log-likelihood (nats) of a batch of held-out windows, and its count."""
    if model.config.kernel == "ring":  # evaluation holds the model on one device, no ring
        model = on_kernel(model, "auto")
    tokens = batch["tokens"]
    return losses.nll_sums(model(tokens[:, :-1]), tokens[:, 1:])


class HeldOut:
    def __init__(self, config: Config, data: Any):
        self.config = config
        self.data = data

    def _split(self, split: str) -> str:
        return split if split in self.data.eval_splits else self.data.eval_splits[0]

    def batches(self, split: str) -> list[Batch]:
        return self.data.eval_batches(split=self._split(split), limit=self.config.eval.windows)

    def metrics(
        self, split: str, totals: dict[str, float], batches: Any, outputs: list[Any]
    ) -> dict[str, float]:
        loss = losses.held_out_loss(totals)
        return {"loss": loss, "perplexity": float(np.exp(loss))}

    def visualize(self, model: nnx.Module, out_dir: pathlib.Path) -> list[pathlib.Path]:
        length = min(self.config.eval.plot_length, self.config.data.context_length)
        stream = self.data.stream(self.data.eval_splits[0])
        tokens = np.asarray(stream[:length], np.int32)
        pieces = self.data.pieces(tokens)
        path = visualize_lib.head_grid(
            self_attention(model, tokens),
            pieces,
            pieces,
            out_dir / "self_attention.png",
            title=repr(self.data.decode(tokens)),
        )
        return [path]


def self_attention(model: Any, tokens: np.ndarray) -> np.ndarray:
    """Every layer's and head's causal self-attention over int ``tokens [T]``: ``[L, N, T, T]``,
    on the kernel that forms the weights."""
    looking = on_weights_kernel(model)
    _, weights = runner.apply(_with_weights, looking, {"tokens": tokens[None]})
    return np.stack([np.asarray(w[0]) for w in weights["decoder_self"]])


def _with_weights(model: Any, batch: Batch) -> Any:
    return model(batch["tokens"], return_weights=True)
