"""Checkpoints through orbax: the latest few for resuming, and the best by an eval metric.

A checkpoint holds the parameters, the optimizer state, the data iterator's position (grain)
and a JSON record of the step and metrics. The RNG needs no entry: every random draw is
``fold_in(key(seed), step)``, so the step restores it. Orbax writes each checkpoint to a
temporary directory (``N.orbax-checkpoint-tmp-*``) and renames it when complete, so a run
killed mid-write leaves the previous checkpoint intact and readable; orbax never lists the
temporary directories as steps.

Orbax checks no checksum of the arrays it reads back: one flipped byte in a parameter file
restores silently as different numbers. So each save records in the JSON record the SHA-256
of every array it saves (of its bytes on the host) and of the data iterator's state, and each
restore recomputes them on what it read and refuses a checkpoint that differs. A checkpoint
written before these records restores unverified. With ``fall_back=True`` a restore that finds
a checkpoint unreadable or altered tries the next older one, and lists what it skipped in
``Checkpoints.skipped``.
"""

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from experiments.errors import CheckpointError

__all__ = ["CheckpointError", "Checkpoints", "SkippedCheckpoint"]

T = TypeVar("T")

# Bumped when the layout of the "checksums" record changes; restore verifies only what it knows.
CHECKSUM_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint that a ``fall_back=True`` restore passed over, and why."""

    step: int
    reason: str  # the CheckpointError's message


def _host_bytes(leaf: Any) -> np.ndarray | None:
    """The whole array on this host, or None when this process holds only part of it."""
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if leaf.is_fully_addressable:
            return np.asarray(jax.device_get(leaf))
        if leaf.is_fully_replicated:  # spans processes, but every device holds all of it
            return np.asarray(leaf.addressable_data(0))
        return None  # sharded over processes: no process sees every byte
    return np.asarray(leaf)


def _leaf_record(leaf: Any) -> dict[str, Any]:
    array = _host_bytes(leaf)
    if array is None:
        return {"dtype": str(leaf.dtype), "sha256": None}
    digest = hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).data).hexdigest()
    return {"dtype": str(array.dtype), "sha256": digest}


def tree_checksums(tree: Any) -> dict[str, dict[str, Any]]:
    """``{key path: {"dtype", "sha256"}}`` of every leaf; ``sha256`` None where not hashed."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): _leaf_record(leaf) for path, leaf in leaves}


def state_checksum(state: Any) -> str:
    """SHA-256 of a data iterator's state (a small JSON-serializable dict) in canonical form."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def data_lengths(iterator: Any) -> list[int] | None:
    """Record counts of the random-access sources (``grain.MapDataset``) a grain iterator reads.

    The iterator's position is an index into them (``next_index``); grain rejects one past the
    end, but a stream repeated forever has no end, so a data set prepared again at another size
    would resume silently somewhere else. None where grain does not expose them.
    """
    # grain keeps the parent links of iterators private (`_parents`, and `_map_parent` of the
    # prefetching iterator that `to_iter_dataset` makes); getattr keeps this optional.
    stages: list[Any] = []
    stack = [iterator]
    while stack:
        current = stack.pop()
        parent = getattr(current, "_map_parent", None)
        if isinstance(parent, grain.MapDataset):
            stages.append(parent)
        stack.extend(getattr(current, "_parents", ()))
    lengths = []
    while stages:
        stage = stages.pop(0)
        parents = [p for p in stage.parents if isinstance(p, grain.MapDataset)]
        if parents:
            stages.extend(parents)
        else:  # a source: the stages above it repeat, shuffle or batch it
            lengths.append(len(stage))
    return lengths or None


def _checksums(params: Any, opt_state: Any, data_iterator: Any) -> dict[str, Any]:
    # Each process writes only its own data iterator state (grain's
    # process_<i>-of-<n>.json) while the JSON record comes from the primary process alone, so
    # the record can vouch for the iterator only when there is one process.
    one_process = jax.process_count() == 1
    return {
        "format": CHECKSUM_FORMAT,
        "params": tree_checksums(params),
        "opt_state": tree_checksums(opt_state),
        "data": state_checksum(data_iterator.get_state()) if one_process else None,
        "data_lengths": data_lengths(data_iterator) if one_process else None,
    }


def _altered_leaves(recorded: Mapping[str, Any], tree: Any) -> list[str]:
    """Key paths of the leaves of ``tree`` whose bytes differ from the ``recorded`` hashes.

    Leaves that were not hashed at save, are not whole on this host now, or were restored in
    another dtype (orbax casts to the dtype asked for) cannot be compared and are passed over.
    """
    altered = []
    for path, now in tree_checksums(tree).items():
        then = recorded.get(path)
        if not isinstance(then, Mapping) or None in (then.get("sha256"), now["sha256"]):
            continue
        if then.get("dtype") == now["dtype"] and then["sha256"] != now["sha256"]:
            altered.append(path)
    return altered


class Checkpoints:
    """``workdir/checkpoints`` (keep the last N) and ``workdir/best`` (keep one)."""

    def __init__(self, workdir: pathlib.Path, *, keep_last: int, best_metric: str, best_mode: str):
        self.best_metric = best_metric
        # What the last restore with fall_back=True passed over, newest first.
        self.skipped: tuple[SkippedCheckpoint, ...] = ()
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
        to_latest = self.latest.latest_step() != step
        to_best = metrics is not None and self.best_metric in metrics
        if not (to_latest or to_best):
            return
        meta = {
            "step": step,
            "metrics": metrics or {},
            "checksums": _checksums(params, opt_state, data_iterator),
        }
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        )
        if to_latest:
            self.latest.save(step, args=args)
        if metrics is not None and to_best:
            self.best.save(step, args=args, metrics={self.best_metric: metrics[self.best_metric]})

    def restore(
        self,
        params: Any,
        opt_state: Any,
        data_iterator: Any,
        *,
        best: bool = False,
        fall_back: bool = False,
    ) -> tuple[int, Any, Any]:
        """Restore the latest (or best) checkpoint into the shapes of ``params``/``opt_state``.

        The data iterator is restored in place. The arrays and the iterator state are checked
        against the checksums recorded at save. Raises CheckpointError with what went wrong
        and what to do, and never deletes or overwrites anything. With ``fall_back``, a
        checkpoint that fails is passed over for the next older one (each listed in
        ``self.skipped``); CheckpointError only when none is left.
        """
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        abstract_params, abstract_opt_state = abstract(params), abstract(opt_state)

        def attempt(manager: ocp.CheckpointManager, step: int) -> tuple[int, Any, Any]:
            restored = self._read(
                manager,
                step,
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            )
            checksums = self._checksums_of(manager, step, restored.meta)
            if checksums is not None:
                trees = {"params": restored.params, "opt_state": restored.opt_state}
                self._verify_trees(manager, step, checksums, trees)
                self._verify_data(manager, step, checksums, data_iterator)
            return step, restored.params, restored.opt_state

        return self._first_intact(attempt, best=best, fall_back=fall_back)

    def restore_model(
        self, model: nnx.Module, *, best: bool = False, fall_back: bool = False
    ) -> int:
        """Load only the parameters of the latest (or best) checkpoint into ``model``.

        Verified against the recorded checksums as in ``restore``, ``fall_back`` likewise.
        """
        params = nnx.state(model, nnx.Param)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)

        def attempt(manager: ocp.CheckpointManager, step: int) -> tuple[int, Any]:
            restored = self._read(manager, step, params=ocp.args.StandardRestore(abstract))
            checksums = self._checksums_of(manager, step, restored.meta)
            if checksums is not None:
                self._verify_trees(manager, step, checksums, {"params": restored.params})
            return step, restored.params

        step, restored = self._first_intact(attempt, best=best, fall_back=fall_back)
        nnx.update(model, restored)
        return step

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()

    # The steps to try, the reading and the checks behind restore() and restore_model().

    def _first_intact(
        self,
        attempt: Callable[[ocp.CheckpointManager, int], T],
        *,
        best: bool,
        fall_back: bool,
    ) -> T:
        """``attempt(manager, step)`` on the chosen checkpoint, or newest-first with fall_back."""
        self.skipped = ()
        manager = self.best if best else self.latest
        chosen = manager.best_step() if best else manager.latest_step()
        if chosen is None:
            raise CheckpointError(f"no checkpoint in {manager.directory}")
        if not fall_back:
            return attempt(manager, chosen)
        skipped = []
        for step in [chosen, *(s for s in self._steps(manager) if s != chosen)]:
            try:
                result = attempt(manager, step)
            except CheckpointError as error:
                skipped.append(SkippedCheckpoint(step, str(error)))
                continue
            self.skipped = tuple(skipped)
            return result
        self.skipped = tuple(skipped)
        raise CheckpointError(
            f"no intact checkpoint in {manager.directory}: every one failed its check, "
            "newest first:\n" + "\n".join(f"  {s.step}: {s.reason}" for s in skipped)
        )

    @staticmethod
    def _steps(manager: ocp.CheckpointManager) -> list[int]:
        return sorted(manager.all_steps(), reverse=True)

    def _older_steps(self, manager: ocp.CheckpointManager, step: int) -> str:
        """What to do when checkpoint ``step`` is unusable: the steps left to fall back on."""
        older = [s for s in self._steps(manager) if s < step]
        where = pathlib.Path(manager.directory) / str(step)
        if not older:
            return (
                f"There is no older checkpoint in {manager.directory} to fall back on: start a "
                "new --workdir."
            )
        return (
            f"The newest older checkpoint is step {older[0]} (of {older}); to resume from it, "
            f"move {where} away."
        )

    def _read(self, manager: ocp.CheckpointManager, step: int, **items: Any) -> Any:
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(**items, meta=ocp.args.JsonRestore())
            )
        except Exception as error:  # orbax raises many types; all mean "unusable here"
            # grain's own check of the position (IndexError: `next_index` out of range)
            # lands here too: a data set shorter than the one the checkpoint was taken on.
            raise CheckpointError(
                f"cannot restore checkpoint {step} from {manager.directory}: "
                f"{type(error).__name__}: {error}. It is corrupt or was written by a different "
                "model/config/data set; it was left untouched. " + self._older_steps(manager, step)
            ) from error
        if not isinstance(restored.meta, Mapping) or restored.meta.get("step") != step:
            recorded = restored.meta.get("step") if isinstance(restored.meta, Mapping) else None
            raise CheckpointError(
                f"checkpoint {step} in {manager.directory} records step {recorded}. "
                + self._older_steps(manager, step)
            )
        return restored

    def _checksums_of(
        self, manager: ocp.CheckpointManager, step: int, meta: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """The recorded checksums, or None for a checkpoint saved before they were recorded."""
        checksums = meta.get("checksums")
        if checksums is None:
            return None
        if not isinstance(checksums, Mapping) or checksums.get("format") != CHECKSUM_FORMAT:
            raise CheckpointError(
                f"checkpoint {step} in {manager.directory}: its checksum record is damaged or "
                f"of an unknown format ({str(checksums)[:80]!r}). "
                + self._older_steps(manager, step)
            )
        return checksums

    def _verify_trees(
        self,
        manager: ocp.CheckpointManager,
        step: int,
        checksums: Mapping[str, Any],
        trees: Mapping[str, Any],
    ) -> None:
        altered = [
            f"{name}{path}"
            for name, tree in trees.items()
            for path in _altered_leaves(checksums.get(name) or {}, tree)
        ]
        if altered:
            shown = ", ".join(altered[:3]) + (
                f" and {len(altered) - 3} more" if len(altered) > 3 else ""
            )
            raise CheckpointError(
                f"checkpoint {step} in {manager.directory} is corrupt: {len(altered)} array(s) "
                f"read back differ from the SHA-256 recorded when it was saved ({shown}). It was "
                "left untouched. " + self._older_steps(manager, step)
            )

    def _verify_data(
        self, manager: ocp.CheckpointManager, step: int, checksums: Mapping[str, Any], iterator: Any
    ) -> None:
        if jax.process_count() != 1:
            return
        then, now = checksums.get("data_lengths"), data_lengths(iterator)
        if then is not None and now is not None and list(then) != now:
            raise CheckpointError(
                f"checkpoint {step} in {manager.directory} was taken on other data: its data "
                f"iterator read {then} records then and reads {now} now, so its position "
                f"({iterator.get_state()}) would resume somewhere else. The data set was "
                "prepared again or its config changed; resume with the data it was taken on, "
                "or start a new --workdir."
            )
        expected = checksums.get("data")
        if expected is not None and state_checksum(iterator.get_state()) != expected:
            raise CheckpointError(
                f"checkpoint {step} in {manager.directory} is corrupt: the data iterator state "
                f"read back ({iterator.get_state()}) differs from the one recorded when it was "
                "saved. " + self._older_steps(manager, step)
            )
