"""Checkpoints through orbax: the latest few for resuming, and the best by an eval metric.

A checkpoint holds the parameters, the optimizer state, the data iterator's position (grain)
and a JSON record of the step and metrics. The RNG needs no entry: every random draw is
``fold_in(key(seed), step)``, so the step restores it. Orbax writes each checkpoint to a
temporary directory and renames it when complete, so a run killed mid-write leaves the
previous checkpoint intact and readable.
"""

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

__all__ = ["CheckpointError", "Checkpoints"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the current model."""


class Checkpoints:
    """``workdir/checkpoints`` (keep the last N) and ``workdir/best`` (keep one)."""

    def __init__(self, workdir: pathlib.Path, *, keep_last: int, best_metric: str, best_mode: str):
        self.best_metric = best_metric
        options = dict(enable_async_checkpointing=False, create=True)
        self.latest = ocp.CheckpointManager(
            (workdir / "checkpoints").absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep_last, **options),
        )
        self.best = ocp.CheckpointManager(
            (workdir / "best").absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda metrics: metrics[best_metric],
                best_mode=best_mode,
                keep_checkpoints_without_metrics=False,
                **options,
            ),
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(
        self,
        step: int,
        params: Any,
        opt_state: Any,
        data_iterator: Any,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Save to ``checkpoints/``; with ``metrics`` holding the best metric, to ``best/`` too."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave({"step": step, "metrics": metrics or {}}),
        )
        if self.latest.latest_step() != step:
            self.latest.save(step, args=args)
        if metrics is not None and self.best_metric in metrics:
            self.best.save(step, args=args, metrics={self.best_metric: metrics[self.best_metric]})

    def restore(
        self, params: Any, opt_state: Any, data_iterator: Any, *, best: bool = False
    ) -> tuple[int, Any, Any]:
        """Restore the latest (or best) checkpoint into the shapes of ``params``/``opt_state``.

        The data iterator is restored in place. Raises CheckpointError with what went wrong
        and what to do, and never deletes or overwrites anything.
        """
        manager = self.best if best else self.latest
        step = manager.best_step() if best else manager.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {manager.directory}")
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(abstract(params)),
                    opt_state=ocp.args.StandardRestore(abstract(opt_state)),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as error:  # orbax raises many types; all mean "unusable here"
            raise CheckpointError(
                f"cannot restore checkpoint {step} from {manager.directory}: "
                f"{type(error).__name__}: {error}. It is corrupt or was written by a different "
                "model/config; it was left untouched. Start a new --workdir, or delete that "
                "step's directory to fall back to an earlier checkpoint."
            ) from error
        if restored.meta["step"] != step:
            raise CheckpointError(f"checkpoint {step} records step {restored.meta['step']}")
        return step, restored.params, restored.opt_state

    def restore_model(self, model: nnx.Module, *, best: bool = False) -> int:
        """Load only the parameters of the latest (or best) checkpoint into ``model``."""
        manager = self.best if best else self.latest
        step = manager.best_step() if best else manager.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {manager.directory}")
        params = nnx.state(model, nnx.Param)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
            )
        except Exception as error:  # see restore()
            raise CheckpointError(
                f"cannot restore the parameters of checkpoint {step} from {manager.directory}: "
                f"{type(error).__name__}: {error}"
            ) from error
        nnx.update(model, restored.params)
        return step

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()
