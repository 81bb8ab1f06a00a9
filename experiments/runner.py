"""One train / evaluate / checkpoint / log loop for every model in the zoo.

An experiment hands the runner a :class:`Setup` (its config, model, data, loss, evaluation,
pictures); the runner owns everything else: the optimizer, a pure jitted :func:`train_step`
with donated state, data parallelism over a mesh of devices (``experiments.parallel``), the
step-derived RNG, evaluation (:func:`evaluate`: the task's per-batch functions jitted once,
accumulated here), progress, metrics, checkpoints, resume and Ctrl-C. :func:`load_run` opens
a finished or running run directory for the tools that draw, sample or evaluate it.

Under ``jax.distributed`` every process runs the same steps, evaluations (gathering the model
is a collective) and checkpoints (orbax coordinates them); only process 0 writes metrics,
prints progress and draws the pictures, into the run directory they share.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from experiments import config as config_lib
from experiments import parallel, tasks
from experiments.checkpoints import Checkpoints
from experiments.config import TrainConfig, mesh_axes
from experiments.metrics import MetricWriter
from experiments.stop_signals import StopSignals

__all__ = [
    "Evaluation",
    "Run",
    "Setup",
    "apply",
    "evaluate",
    "load_run",
    "make_optimizer",
    "train",
    "train_step",
]

Batch = dict[str, Any]
# loss_fn(model, batch, rng) -> (scalar loss, {name: scalar metric}); traced under jit.
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass
class Evaluation:
    """How a task is evaluated on a held-out split; :func:`evaluate` runs it.

    ``sums`` and ``generate`` are pure functions of the model and one batch (its arrays only),
    which the runner jits once; ``sums`` returns totals that add up over batches (summed
    losses, token counts), ``generate`` the model's outputs (e.g. beam-search tokens), kept
    per batch. ``metrics`` turns the totals and outputs into the reported numbers (BLEU, ...).
    """

    batches: Callable[[str], Sequence[Batch]]  # a split's held-out batches, the same each time
    sums: Callable[[nnx.Module, Batch], dict[str, jax.Array]]
    # metrics(split, totals, batches, outputs) -> {name: value}
    metrics: Callable[[str, dict[str, float], Sequence[Batch], list[Any]], dict[str, float]]
    generate: Callable[[nnx.Module, Batch], Any] | None = None


@dataclasses.dataclass
class Setup:
    """What an experiment gives the runner."""

    # The run's config with every field the data decides (vocabulary sizes, channels) filled
    # in: what config.json records and a resumed run is rebuilt from.
    config: Any
    model: nnx.Module  # freshly initialised from the seed
    batches: Iterator[Batch]  # endless training batches; grain iterator (checkpointable)
    loss_fn: LossFn
    # Held-out metrics, e.g. BLEU, of a split: "validation" during training (it picks the
    # best checkpoint), "test" once at the end.
    evaluation: Evaluation
    visualize: Callable[[nnx.Module, pathlib.Path], list[pathlib.Path]]  # PNGs it wrote
    count_tokens: Callable[[Batch], int]  # for the tokens/s readout
    best_metric: str  # a metrics key that picks the best checkpoint
    best_mode: str = "max"  # "max" or "min"
    # The task's held-out data (its ``data``: tokenizers, splits) and what it decodes and draws
    # with, for the tools that open a run (sample, figures).
    held_out: Any = None


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clip the global norm, then the chosen optimizer on the chosen schedule."""
    if config.schedule == "constant":
        schedule = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
    elif config.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            config.learning_rate,
            max(config.warmup_steps, 1),
            max(config.steps, config.warmup_steps + 1),
            end_value=config.learning_rate / 10,
        )
    elif config.schedule == "rsqrt":
        # Vaswani et al. 2017, eq. (3): linear warm-up, then decay with 1/sqrt(step),
        # scaled so the peak (at the end of warm-up) is `learning_rate`.
        warmup = max(config.warmup_steps, 1)

        def schedule(step: jax.Array) -> jax.Array:
            step = jnp.maximum(step.astype(jnp.float32), 1.0)
            return config.learning_rate * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))
    else:
        raise ValueError(
            f"train.schedule must be 'constant', 'cosine' or 'rsqrt', got {config.schedule!r}"
        )
    if config.optimizer == "adam":
        optimizer = optax.adam(schedule)
    elif config.optimizer == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
    elif config.optimizer == "adadelta":
        # Bahdanau et al. 2014, appendix B.2: Adadelta with eps 1e-6, rho 0.95.
        optimizer = optax.adadelta(schedule, rho=0.95, eps=1e-6)
    else:
        raise ValueError(
            f"train.optimizer must be 'adam', 'adamw' or 'adadelta', got {config.optimizer!r}"
        )
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)


def train_step(
    params: nnx.State,
    opt_state: optax.OptState,
    batch: Batch,
    rng: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    rest: nnx.State,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
) -> tuple[nnx.State, optax.OptState, dict[str, jax.Array]]:
    def loss(params: nnx.State) -> tuple[jax.Array, dict[str, jax.Array]]:
        return loss_fn(nnx.merge(graphdef, params, rest), batch, rng)

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": value, "grad_norm": optax.tree.norm(grads), **metrics}


def _arrays(batch: Batch) -> Batch:
    """The arrays of a batch: what a jitted function is given (texts stay on the host)."""
    return {k: v for k, v in batch.items() if isinstance(v, np.ndarray | jax.Array)}


@functools.cache
def _apply(fn: Callable[[nnx.Module, Batch], Any], graphdef: nnx.GraphDef) -> Callable:
    # One jitted function per task function and model structure, kept for the process: a
    # resumed run, a redraw or a second evaluation compiles nothing again.
    return jax.jit(lambda state, batch: fn(nnx.merge(graphdef, state), batch))


def apply(fn: Callable[[nnx.Module, Batch], Any], model: nnx.Module, batch: Batch) -> Any:
    """``fn(model, batch)`` jitted, on the arrays of ``batch``: how tasks run their pure
    functions (evaluation, decoding, the pictures' forward passes) on a model."""
    graphdef, state = nnx.split(model)
    return _apply(fn, graphdef)(state, _arrays(batch))


class _Evaluator:
    """An :class:`Evaluation` with its functions jitted once for one model structure."""

    def __init__(self, evaluation: Evaluation, graphdef: nnx.GraphDef):
        self.evaluation = evaluation
        self.sums = _apply(evaluation.sums, graphdef)
        self.generate = (
            None if evaluation.generate is None else _apply(evaluation.generate, graphdef)
        )

    def __call__(self, state: nnx.State, split: str) -> dict[str, float]:
        batches = self.evaluation.batches(split)
        totals: dict[str, float] = {}
        outputs = []
        for batch in batches:
            arrays = _arrays(batch)
            for name, value in jax.device_get(self.sums(state, arrays)).items():
                totals[name] = totals.get(name, 0.0) + float(value)
            if self.generate is not None:
                outputs.append(jax.device_get(self.generate(state, arrays)))
        return self.evaluation.metrics(split, totals, batches, outputs)


def evaluate(setup: Setup, model: nnx.Module, split: str) -> dict[str, float]:
    """The task's metrics of ``model`` on ``split`` ("validation" or "test")."""
    graphdef, state = nnx.split(model)
    return _Evaluator(setup.evaluation, graphdef)(state, split)


@dataclasses.dataclass
class Run:
    """A run directory opened by :func:`load_run`."""

    workdir: pathlib.Path
    experiment: str
    setup: Setup  # its model holds the restored parameters
    step: int  # the step of the checkpoint restored

    @property
    def config(self) -> Any:
        return self.setup.config

    @property
    def model(self) -> nnx.Module:
        return self.setup.model


def load_run(workdir: pathlib.Path, *, best: bool = False, overrides: Sequence[str] = ()) -> Run:
    """The run in ``workdir``: its saved config (with ``overrides`` such as
    ``"eval.beam_size=3"`` set, as ``--set`` does), the task's setup, and the parameters of the
    latest checkpoint (or the best one by the validation metric). Raises ValueError when
    ``workdir`` holds no run, CheckpointError when its checkpoint cannot be restored."""
    saved = workdir / "config.json"
    if not saved.exists():
        raise ValueError(f"{workdir} is not a run directory (no config.json)")
    experiment = json.loads(saved.read_text()).get("experiment")
    task = tasks.load(experiment)
    config = config_lib.apply_overrides(config_lib.load(task.Config, saved), list(overrides))
    setup = task.setup(config, workdir)
    checkpoints = Checkpoints(
        workdir, keep_last=1, best_metric=setup.best_metric, best_mode=setup.best_mode
    )
    try:
        step = checkpoints.restore_model(setup.model, best=best)
    finally:
        checkpoints.close()
    return Run(workdir, experiment, setup, step)


def _all_processes(count: int) -> float:
    """``count`` summed over every JAX process, each of which counted its own batches."""
    if jax.process_count() == 1:
        return count
    return float(multihost_utils.process_allgather(np.float32(count)).sum())


def train(
    setup: Setup, train_config: TrainConfig, workdir: pathlib.Path, *, resume: bool
) -> dict[str, float]:
    """Train to ``train_config.steps``, resuming from ``workdir`` if asked.

    Returns the test metrics of the final model, and its last validation metrics prefixed
    ``validation_``.
    """
    mesh = parallel.make_mesh(train_config.devices, mesh_axes(train_config.mesh))
    rule = train_config.param_sharding
    parts: tuple[Any, ...] = nnx.split(setup.model, nnx.Param, ...)  # one State per filter
    graphdef, params, rest = parts
    params = parallel.place(params, mesh, rule)
    optimizer = make_optimizer(train_config)
    opt_state = parallel.place(optimizer.init(params), mesh, rule)
    step_fn = jax.jit(
        functools.partial(
            train_step, graphdef=graphdef, rest=rest, loss_fn=setup.loss_fn, optimizer=optimizer
        ),
        donate_argnums=(0, 1),
        # The state stays where it was placed; the metrics come back whole on every device.
        out_shardings=(
            parallel.shardings(params),
            parallel.shardings(opt_state),
            NamedSharding(mesh, P()),
        ),
    )
    key = jax.random.key(train_config.seed)
    primary = jax.process_index() == 0  # the one process that writes and prints
    with contextlib.ExitStack() as cleanup:
        checkpoints = Checkpoints(
            workdir,
            keep_last=train_config.keep_last,
            best_metric=setup.best_metric,
            best_mode=setup.best_mode,
        )
        cleanup.callback(checkpoints.close)
        step = 0
        if resume and checkpoints.latest_step() is not None:
            # Orbax restores each array onto the sharding of the one it is given.
            step, params, opt_state = checkpoints.restore(
                params, opt_state, setup.batches, fall_back=True
            )
            if primary:
                for skipped in checkpoints.skipped:
                    print(f"checkpoint {skipped.step} skipped: {skipped.reason}")
                print(f"resumed from step {step} in {workdir}")
        # The steps after `step` are redone: an earlier attempt's records of them are dropped.
        writer = MetricWriter(workdir, active=primary, start_step=step)
        cleanup.callback(writer.close)
        progress = tqdm(
            total=train_config.steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            disable=not primary,
        )
        cleanup.callback(progress.close)

        def say(text: str) -> None:
            if primary:  # tqdm.write prints even from a disabled bar
                progress.write(text)

        def model() -> nnx.Module:
            return nnx.merge(graphdef, parallel.gather(params), rest)

        evaluator = _Evaluator(setup.evaluation, nnx.graphdef(setup.model))

        def held_out(split: str) -> dict[str, float]:
            return evaluator(nnx.state(model()), split)

        eval_metrics: dict[str, float] = {}
        tokens, tick = 0, time.perf_counter()
        stop = cleanup.enter_context(StopSignals(active=primary))
        stopping = False

        def save(metrics: dict[str, float] | None = None) -> None:
            with stop.saving():
                try:
                    checkpoints.save(step, params, opt_state, setup.batches, metrics)
                except ValueError as error:
                    # A write the disk refused (full, read-only) comes from tensorstore as a
                    # ValueError that names the errno: as an OSError it reads as the user's to
                    # fix, not as a bug.
                    code = re.search(r"os_error_code='?(\d+)", str(error))
                    if code is None:
                        raise
                    raise OSError(
                        int(code[1]),
                        f"cannot save checkpoint {step} in {workdir}: "
                        f"{os.strerror(int(code[1]))}. The checkpoints saved before it are "
                        "intact: make room, then continue with --resume",
                    ) from error

        try:
            while step < train_config.steps and not stopping:
                batch = next(setup.batches)
                # Every random draw derives from (seed, step): a resumed run draws the same.
                params, opt_state, metrics = step_fn(
                    params,
                    opt_state,
                    parallel.place_batch(batch, mesh),
                    jax.random.fold_in(key, step),
                )
                step += 1
                tokens += setup.count_tokens(batch)
                progress.update(1)
                if step % train_config.log_every == 0 or step == train_config.steps:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if not math.isfinite(values["loss"]):
                        raise FloatingPointError(
                            f"training loss became {values['loss']} at step {step}; "
                            "lower train.learning_rate or check the data"
                        )
                    elapsed = time.perf_counter() - tick
                    values["tokens_per_second"] = _all_processes(tokens) / elapsed
                    tokens, tick = 0, time.perf_counter()
                    writer.write(step, "train", values)
                    progress.set_postfix(
                        loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_second']:.0f}"
                    )
                evaluated = None
                if step % train_config.eval_every == 0 or step == train_config.steps:
                    eval_metrics = evaluated = held_out("validation")
                    writer.write(step, "eval", evaluated)
                    say(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in evaluated.items()))
                    tick = time.perf_counter()  # evaluation time is not training speed
                if (
                    step % train_config.checkpoint_every == 0
                    or step == train_config.steps
                    or evaluated is not None
                ):
                    save(evaluated)
                stopping = stop.requested()  # the step boundary: step, state and data agree
            if stopping:
                save()  # nothing to do when the step was just saved
                say(f"\ninterrupted: saved step {step} in {workdir}; continue with --resume")
                raise SystemExit(stop.exit_code)
            stop.all_saved()
            test_metrics = held_out("test")
        except KeyboardInterrupt:  # a second signal, or one after the last step was saved
            latest = checkpoints.latest_step()
            saved = (
                f"the latest checkpoint is step {latest} in {workdir}; continue with --resume"
                if latest is not None
                else f"no checkpoint was saved in {workdir} yet"
            )
            say(f"\ninterrupted: {saved}")
            raise SystemExit(stop.exit_code) from None
        writer.write(step, "test", test_metrics)
    final = model()  # on every process: gathering the parameters is a collective
    if primary:
        for path in setup.visualize(final, workdir / "plots"):
            print(f"plot: {path}")
    return {**{f"validation_{k}": v for k, v in eval_metrics.items()}, **test_metrics}
