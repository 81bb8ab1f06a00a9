"""The model benchmark on the smoke presets: the PyTorch twin is the zoo LM, one smoke run
through the harness writes the expected fields, tables, targets and plot, and the tables and
targets read hand-made rows as they should."""

import argparse
import dataclasses
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import harness, models, train_steps
from zoo.models.transformer import TransformerLM

HAS_TORCH = importlib.util.find_spec("torch") is not None
COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks/results/models/quick/results.json"
MATMUL = {"jnp.dot": 100.0}  # GFLOP/s: no 2048^2 matmul roofline in the tests


def _in_process(function, argument, *, timeout, env=None):
    """``harness.spawn`` without the fresh process, the argument and result through JSON."""
    assert timeout > 0
    if function == "benchmarks.harness:dense_matmul":
        return MATMUL
    module, name = function.split(":")
    result = getattr(importlib.import_module(module), name)(json.loads(json.dumps(argument)))
    return json.loads(json.dumps(result))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness, "spawn", _in_process)
        patch.setattr(harness, "dense_matmul", lambda options: MATMUL)
        harness.main("benchmarks.models", ["--mode", "smoke", "--out", str(out), "--repeats", "1"])
    return out, json.loads((out / "results.json").read_text())


def _no_kernel_choice(row):
    # No kernel choice in the recurrent models: one "zoo" step, no kernel, no FLOP count.
    assert list(row["impls"]) == ["zoo"] and row["impls"]["zoo"]["kernel"] is None
    assert row["flops_per_step"] is None


@pytest.mark.slow
def test_smoke_run_records_every_case_with_its_fields(smoke):
    out, results = smoke
    assert [r["case"]["model"] for r in results["rows"]] == ["lm/smoke", "rnnsearch/smoke"]
    assert results["benchmark"] == "models" and results["machine"]["cores"] >= 1
    for row in results["rows"]:
        assert "error" not in row, row.get("error")
        assert row["tokens_per_step"] > 0 and row["matmul_gflops"] == MATMUL
        for name in (n for n in row["impls"] if n.startswith("zoo")):
            r = row["impls"][name]
            assert r["median_s"] > 0 and r["samples"] >= 1
            assert r["tokens_per_s"] == pytest.approx(row["tokens_per_step"] / r["median_s"])
            assert r["compile_s"] > 0 and r["first_call_compiles"] == 1
            # The second same-shape call hit the jit cache.
            assert r["second_call_compiles"] == 0 and r["cache_size"] == 1
    lm, rnnsearch = results["rows"]
    zoo, none = lm["impls"]["zoo.reference"], lm["impls"]["zoo.none"]
    assert zoo["kernel"] == "reference" and none["kernel"] == "none"  # attention skipped
    assert none["parameters"] == zoo["parameters"] == lm["parameters"]
    assert zoo["of_matmul"] == pytest.approx(zoo["model_gflops"] / 100.0)
    _no_kernel_choice(rnnsearch)
    checks = {t["name"]: t for t in results["targets"]}
    assert checks[models.RECOMPILE.name]["verdict"] == "met"
    assert checks[models.RECOMPILE.name]["case"] == "3 zoo steps"
    assert (checks[models.SPEED.name]["measured"] is None) != HAS_TORCH
    text = (out / "results.md").read_text()
    assert "none (additive)" in text and "| lm/smoke B=3 | 5,904 | zoo.reference |" in text
    assert (out / "models.png").stat().st_size > 1000 and "![models](models.png)" in text


@pytest.mark.slow
def test_show_attend_tell_step_compiles_once():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness, "dense_matmul", lambda options: MATMUL)
        row = models.measure({**models.case("sat/smoke", 2), "repeats": 1}, warmup=1)
    _no_kernel_choice(row)
    r = row["impls"]["zoo"]
    assert r["compile_s"] > 0 and r["second_call_compiles"] == 0 and r["cache_size"] == 1
    assert r["tokens_per_s"] == pytest.approx(row["tokens_per_step"] / r["median_s"])


@pytest.mark.slow
def test_torch_twin_has_the_zoo_parameters_and_loss(smoke):
    pytest.importorskip("torch")
    _, results = smoke
    lm = results["rows"][0]
    zoo, twin = lm["impls"]["zoo.reference"], lm["impls"]["torch.eager"]
    assert twin["parameters"] == zoo["parameters"] == lm["parameters"]
    # Same weights, same batch: the same first loss.
    assert twin["first_loss"] == pytest.approx(zoo["first_loss"], abs=1e-5)
    assert twin["mode"] == "eager" and twin["second_call_recompiled"] is False
    # Both sides skip the same thing: equal first losses without attention too, and they
    # differ from the losses with it.
    zoo_none, twin_none = lm["impls"]["zoo.none"], lm["impls"]["torch.eager.none"]
    assert twin_none["first_loss"] == pytest.approx(zoo_none["first_loss"], abs=1e-5)
    assert zoo_none["first_loss"] != pytest.approx(zoo["first_loss"], abs=1e-5)
    # Not a kernel: no verdict for the step without attention.
    (speed,) = [t for t in results["targets"] if t["name"] == models.SPEED.name]
    assert speed["case"] == "lm/smoke B=3, zoo.reference vs torch.eager"
    assert speed["measured"] == pytest.approx(zoo["tokens_per_s"] / twin["tokens_per_s"])
    assert [r["impl"] for r in models.split(results["rows"])] == ["zoo.reference", "torch.eager"]


def _timed(median_s, clean=1):
    return {"median_s": median_s, "min_s": median_s, "tokens_per_s": 1 / median_s,
            "samples": 1, "clean_samples": clean, "mean_contention": 0.0}  # fmt: skip


HAND = {
    "case": {"name": "lm/x B=2", "model": "lm/x", "batch_size": 2},
    "matmul_gflops": MATMUL,
    "impls": {
        "zoo.reference": {**_timed(0.5), "kernel": "reference"},
        "zoo.blockwise": {**_timed(0.2, clean=0), "kernel": "blockwise"},
        "zoo.none": {**_timed(0.3), "kernel": "none"},
        "torch.eager": _timed(0.4),
        "torch.compile": {**_timed(0.25), "compile_error": None},
        "torch.eager.none": _timed(0.3),
    },
}


def test_attention_split_by_hand():
    lines = models.TABLES[2].markdown([HAND])
    # zoo: attention 0.2 s against torch's 0.1 s (0.50x), rest 0.3 s against 0.3 s (1.00x).
    assert "| lm/x B=2 | zoo.reference | 500.0 | 200.0 | 0.50x | 300.0 | 1.00x |" in lines
    assert "| lm/x B=2 | torch.eager | 400.0 | 100.0 |  | 300.0 |  |" in lines
    # Faster without attention than the rest alone: no attention ratio to divide by.
    assert "| lm/x B=2 | zoo.blockwise | 200.0 | -100.0 |  | 300.0 | 1.00x |" in lines
    assert models.split([{"case": {}, "impls": {}}]) == []


def test_targets_and_the_steps_table_by_hand():
    steps = [HAND, {"case": {"name": "rnnsearch/x B=2"}, "error": "killed (out of memory?)"}]
    lines = models.TABLES[0].markdown(steps)
    # The faster twin is torch.compile (0.25 s): 0.50x and 1.25x; none for zoo.none.
    assert any(line.startswith("| lm/x B=2 |  | zoo.reference | reference | 500.0 |")
               and "| 100 | 0.50x |" in line for line in lines)  # fmt: skip
    assert any("| zoo.none | skipped (values only) |" in line and "x |" not in line
               for line in lines)  # fmt: skip
    assert "| rnnsearch/x B=2 |  |  |  | error: killed (out of memory?) |" + "  |" * 9 in lines
    checks = models.targets(steps)
    assert [(t["case"], t["measured"], t["verdict"], t["contended"]) for t in checks] == [
        ("lm/x B=2, zoo.reference vs torch.compile", 0.5, "missed", False),
        ("lm/x B=2, zoo.blockwise vs torch.compile", 1.25, "met", True),  # all contended
    ]
    assert checks[0]["note"] == "fastest steps 0.50x"
    assert models.targets([])[0]["verdict"] == "not measured"
    zoo = {"second_call_compiles": 1, "cache_size": 2}
    (_, recompile) = models.targets([{"case": {"name": "c"}, "impls": {"zoo": zoo}}])
    assert (recompile["verdict"], recompile["measured"]) == ("missed", 1)
    assert recompile["note"].endswith(": c, zoo")


def test_cases_of_each_mode():
    def names(mode):
        args = argparse.Namespace(mode=mode, repeats=None, timeout=60.0)
        return [(c["name"], c["repeats"]) for c in models.cases(args, [])]

    quick = [("lm/tiny B=12", 5), ("lm/shakespeare_char B=12", 5), ("rnnsearch/tiny B=64", 5),
             ("sat/tiny B=48", 5)]  # fmt: skip
    assert names("quick") == quick
    assert names("full") == [(n, 10) for n, _ in quick[:2]] + [
        ("lm/shakespeare_char B=64", 10), *((n, 10) for n, _ in quick[2:])]  # fmt: skip
    assert [n for n, _ in names("smoke")] == ["lm/smoke B=3", "rnnsearch/smoke B=3"]


def test_the_report_imports_it_without_torch_or_experiments():
    code = "import sys, benchmarks.models; print(sorted({'torch', 'experiments', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_committed_results_store_the_targets_their_rows_give():
    results = json.loads(COMMITTED.read_text())
    assert results["benchmark"] == "models" and results["roofline"]["dense_matmul_gflops"]
    assert results["targets"] == models.targets(results["rows"])


def test_lm_flops_per_token_by_hand():
    config, _, T = train_steps.lm_config("smoke")
    D, F, L, V, M = config.model_dim, config.ff_dim, config.num_layers, 65, config.max_length
    # Per layer: W^Q W^K W^V W^O, the feed-forward with biases, two LayerNorms.
    P = V * D + L * (4 * D * D + 2 * D * F + F + D + 4 * D) + 2 * D  # + final LayerNorm
    assert P + M * D == 5904
    assert train_steps.lm_flops_per_token(config, T) == 6 * P + 12 * L * D * T


@pytest.mark.parametrize(
    "changes",
    [
        dict(
            positions="sinusoidal",
            pre_norm=False,
            tie_embeddings=False,
            attention_bias=True,
            activation="relu",
            init_std=None,
            scale_embeddings=True,
        ),
        dict(positions="rotary", num_kv_heads=1),
    ],
    ids=["vaswani", "rotary-mqa"],  # the GPT layout: the smoke run's equal first losses
)
def test_torch_twin_computes_the_zoo_logits(changes):
    torch = pytest.importorskip("torch")
    from benchmarks import torch_lm

    config, _, _ = train_steps.lm_config("smoke")
    config = dataclasses.replace(config, vocab_size=37, **changes)
    zoo = TransformerLM(config, rngs=nnx.Rngs(0))
    twin = torch_lm.TorchLM(config).eval()
    torch_lm.load_zoo_parameters(twin, zoo)
    tokens = np.random.default_rng(0).integers(1, 37, (3, 11)).astype(np.int32)
    expected = np.asarray(nnx.jit(lambda model, t: model(t))(zoo, jnp.asarray(tokens)))
    with torch.no_grad():
        got = twin(torch.from_numpy(tokens).long()).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
    # Without attention (the benchmark's attention_cost steps) they still agree.
    zoo = TransformerLM(config, kernel=train_steps.values_only, rngs=nnx.Rngs(0))
    torch_lm.without_attention(twin)
    expected = np.asarray(nnx.jit(lambda model, t: model(t))(zoo, jnp.asarray(tokens)))
    with torch.no_grad():
        got = twin(torch.from_numpy(tokens).long()).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


def test_torch_twin_refuses_a_different_model():
    pytest.importorskip("torch")
    from benchmarks import torch_lm

    config, _, _ = train_steps.lm_config("smoke")
    zoo = TransformerLM(config, rngs=nnx.Rngs(0))
    twin = torch_lm.TorchLM(dataclasses.replace(config, attention_bias=True))
    with pytest.raises(
        ValueError, match=r"torch parameters without a zoo counterpart: .*query\.bias"
    ):
        torch_lm.load_zoo_parameters(twin, zoo)
    twin = torch_lm.TorchLM(dataclasses.replace(config, ff_dim=48))
    with pytest.raises(
        ValueError, match=r"feed_forward\.hidden\.bias \(32,\) has no torch twin: .* is \(48,\)"
    ):
        torch_lm.load_zoo_parameters(twin, zoo)


def test_cases_reject_what_the_models_do_not_have():
    with pytest.raises(ValueError, match="only the LM has a PyTorch twin"):
        models.case("sat/tiny", 4, torch=("eager",))
    with pytest.raises(ValueError, match="kernels must be among"):
        models.case("lm/tiny", 4, ("flash",))
    with pytest.raises(ValueError, match="no attention kernel choice"):
        train_steps.make_zoo_step("rnnsearch/smoke", batch_size=2, kernel="blockwise")
