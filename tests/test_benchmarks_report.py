"""The harness and the report: targets as data, tables and plots from specs, one schema, a
committed ``benchmarks/RESULTS.md`` that is exactly what the committed results give."""

import argparse
import json
import re
import sys
import types
from pathlib import Path

import pytest

from benchmarks import harness, kernels, report
from benchmarks.harness import Column, Plot, Table, Target

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMITTED = ROOT / "benchmarks" / "RESULTS.md"
_LINE = re.compile(r"^- \*\*(met|missed|not measured)\*\*: (.*)$")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def test_targets_decide_their_verdicts():
    at_least = Target("speed-up", 2.0)
    assert at_least.check(2.0)["verdict"] == "met"
    assert at_least.check(1.99)["verdict"] == "missed"
    assert at_least.check(None)["verdict"] == "not measured"
    at_most = Target("memory", 1024, "MiB", at_least=False)
    assert at_most.check(1025.0, case="T=32768")["verdict"] == "missed"
    assert at_most.check(10.0)["case"] == "" and at_most.check(10.0)["verdict"] == "met"


def test_race_interleaves_and_summarizes():
    order: list[str] = []
    runs = {name: (lambda name=name: order.append(name)) for name in "abc"}
    timed = harness.race(runs, repeats=3, budget_s=10.0)
    assert set(timed) == set("abc")
    # A B C A B C, never A A A; each short call run once untimed right before its timed run.
    assert order[:12] == list("aabbccaabbcc")
    for samples in timed.values():
        summary = samples.summary()
        assert summary["samples"] >= 1 and summary["min_s"] <= summary["median_s"]


def test_spawn_reports_a_failing_worker_instead_of_raising():
    result = harness.spawn("benchmarks.harness:no_such_function", {}, timeout=60)
    assert "no_such_function" in result["error"]


FAKE = types.ModuleType("benchmarks_fake_measurement")
FAKE.NAME, FAKE.TITLE, FAKE.MODES = "fake", "A fake measurement", {"quick": "two cases"}
FAKE.cases = lambda args, rows: iter(
    [{"name": "one", "x": 1, "in_process": True}, {"name": "two", "x": 2, "in_process": True}]
)
FAKE.measure = lambda case: {"y": 10.0 * case["x"]}
FAKE.targets = lambda rows: [Target("y of two", 15.0).check(rows[-1]["y"], case="two")]
FAKE.TABLES = (
    Table("ys", [Column("x", lambda r: r["case"]["x"]), Column("y", lambda r: r["y"], "{:.1f}")]),
)
FAKE.PLOTS = (Plot("y.png", lambda r: [("all", "y", r["case"]["x"], r["y"])], "x", "y"),)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    sys.modules[FAKE.__name__] = FAKE
    out = tmp_path_factory.mktemp("fake")
    results = harness.run(FAKE, argparse.Namespace(mode="quick", out=str(out)), out)
    return out, results


def test_a_run_writes_one_schema_with_its_machine_and_roofline(fake_run):
    out, results = fake_run
    saved = json.loads((out / "results.json").read_text())
    assert saved == results
    assert set(saved) == {"benchmark", "mode", "options", "machine", "roofline", "rows",
                          "targets", "elapsed_s"}  # fmt: skip
    assert {"processor", "isa", "cores", "accelerator", "versions", "date"} <= set(saved["machine"])
    assert saved["roofline"]["dense_matmul_gflops"]["jnp.dot"] > 0
    assert [r["y"] for r in saved["rows"]] == [10.0, 20.0]
    assert saved["targets"][0]["verdict"] == "met" and saved["targets"][0]["measured"] == 20.0


def test_a_run_renders_its_tables_targets_and_plots(fake_run):
    out, _ = fake_run
    text = (out / "results.md").read_text()
    assert "| x | y |\n|---|---|\n| 1 | 10.0 |\n| 2 | 20.0 |" in text
    assert "- **met**: y of two >= 15.00x: 20.00x (two)" in text
    assert (out / "y.png").read_bytes().startswith(b"\x89PNG")
    assert "![y](y.png)" in text


def test_headline_groups_checks_by_target():
    target = Target("ratio", 1.0)
    checks = [target.check(v, case=c) for v, c in ((0.5, "a"), (2.0, "b"), (3.0, "c"))]
    (line,) = report.headline(checks, "here")
    assert line.startswith("- **missed**: ratio >= 1.00x: in 2 of 3 cases; 0.50x .. 3.00x")
    (line,) = report.headline([target.check(None)], "here")
    assert line == "- **not measured**: ratio >= 1.00x [here]"


def test_runs_prefer_full_then_targets_then_quick(tmp_path):
    for mode in ("quick", "targets"):
        (tmp_path / "kernels" / mode).mkdir(parents=True)
        (tmp_path / "kernels" / mode / "results.json").write_text("{}")
    assert report.find_runs(tmp_path)["kernels"].parent.name == "targets"
    assert report.find_runs(tmp_path)["decoding"] is None


# The kernel measurement, in the driver process, on a tiny case (no torch in this environment).


@pytest.fixture(scope="module")
def kernel_row():
    impls = ["zoo.auto", "zoo.blockwise", "zoo.reference", "tokamax.xla_chunked", "jax.nn"]
    case = {**kernels.case(40, causal=True, pass_="fwd+bwd", N=3, K=1, H=8), "impls": impls}
    case |= {"repeats": 2, "skipped": {"flax.nnx": "skipped: GQA"}}
    row = kernels.measure(case)
    memory = kernels.measure({**case, "memory": "zoo.auto"})
    return [{**row, "case": case}, {**memory, "case": {**case, "memory": "zoo.auto"}}]


def test_kernel_rows_have_every_peer_and_the_block_gemm_roofline(kernel_row):
    row, memory = kernel_row
    assert set(row["impls"]) == set(row["case"]["impls"])
    for r in row["impls"].values():
        assert r["median_s"] > 0 and r["compile_s"] > 0 and r["clean_samples"] <= r["samples"]
    assert row["block_gemm"]["block"] == [40, 40] and row["block_gemm"]["gflops"]["xla"] > 0
    assert memory["peak_bytes"] >= 0 and memory["xla_temp_bytes"] > 0
    (merged,) = kernels.merged(kernel_row)
    assert "MiB" in kernels.cell(merged, "zoo.auto") and "skip" in kernels.cell(merged, "flax.nnx")


def _target_row(kernel_row: list, gemm: dict[str, float]) -> dict:
    """A float32 B=1 N=8 H=64 row (the targets' shape): torch twice as fast as the zoo,
    tokamax half as fast."""
    row = dict(kernel_row[0])
    row["case"] = {**kernels.case(1024, causal=True, pass_="fwd"), "impls": []}
    row["block_gemm"] = {"block": [256, 256], "gflops": gemm}
    timing = {"samples": 3, "clean_samples": 3, "mean_contention": 0.0}
    row["impls"] = {
        "zoo.auto": {"median_s": 1.0, **timing},
        "torch.sdpa": {"median_s": 0.5, **timing},  # twice as fast: missed
        "tokamax.xla_chunked": {"median_s": 2.0, **timing},  # half as fast: met
    }
    return row


def test_kernel_targets_name_the_cpu_and_give_the_block_gemm_reason(kernel_row):
    row = _target_row(kernel_row, {"xla": 100.0, "torch": 200.0})
    checks = {t["name"].split(" on ")[0]: t for t in kernels.targets([row])}
    torch, tokamax = (
        checks["zoo GFLOP/s / torch.sdpa's"],
        checks["zoo GFLOP/s / tokamax.xla_chunked's"],
    )
    assert (torch["verdict"], torch["measured"]) == ("missed", 0.5)
    assert "xla 100, torch 200; torch's is faster" in torch["note"]
    assert (tokamax["verdict"], tokamax["measured"], tokamax["note"]) == ("met", 2.0, "")
    assert row["cpu"] in torch["name"] and "jax.nn" not in " ".join(checks)  # T < 4,096
    # Where XLA's block GEMM is the faster one, the reason is elsewhere, and says so.
    row = _target_row(kernel_row, {"xla": 300.0, "torch": 200.0})
    (torch,) = [t for t in kernels.targets([row]) if "torch.sdpa" in t["name"]]
    assert torch["verdict"] == "missed" and "the time is outside its matmuls" in torch["note"]


def test_redraw_checks_the_stored_targets_again_and_measures_nothing(kernel_row, tmp_path):
    row = _target_row(kernel_row, {"xla": 100.0, "torch": 200.0})
    stored = {"benchmark": "kernels", "mode": "quick", "options": {},
              "machine": harness.machine_info(), "roofline": {"dense_matmul_gflops": {}},
              "rows": [row], "targets": []}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(stored))
    redrawn = harness.main("benchmarks.kernels", ["--redraw", "--out", str(tmp_path)])
    assert redrawn["rows"] == [row] and len(redrawn["targets"]) == 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["targets"] == redrawn["targets"]
    assert "missed" in (tmp_path / "results.md").read_text()
    with pytest.raises(SystemExit, match=r"no .*results.json to redraw"):
        harness.main("benchmarks.kernels", ["--redraw", "--out", str(tmp_path / "none")])


# The committed report.


def test_every_committed_link_exists_and_every_plot_is_linked():
    text = COMMITTED.read_text()
    links = _IMAGE.findall(text)
    assert links
    for link in links:
        assert (COMMITTED.parent / link).is_file(), link
    linked = {(COMMITTED.parent / link).resolve() for link in links}
    for path in report.find_runs(RESULTS).values():
        for png in path.parent.glob("*.png") if path else ():
            assert png.resolve() in linked, png


def test_committed_report_is_what_the_command_writes():
    generated, top = report.report(RESULTS, COMMITTED)
    assert COMMITTED.read_text() == generated, "benchmarks/RESULTS.md is stale: run make results"
    assert report.report(RESULTS, COMMITTED)[0] == generated  # nothing of the moment it runs
    assert all(_LINE.match(line) for line in top) and len(top) >= 5


def test_the_readme_quotes_the_committed_headline():
    readme = (ROOT / "README.md").read_text()
    _, top = report.report(RESULTS, COMMITTED)
    assert report.with_headline(readme, top) == readme, "the README's headline is stale"
    with pytest.raises(ValueError, match=r"no .* block"):
        report.with_headline("no markers here", [])
