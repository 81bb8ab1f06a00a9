"""The zoo's training steps as the runner runs them, on synthetic batches of the presets' shapes.

Each model is its experiment's preset (``experiments/tasks``) with the task's own ``loss_fn``;
the step is ``experiments.runner.train_step`` with ``make_optimizer``'s optimizer, jitted with
parameters and optimizer state donated, keyed ``fold_in(seed key, step)``, as the runner's.
Only the data is synthetic: random tokens (no padding) and images of the real data's shapes,
every row at the longest length (the bucket a real batch fills worst). :func:`compile_report`
times a step's first call by JAX's own compilation events and checks that a second call with
the same shapes compiles nothing.
"""

import collections
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.config import TrainConfig
from experiments.data.tokenizer import PAD_ID
from experiments.runner import make_optimizer, train_step
from experiments.tasks import caption, lm, translate
from zoo.models.rnnsearch import RNNSearch
from zoo.models.show_attend_tell import ShowAttendTell
from zoo.models.transformer import TransformerConfig, TransformerLM, count_parameters

# The lm experiment's tiny preset, and nanoGPT's shakespeare_char (config/train_shakespeare_char.py:
# 6 layers, 6 heads, 384 wide, context 256) with the tiny preset's pre-LN, GELU, learned positions,
# tied embeddings, N(0, 0.02) init and AdamW, and no dropout (nanoGPT's 0.2). "smoke": tests.
LM_PRESETS = ("tiny", "shakespeare_char", "smoke")
VOCAB = 65  # characters, in both LM configurations (nanoGPT's shakespeare_char has 65)
NO_ATTENTION = "none"  # the LM "kernel" that skips attention (values_only)
# JAX's compilation events (jax._src.dispatch): one of each per compiled jit call.
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"


def lm_config(preset: str, kernel: str = "reference") -> tuple[TransformerConfig, TrainConfig, int]:
    """(model config, train config, context length T) of an LM configuration."""
    if preset not in LM_PRESETS:
        raise ValueError(f"LM preset must be one of {LM_PRESETS}, got {preset!r}")
    config = lm.presets("transformer")["smoke" if preset == "smoke" else "tiny"]
    model = dataclasses.replace(config.model, vocab_size=VOCAB, kernel=kernel)
    context = config.data.context_length
    if preset == "shakespeare_char":
        context = 256
        model = dataclasses.replace(
            model, model_dim=384, ff_dim=1536, num_heads=6, num_layers=6, max_length=context
        )
    return model, config.train, context


def lm_flops_per_token(model: TransformerConfig, context: int) -> float:
    """Training FLOPs per token: ``6 P + 12 L D T`` (Chowdhery et al. 2022, PaLM, appendix B;
    nanoGPT's ``estimate_mfu``). ``P`` counts the parameters that multiply: all but the learned
    position table (the tied embedding counts once, for the output projection); ``12 L D T`` is
    attention's two matmuls forward and backward, causal masking not discounted."""
    abstract = nnx.eval_shape(lambda: TransformerLM(model, rngs=nnx.Rngs(0)))
    positions = model.max_length * model.model_dim if model.positions == "learned" else 0
    P = count_parameters(abstract) - positions
    return 6.0 * P + 12.0 * model.num_layers * model.model_dim * context


def values_only(query: jax.Array, key: jax.Array, value: jax.Array, *_, **__) -> jax.Array:
    """A stand-in attention kernel that attends nowhere: each query position gets its own
    value vector ``[B, T, N, H]`` (repeated over a group's query heads). Same shapes and the
    same projections around it, none of the T x S work: a step with it costs the model
    without attention, so a step's attention share is measured, not estimated."""
    return jnp.repeat(value, query.shape[2] // value.shape[2], axis=2)


def _tokens(rng: np.random.Generator, shape: tuple[int, ...], vocab: int) -> np.ndarray:
    # Ids 0-3 are PAD, BOS, EOS, UNK in every tokenizer of the zoo: real tokens only.
    return rng.integers(4, vocab, shape).astype(np.int32)


def _lm(preset: str, kernel: str, B: int) -> dict[str, Any]:
    skip = kernel == NO_ATTENTION
    config, train, T = lm_config(preset, "reference" if skip else kernel)
    model = TransformerLM(config, kernel=values_only if skip else None, rngs=nnx.Rngs(0))
    return {"model": model, "loss_fn": lm.loss_fn, "train": train, "tokens": B * T,
            "batch": {"tokens": _tokens(np.random.default_rng(0), (B, T + 1), VOCAB)},
            "flops": B * T * lm_flops_per_token(config, T)}  # fmt: skip


def _rnnsearch(preset: str, B: int) -> dict[str, Any]:
    config = translate.presets("rnnsearch")[preset]
    model = dataclasses.replace(config.model, pad_id=PAD_ID)
    L, rng = config.data.max_length, np.random.default_rng(0)
    source, target = model.source_vocab_size, model.target_vocab_size
    return {"model": RNNSearch(model, rngs=nnx.Rngs(config.train.seed)), "train": config.train,
            "loss_fn": functools.partial(translate.loss_fn,
                                         label_smoothing=config.train.label_smoothing),
            "batch": {"source": _tokens(rng, (B, L), source),
                      "target": _tokens(rng, (B, L + 1), target)},
            "tokens": B * L, "flops": None}  # fmt: skip


def _sat(preset: str, B: int) -> dict[str, Any]:
    config = caption.presets("sat")[preset]
    # The digit scenes: grey, 64 x 64 (canvas64, smoke) or 96 x 96 (canvas96).
    size, channels = (96 if config.data.name.endswith("canvas96") else 64), 1
    model = dataclasses.replace(config.model, image_channels=channels)
    T, rng = config.data.max_length, np.random.default_rng(0)
    return {"model": ShowAttendTell(model, rngs=nnx.Rngs(config.train.seed)), "train": config.train,
            "loss_fn": functools.partial(caption.loss_fn,
                                         penalty_strength=config.loss.penalty_strength),
            "batch": {"image": rng.random((B, size, size, channels), np.float32),
                      "caption": _tokens(rng, (B, T + 1), model.vocab_size)},
            "tokens": B * T, "flops": None}  # fmt: skip


class ZooStep:
    """One runner training step per call, state carried (and donated) from call to call."""

    def __init__(
        self, model: nnx.Module, loss_fn: Callable, train: TrainConfig, batch: dict[str, Any]
    ):
        # nnx.split's type is variadic (a State per filter); two filters give exactly three.
        parts: tuple[Any, ...] = nnx.split(model, nnx.Param, ...)
        graphdef, params, rest = parts
        self.params: nnx.State = params
        optimizer = make_optimizer(train)
        self.opt_state = optimizer.init(self.params)
        # As experiments.runner.train builds it (one device: no shardings to give).
        step = functools.partial(train_step, graphdef=graphdef, rest=rest, loss_fn=loss_fn,
                                 optimizer=optimizer)  # fmt: skip
        self.fn = jax.jit(step, donate_argnums=(0, 1))
        self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
        self.key = jax.random.key(train.seed)
        self.step = 0
        jax.block_until_ready(jax.random.fold_in(self.key, 0))  # compile it outside the step

    def __call__(self) -> float:
        """Run one step; returns its loss (which waits for it)."""
        rng = jax.random.fold_in(self.key, self.step)
        self.params, self.opt_state, metrics = self.fn(self.params, self.opt_state, self.batch, rng)
        self.step += 1
        return float(metrics["loss"])


def make_zoo_step(model: str, *, batch_size: int, kernel: str = "reference") -> dict[str, Any]:
    """``{"step": ZooStep, "model", "loss_fn", "train", "batch" (on the host), "parameters",
    "tokens" and "flops" per step (None: not counted)}`` of ``model``, ``<name>/<preset>``
    (``lm/tiny``, ``lm/shakespeare_char``, ``rnnsearch/tiny``, ``sat/tiny``; ``/smoke`` for
    tests). ``kernel`` is the LM's attention kernel, or ``NO_ATTENTION`` for :func:`values_only`.
    Read the model's weights before the first step: it donates them."""
    name, _, preset = model.partition("/")
    if name == "lm":
        parts = _lm(preset, kernel, batch_size)
    elif name not in ("rnnsearch", "sat") or preset not in ("tiny", "smoke", "paper"):
        raise ValueError(
            f"model must be lm/<preset> or rnnsearch|sat/<tiny|smoke|paper>: {model!r}"
        )
    elif kernel != "reference":
        raise ValueError(f"{name} has no attention kernel choice (additive attention only)")
    else:
        parts = (_rnnsearch if name == "rnnsearch" else _sat)(preset, batch_size)
    step = ZooStep(parts["model"], parts["loss_fn"], parts["train"], parts["batch"])
    return {**parts, "step": step, "parameters": count_parameters(parts["model"])}


@contextlib.contextmanager
def _compile_events() -> Iterator[dict[str, list[float]]]:
    events: dict[str, list[float]] = collections.defaultdict(list)

    def listener(event: str, duration_secs: float, **_: str | int) -> None:
        if event in (_TRACE, _LOWER, _COMPILE):
            events[event].append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def compile_report(step: ZooStep) -> dict[str, Any]:
    """The step's first two calls: JAX's own durations of the first call's tracing, lowering
    and XLA compile, the compilations a second same-shape call made (0: the jit cache hit), and
    the jitted function's cached executables (1)."""
    with _compile_events() as first:
        start = time.perf_counter()
        loss = step()
        first_call_s = time.perf_counter() - start
    with _compile_events() as second:
        step()
    return {"first_call_s": first_call_s, "trace_s": sum(first[_TRACE]),
            "lower_s": sum(first[_LOWER]), "compile_s": sum(first[_COMPILE]),
            "first_call_compiles": len(first[_COMPILE]),
            "second_call_compiles": len(second[_COMPILE]),
            "second_call_traces": len(second[_TRACE]), "first_loss": loss,
            # A private method of jax's C++ jitted function, which JitWrapped's type omits.
            "cache_size": step.fn._cache_size()}  # type: ignore[attr-defined]  # fmt: skip
