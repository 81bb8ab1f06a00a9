"""A tiny regression task on the real runner: fast enough for resume and crash tests.

Run as a script (``python -m tests.experiments.toy_task WORKDIR STEPS [--sleep S]``) it trains
in its own process, so a test can SIGKILL it mid-run.
"""

import argparse
import pathlib
import time

import grain
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import runner
from experiments.config import TrainConfig


class _Points:
    """Random (x, sum(x) + noise) pairs, a pure function of the index."""

    def __len__(self) -> int:
        return 997

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(index)
        x = rng.standard_normal(5).astype(np.float32)
        return {"x": x, "y": np.float32(x.sum() + 0.1 * rng.standard_normal())}


def make_setup(seed: int = 0, sleep: float = 0.0) -> runner.Setup:
    batches = iter(
        grain.MapDataset.source(_Points()).shuffle(seed=seed).repeat().batch(32).to_iter_dataset()
    )

    def loss_fn(model, batch, rng):
        noise = 0.01 * jnp.asarray(np.float32(1.0)) * jnp.ones(())  # constant: rng unused
        del rng
        error = model(batch["x"])[:, 0] - batch["y"] + 0 * noise
        return jnp.mean(error**2), {}

    def sums(model, batch):
        return {"weight_sum": model.kernel[...].sum()}

    def metrics(split, totals, batches, outputs):
        if sleep:  # a slow evaluation
            time.sleep(sleep)
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per evaluation")
    args = parser.parse_args()
    runner.train(make_setup(sleep=args.sleep), train_config(args.steps), args.workdir, resume=True)
