"""The GPU check's dry run: every step of benchmarks/gpu_check.sh at tiny sizes on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "devices:" in done.stdout and "jax " in done.stdout  # the versions came first
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["device"] and results["machine"]["versions"]["jax"]
    cases = results["cases"]
    timed = {(c["case"], c.get("implementation")) for c in cases if "ms" in c}
    for name in ("zoo dispatch", "zoo blockwise", "jax.nn xla"):
        assert ("attention", name) in timed
    assert {("additive", "pallas"), ("additive", "blockwise (lax)")} <= timed
    (step,) = [c for c in cases if c["case"] == "lm_train_step"]
    assert step["tokens_per_s"] > 0 and step["mfu"] > 0
    # The GPU peers cannot run on CPU: each is reported with the reason, not dropped.
    skipped = {c["implementation"]: c["skipped"] for c in cases if "skipped" in c}
    assert "needs GPU" in skipped["tokamax triton"]
    # bfloat16 against the float32 reference: close, and every error a real number.
    errors = [c["max_error"] for c in cases if c.get("max_error") is not None]
    assert errors and max(errors) < 0.05
    assert "| attention | 64 |" in (tmp_path / "results.md").read_text()
