"""Train an experiment's smoke model for a few steps in bfloat16 over float32 parameters.

Shared by the bfloat16 tests of the translate, caption and lm experiments. The model and the
loss are the task's own, the train step the runner's, jitted once; the batch is one made-up
batch of the pipeline's layout, repeated, so the loss must fall within a handful of steps
and no dataset has to be prepared (dropout still draws anew at every step).
"""

import dataclasses
import functools
import pathlib
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import config as config_lib
from experiments import runner

STEPS = 6
OVERRIDES = ["model.dtype=bfloat16", "model.param_dtype=float32"]


def smoke_config(task: ModuleType, model: str, workdir: pathlib.Path) -> Any:
    """The smoke preset in bfloat16, as `--set` makes it; it round-trips through config.json."""
    config = config_lib.apply_overrides(task.presets(model)["smoke"], OVERRIDES)
    config_lib.save(config, workdir / "config.json")
    assert config_lib.load(task.Config, workdir / "config.json") == config
    return config


def tokens(shape: tuple[int, ...], vocab_size: int, seed: int = 0) -> np.ndarray:
    """Random int32 tokens above the special ones (PAD 0, UNK 1, BOS 2, EOS 3)."""
    return np.random.default_rng(seed).integers(4, vocab_size, shape).astype(np.int32)


def param_dtypes(model: nnx.Module) -> set[jnp.dtype]:
    return {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}


def train(
    model: nnx.Module, loss_fn: runner.LossFn, batch: runner.Batch, train: Any
) -> list[float]:
    """STEPS steps on ``batch`` at the full learning rate; the losses. Updates ``model``."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # No warm-up and no decay: the full learning rate from the second step on.
    optimizer = runner.make_optimizer(
        dataclasses.replace(train, schedule="constant", warmup_steps=0)
    )
    opt_state = optimizer.init(params)
    step = jax.jit(
        functools.partial(
            runner.train_step, graphdef=graphdef, rest=rest, loss_fn=loss_fn, optimizer=optimizer
        )
    )
    losses = []
    for i in range(STEPS):
        params, opt_state, metrics = step(params, opt_state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    nnx.update(model, params)
    assert np.all(np.isfinite(losses)), losses
    return losses
