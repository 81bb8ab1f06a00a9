"""Metric records: one JSON line per record (``metrics.jsonl``) and TensorBoard event files.

``tensorboard --logdir RUN_DIR`` shows the curves; the JSONL file is for scripts and tests.
With several JAX processes sharing one run directory, only one of them writes (``active``).

A run that continues from the checkpoint of step N redoes the steps after N, whose records
an earlier attempt may have written before it was stopped. ``start_step=N`` drops those from
``metrics.jsonl``, so each step is recorded once, as in an uninterrupted run. TensorBoard's
event files cannot be edited: the new one starts with a purge marker at N + 1, which makes
TensorBoard hide the older files' events from N + 1 on.
"""

import json
import math
import os
import pathlib
import time
from typing import Any

from tensorboardX import SummaryWriter

__all__ = ["MetricWriter"]

# The split evaluated once, after the checkpoint of the last step: a run continued from that
# step evaluates it again (a finished run rerun) or later (one trained longer).
FINAL_SPLIT = "test"


def _kept_on_resume(record: Any, start_step: int) -> bool:
    """Whether a run resumed from the checkpoint of ``start_step`` keeps ``record``."""
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return False
    step = record["step"]
    return step < start_step or (step == start_step and record.get("split") != FINAL_SPLIT)


def _keep_records_before(path: pathlib.Path, start_step: int) -> None:
    """Rewrite ``path`` without the records a run resumed at ``start_step`` writes again.

    A line that does not parse is the last one of a process killed while writing it. The new
    file replaces the old one by a rename, so a crash here leaves one or the other, whole.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if _kept_on_resume(record, start_step):
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept == lines:
        return
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w") as file:
        file.writelines(kept)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


class MetricWriter:
    def __init__(
        self, workdir: pathlib.Path, *, active: bool = True, start_step: int | None = None
    ):
        """``active=False``: open nothing and record nothing (a process other than the first,
        whose records would repeat the first's lines and race its event files).

        ``start_step``: the step the run starts from (0 for a new run, the restored checkpoint's
        step when resuming); records an earlier attempt wrote past it are dropped. None appends
        to whatever is there.
        """
        self.path = workdir / "metrics.jsonl"
        self.active = active
        if not active:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        if start_step is not None:
            _keep_records_before(self.path, start_step)
        self._jsonl = self.path.open("a")
        if start_step is None:
            self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))
        else:
            # The suffix keeps apart the files of attempts started in the same second, which
            # tensorboardX would name alike (and the second would truncate the first).
            self._tensorboard = SummaryWriter(
                str(workdir / "tensorboard"),
                purge_step=start_step + 1,
                filename_suffix=f".from-step-{start_step}",
            )

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Record ``metrics`` of ``split`` ("train", "eval", ...) at ``step``."""
        if not self.active:
            return
        values = {k: float(v) for k, v in metrics.items()}
        # Non-finite values stay visible (as strings: JSON has no NaN) but skip TensorBoard.
        record = {k: v if math.isfinite(v) else str(v) for k, v in values.items()}
        record = {"step": step, "split": split, "time": time.time(), **record}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            if math.isfinite(value):
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        if not self.active:
            return
        self._jsonl.close()
        self._tensorboard.close()
