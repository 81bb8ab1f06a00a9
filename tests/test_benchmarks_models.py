"""The model benchmark on the smoke presets: the PyTorch twin is the zoo LM, and one sweep
through the real CLI writes the expected fields, tables and plot."""

import dataclasses
import importlib.util
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import models, models_report, train_steps
from zoo.models.transformer import TransformerLM

HAS_TORCH = importlib.util.find_spec("torch") is not None
TORCH = ("eager",) if HAS_TORCH else ()  # torch.compile takes a minute: the benchmark's job
# Show-Attend-Tell's CNN takes the longest to compile: its own test below is marked slow.
SMOKE = [
    models.Case("lm/smoke", 3, ("reference",), TORCH, attention_cost=True),
    models.Case("rnnsearch/smoke", 3),
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "sweep", lambda mode: SMOKE)
        # In process (one import of jax) and without the 2048^2 matmul roofline.
        patch.setattr(models, "_spawn", lambda case, repeats, timeout: _worker(case, repeats))
        models.main(["--out", str(out), "--repeats", "1"])
    return out, json.loads((out / "results.json").read_text())


def _worker(case, repeats):
    import benchmarks.harness

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(benchmarks.harness, "dense_matmul", lambda options: {"jnp.dot": 100.0})
        return models.worker(case, repeats, warmup=1)


@pytest.mark.slow
def test_sweep_records_every_case_with_its_fields(sweep):
    out, results = sweep
    assert [c["case"]["model"] for c in results["cases"]] == [c.model for c in SMOKE]
    assert results["flops_formula"] and results["machine"]["cores"] >= 1
    for entry in results["cases"]:
        assert "error" not in entry, entry.get("error")
        zoo = [name for name in entry["impls"] if name.startswith("zoo")]
        assert zoo and entry["tokens_per_step"] > 0
        for name in zoo:
            r = entry["impls"][name]
            assert r["median_s"] > 0 and r["samples"] >= 1
            assert r["tokens_per_s"] == pytest.approx(entry["tokens_per_step"] / r["median_s"])
            assert r["compile_s"] > 0 and r["first_call_compiles"] == 1
            # Item 5: the second same-shape call hit the jit cache.
            assert r["second_call_compiles"] == 0 and r["cache_size"] == 1
    lm, rnnsearch = results["cases"]
    assert lm["impls"]["zoo.reference"]["kernel"] == "reference"
    # attention_cost: the same model once more with attention skipped.
    assert lm["impls"]["zoo.none"]["kernel"] == "none"
    assert lm["impls"]["zoo.none"]["parameters"] == lm["impls"]["zoo.reference"]["parameters"]
    assert lm["impls"]["zoo.reference"]["of_matmul"] == pytest.approx(
        lm["impls"]["zoo.reference"]["model_gflops"] / 100.0
    )
    _assert_no_kernel_choice(rnnsearch)
    table = (out / "results.md").read_text()
    assert "none (additive attention only)" in table and "did not recompile" in table
    assert (out / "models.png").stat().st_size > 1000


def _assert_no_kernel_choice(entry):
    # No kernel choice in the recurrent models: one "zoo" row, no kernel, no FLOP count.
    assert list(entry["impls"]) == ["zoo"] and entry["impls"]["zoo"]["kernel"] is None
    assert entry["flops_per_step"] is None


@pytest.mark.slow
def test_show_attend_tell_step_compiles_once():
    entry = _worker(models.Case("sat/smoke", 2), repeats=1)
    _assert_no_kernel_choice(entry)
    r = entry["impls"]["zoo"]
    assert r["compile_s"] > 0 and r["second_call_compiles"] == 0 and r["cache_size"] == 1
    assert r["tokens_per_s"] == pytest.approx(entry["tokens_per_step"] / r["median_s"])


@pytest.mark.slow
def test_torch_twin_has_the_zoo_parameters_and_loss(sweep):
    pytest.importorskip("torch")
    _, results = sweep
    lm = results["cases"][0]
    zoo, twin = lm["impls"]["zoo.reference"], lm["impls"]["torch.eager"]
    assert twin["parameters"] == zoo["parameters"] == lm["parameters"]
    # Same weights, same batch: the same first loss.
    assert twin["first_loss"] == pytest.approx(zoo["first_loss"], abs=1e-5)
    assert twin["mode"] == "eager" and twin["second_call_new_graphs"] == 0
    # Both sides skip the same thing: equal first losses without attention too, and they
    # differ from the losses with it.
    zoo_none, twin_none = lm["impls"]["zoo.none"], lm["impls"]["torch.eager.none"]
    assert twin_none["first_loss"] == pytest.approx(zoo_none["first_loss"], abs=1e-5)
    assert zoo_none["first_loss"] != pytest.approx(zoo["first_loss"], abs=1e-5)
    verdicts = models_report.targets(results)
    assert any("zoo.reference" in line and "target >= 1.0x" in line for line in verdicts)
    # Not a kernel: no verdict.
    assert {v["impl"] for v in models_report.target_verdicts(results)} == {"zoo.reference"}
    split = models_report.attention_split(results)
    assert any(line.startswith("| lm/smoke B=3 | zoo.reference |") for line in split)


def test_attention_split_by_hand():
    impls = {
        "zoo.reference": {"median_s": 0.5},
        "zoo.none": {"median_s": 0.3},
        "torch.eager": {"median_s": 0.4},
        "torch.eager.none": {"median_s": 0.3},
    }
    lines = models_report.attention_split(
        {"cases": [{"case": {"model": "lm/x", "batch_size": 2}, "impls": impls}]}
    )
    # zoo: attention 0.2 s against torch's 0.1 s (0.50x), rest 0.3 s against 0.3 s (1.00x).
    assert "| lm/x B=2 | zoo.reference | 500.0 | 200.0 | 0.50x | 300.0 | 1.00x |" in lines
    assert "| lm/x B=2 | torch.eager | 400.0 | 100.0 | | 300.0 | |" in lines
    assert models_report.attention_split({"cases": [{"case": {}, "impls": {}}]}) == []


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
    ids=["vaswani", "rotary-mqa"],  # the GPT layout: the sweep's equal first losses
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
    # Without attention (the benchmark's attention_cost variants) they still agree.
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
        models.Case("sat/tiny", 4, torch=("eager",))
    with pytest.raises(ValueError, match="kernels must be among"):
        models.Case("lm/tiny", 4, ("flash",))
    with pytest.raises(ValueError, match="no attention kernel choice"):
        train_steps.make_zoo_step("rnnsearch/smoke", batch_size=2, kernel="blockwise")
