"""A tiny regression task on the real runner: fast enough for resume and crash tests.

Run as a script (``python -m tests.experiments.toy_task WORKDIR STEPS [--sleep S]
[--signal NAME POINT COUNT]``) it trains in its own process, so a test can SIGKILL it mid-run,
or have it signal itself at a chosen point of the loop (see :func:`make_setup`'s ``hooks``).
"""

import argparse
import pathlib
import signal
import time
from collections.abc import Callable, Mapping

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import runner
from experiments.config import TrainConfig

# Where make_setup can call a hook: after each batch is drawn, inside each execution of the
# jitted step (after it took its donated arguments), and inside each evaluation.
HOOK_POINTS = ("batch", "step", "eval")


class _Points:
    """Random (x, sum(x) + noise) pairs, a pure function of the index."""

    def __len__(self) -> int:
        return 997

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(index)
        x = rng.standard_normal(5).astype(np.float32)
        return {"x": x, "y": np.float32(x.sum() + 0.1 * rng.standard_normal())}


class _Hooked(grain.DatasetIterator):
    """A grain iterator that calls ``hook`` after each element it hands out; its state, and
    the data sizes a checkpoint records, are its parent's."""

    def __init__(self, parent: grain.DatasetIterator, hook: Callable[[], None]):
        super().__init__(parent)
        self._hook = hook

    def __next__(self):
        element = next(self._parent)
        self._hook()
        return element

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state) -> None:
        self._parent.set_state(state)


def make_setup(
    seed: int = 0, sleep: float = 0.0, hooks: Mapping[str, Callable[[], None]] | None = None
) -> runner.Setup:
    """``hooks``: {point of HOOK_POINTS: a function called there, with no arguments}."""
    hooks = dict(hooks or {})
    if set(hooks) - set(HOOK_POINTS):
        raise ValueError(f"hooks must be among {HOOK_POINTS}, got {sorted(hooks)}")
    batches = iter(
        grain.MapDataset.source(_Points()).shuffle(seed=seed).repeat().batch(32).to_iter_dataset()
    )
    if "batch" in hooks:
        batches = _Hooked(batches, hooks["batch"])

    def loss_fn(model, batch, rng):
        noise = 0.01 * jnp.asarray(np.float32(1.0)) * jnp.ones(())  # constant: rng unused
        del rng
        if "step" in hooks:  # runs on the host while the step executes
            jax.debug.callback(hooks["step"])
        error = model(batch["x"])[:, 0] - batch["y"] + 0 * noise
        return jnp.mean(error**2), {}

    def sums(model, batch):
        return {"weight_sum": model.kernel[...].sum()}

    def metrics(split, totals, batches, outputs):
        if sleep:  # a slow evaluation
            time.sleep(sleep)
        if "eval" in hooks:
            hooks["eval"]()
        return totals

    return runner.Setup(
        config=None,
        model=nnx.Linear(5, 1, rngs=nnx.Rngs(seed)),
        batches=batches,
        loss_fn=loss_fn,
        evaluation=runner.Evaluation(batches=lambda split: [{}], sums=sums, metrics=metrics),
        visualize=lambda model, out: [],
        count_tokens=lambda batch: 32,
        best_metric="weight_sum",
    )


def train_config(steps: int) -> TrainConfig:
    # A constant schedule: the learning rate then does not depend on the total step count.
    return TrainConfig(
        steps=steps,
        learning_rate=0.1,
        schedule="constant",
        warmup_steps=1,
        eval_every=1,
        checkpoint_every=1,
        keep_last=2,
        log_every=1,
    )


def signal_on_call(count: int, signum: int) -> Callable[[], None]:
    """A hook that sends this process ``signum`` on its ``count``-th call (1 = the first).

    ``raise_signal`` delivers it to the calling thread before it returns, so whatever the
    machine's load, the signal lands exactly there.
    """
    calls = 0

    def hook() -> None:
        nonlocal calls
        calls += 1
        if calls == count:
            # Without a handler of the runner's, it would stop the test process itself.
            if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
                raise RuntimeError(f"no handler for {signal.Signals(signum).name} is installed")
            signal.raise_signal(signum)

    return hook


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per evaluation")
    parser.add_argument(
        "--signal",
        nargs=3,
        metavar=("NAME", "POINT", "COUNT"),
        help="send itself signal NAME (e.g. SIGTERM) at the COUNT-th call of POINT "
        f"(one of {HOOK_POINTS})",
    )
    args = parser.parse_args()
    hooks = {}
    if args.signal:
        name, point, count = args.signal
        hooks[point] = signal_on_call(int(count), signal.Signals[name])
    setup = make_setup(sleep=args.sleep, hooks=hooks)
    runner.train(setup, train_config(args.steps), args.workdir, resume=True)
