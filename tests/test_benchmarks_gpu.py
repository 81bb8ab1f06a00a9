"""The GPU check: its tables from rows, the roofline it asks for, and (slow) its dry run,
every step of benchmarks/gpu_check.sh at tiny sizes on CPU."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu, report

ROOT = Path(__file__).resolve().parents[1]


def test_cases_cover_every_part_and_the_gpu_roofline_fits_a_gpu():
    names = [c["name"] for c in gpu.cases(argparse.Namespace(mode="quick", repeats=3), [])]
    assert names == ["attention T1024", "attention T4096", "attention T16384", "additive T256",
                     "additive T1024", "lm train step"]  # fmt: skip
    assert (
        gpu.ROOFLINE["quick"] == {"n": 8192, "dtype": "bfloat16"} and "dry-run" not in gpu.ROOFLINE
    )
    results = {"machine": {"date": "d", "processor": "p", "isa": "i", "cores": 16,
                           "accelerator": "1 x H200", "versions": {}},
               "roofline": {"dense_matmul_gflops": {"jnp.dot": 7e5}, "n": 8192, "dtype": "bfloat16"}}  # fmt: skip
    assert "Dense bfloat16 8192^2 matmul in the same run: jnp.dot 700000 GFLOP/s" in report.machine(
        results
    )


def test_tables_show_times_errors_and_why_a_peer_did_not_run():
    timing = {"median_s": 2e-3, "samples": 2, "clean_samples": 2, "mean_contention": 0.0}
    rows: list[dict[str, Any]] = [
        {"part": "attention", "T": 64, "causal": True, "pass": "fwd", "flops": 1e9,
         "impls": {"zoo dispatch": {**timing, "tflops": 0.5, "max_error": 0.004},
                   "torch sdpa": {"skipped": "ModuleNotFoundError: torch"}}},
        {"error": "timed out after 600 s", "case": {"name": "attention T16384"}},
    ]  # fmt: skip
    text = "\n".join(line for table in gpu.TABLES for line in table.markdown(rows))
    assert "| 64 | causal | fwd | 2.000 / 0.5 / 4.0e-03 |" in text
    assert "| torch sdpa, from attention T=64 on | ModuleNotFoundError: torch |" in text
    assert "| attention T16384 | timed out after 600 s |" in text
    assert list(gpu.PLOTS[0].points(rows[0])) == [("fwd causal", "zoo dispatch", 64, 0.5)]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "devices:" in done.stdout and "jax " in done.stdout  # the versions came first
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["benchmark"], results["mode"]) == ("gpu", "dry-run")
    assert {"options", "machine", "roofline", "targets", "elapsed_s"} <= set(results)
    assert results["machine"]["versions"]["jax"]
    rows = results["rows"]
    assert not [r for r in rows if "error" in r]
    timed = {
        (r["part"], name) for r in rows for name, i in r.get("impls", {}).items() if "median_s" in i
    }
    for name in ("zoo dispatch", "zoo blockwise", "jax.nn xla"):
        assert ("attention", name) in timed
    assert {("additive", "pallas"), ("additive", "blockwise (lax)")} <= timed
    (step,) = [r for r in rows if r["part"] == "lm"]
    assert step["tokens_per_s"] > 0 and step["mfu"] > 0
    # The GPU peers cannot run on CPU: each is reported with the reason, not dropped.
    skipped = {
        n: i["skipped"] for r in rows for n, i in r.get("impls", {}).items() if "skipped" in i
    }
    assert "needs GPU" in skipped["tokamax triton"]
    # bfloat16 against the float32 reference: close, and every error a real number.
    errors = [i["max_error"] for r in rows for i in r.get("impls", {}).values() if "max_error" in i]
    assert errors and max(errors) < 0.05
    text = (tmp_path / "results.md").read_text()
    assert "| 64 | full | fwd |" in text and "## Accelerator (GPU) check" in text
    assert (tmp_path / "attention.png").read_bytes().startswith(b"\x89PNG")
