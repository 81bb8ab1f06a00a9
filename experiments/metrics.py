"""Metric records: one JSON line per record (``metrics.jsonl``) and TensorBoard event files.

``tensorboard --logdir RUN_DIR`` shows the curves; the JSONL file is for scripts and tests.
"""

import json
import math
import pathlib
import time

from tensorboardX import SummaryWriter

__all__ = ["MetricWriter"]


class MetricWriter:
    def __init__(self, workdir: pathlib.Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / "metrics.jsonl"
        self._jsonl = self.path.open("a")
        self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Record ``metrics`` of ``split`` ("train", "eval", ...) at ``step``."""
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
        self._jsonl.close()
        self._tensorboard.close()
