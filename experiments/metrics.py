"""Metric records: one JSON line per record (``metrics.jsonl``) and TensorBoard event files.

``tensorboard --logdir RUN_DIR`` shows the curves; the JSONL file is for scripts and tests.
With several JAX processes sharing one run directory, only one of them writes (``active``).
"""

import json
import math
import pathlib
import time

from tensorboardX import SummaryWriter

__all__ = ["MetricWriter"]


class MetricWriter:
    def __init__(self, workdir: pathlib.Path, *, active: bool = True):
        """``active=False``: open nothing and record nothing (a process other than the first,
        whose records would repeat the first's lines and race its event files)."""
        self.path = workdir / "metrics.jsonl"
        self.active = active
        if not active:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = self.path.open("a")
        self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

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
