"""The decoding and scaling benchmarks on their smoke settings: tiny shapes, one case each."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import decoding, scaling

SMOKE = decoding.SETTINGS["smoke"]


@pytest.fixture(scope="module")
def decoder():
    """One smoke model decoding both ways (reference kernel): compiled once for every test."""
    return decoding.Decoders(decoding._model(SMOKE, "reference"), bucket=SMOKE.bucket)


@pytest.fixture(scope="module")
def prompt(decoder):
    return decoding._prompt(SMOKE, decoder.config.vocab_size)


def _spawn_in_process(module, args, timeout):
    """``benchmarks.timing.spawn`` without the fresh process (a few seconds each, here)."""
    assert module == "benchmarks.scaling" and timeout > 0
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        scaling.main(args)
    return json.loads(printed.getvalue().splitlines()[-1])


@pytest.fixture(scope="module")
def scaling_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scaling, "spawn", _spawn_in_process)
        # The workers run inside this test process, whose resident memory after the tests
        # before it says nothing of the case's: a budget no run here comes near.
        args = ["--mode", "smoke", "--out", str(out), "--memory-limit-gib", "1000"]
        return scaling.main(args), out


def test_cached_decoding_gives_the_recomputed_tokens_and_teacher_forcing_agrees(decoder, prompt):
    N = SMOKE.lengths[0]
    # The smoke length crosses bucket boundaries: more than one padded length is compiled.
    assert len(decoder._segments(SMOKE.prompt_length, N)) >= 2
    cached = np.asarray(decoder.cached(decoder.state, prompt, N, None))
    recomputed = np.asarray(decoder.recompute(prompt, N))
    assert cached.shape == (SMOKE.batch_size, N)
    np.testing.assert_array_equal(cached, recomputed)
    # Independently: each token is the argmax (end token excluded) of one forward pass.
    sequence = jnp.concatenate([prompt, jnp.asarray(cached[:, :-1])], axis=1)
    forward = jax.jit(lambda state, x: nnx.merge(decoder.graphdef, state)(x))
    logits = decoding._without_end(forward(decoder.state, sequence))[:, SMOKE.prompt_length - 1 :]
    np.testing.assert_array_equal(cached, np.asarray(jnp.argmax(logits, axis=-1)))
    assert not np.any(cached == decoding.EOS_ID)


def test_decoding_smoke_writes_every_field(decoder, prompt, tmp_path):
    results = decoding.run(SMOKE, decoder, decoder, prompt, out=tmp_path, mode="smoke")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert {"machine", "setting", "model", "recompute", "lengths", "beams", "target"} <= set(saved)
    assert saved["model"]["parameters"] > 0
    (row,) = saved["lengths"]
    assert row["generated"] == SMOKE.lengths[0]
    assert row["tokens_agree"] is True and row["first_difference"] is None
    for name in ("kv_cache", "recompute"):
        assert row[name]["tokens_per_s"] > 0
        assert row[name]["samples"] >= 1
    assert row["speedup"] == pytest.approx(
        row["recompute"]["median_s"] / row["kv_cache"]["median_s"]
    )
    runs = saved["beams"]["runs"]
    assert [r["beam_size"] for r in runs] == [None, *SMOKE.beam_sizes]
    assert all(r["per_token_ms"] > 0 for r in runs)
    assert runs[0]["relative_to_greedy"] == 1.0
    # The smoke run does not reach 1,024 tokens: no verdict, and the report says so.
    assert saved["target"] == {"generated": 1024, "speedup": None, "met": None}
    assert "not measured" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "decoding.png").stat().st_size > 0


def test_decoding_target_verdict():
    def results(speedup):
        return {"lengths": [{"generated": 1024, "speedup": speedup}]}

    assert decoding.target(results(12.0))["met"] is True
    assert decoding.target(results(9.0))["met"] is False


@pytest.mark.slow
def test_scaling_smoke_writes_every_field(scaling_results):
    results, out = scaling_results
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert {"machine", "mode", "sweep", "budget_gib", "cases", "target"} <= set(saved)
    assert [e["case"]["kernel"] for e in saved["cases"]] == list(scaling.KERNELS)
    for entry in saved["cases"]:
        assert entry["status"] == "ok", entry
        # Memory from each kernel's own worker, speed from one worker timing both.
        assert entry["peak_bytes"] >= entry["resident_bytes"] > 0
        assert entry["planned_peak_bytes"] >= entry["resident_bytes"]
        assert entry["parameters"] > 0 and np.isfinite(entry["first_loss"])
        assert entry["interleaved_with"] == list(scaling.KERNELS)
        assert entry["samples"] >= 1
        assert entry["tokens_per_s"] == pytest.approx(16 / entry["median_s"])
    # Same parameters and batch: both kernels compute the same first loss.
    reference, blockwise = (e["first_loss"] for e in saved["cases"])
    assert reference == pytest.approx(blockwise, rel=1e-5)
    # Nothing ran out of memory, so the sweep cannot decide the target.
    assert saved["target"]["met"] is None
    assert "not decided" in (out / "results.md").read_text()
    assert (out / "scaling.png").stat().st_size > 0


def test_scaling_worker_does_not_run_a_step_over_budget():
    case = scaling.Case(context=8, width=32, kernel="reference", layers=1)
    result = scaling.worker_memory(case, budget_bytes=1, timing=None)
    assert result["status"] == "out of memory (XLA's plan)"
    assert result["planned_peak_bytes"] > result["resident_bytes"] > 1
    assert "peak_bytes" not in result and "tokens_per_s" not in result


def _entry(context, kernel, status="ok"):
    entry = {"case": {"context": context, "width": 128, "kernel": kernel}, "status": status}
    return entry | ({"tokens_per_s": 1.0, "peak_bytes": 2**30} if status == "ok" else {})


@pytest.mark.parametrize(
    ("reference_fits", "blockwise_fits", "ratio", "met"),
    [(2048, 16384, 8.0, True), (2048, 8192, 4.0, False), (16384, 16384, None, None)],
)
def test_scaling_target_compares_the_longest_contexts_that_fit(
    reference_fits, blockwise_fits, ratio, met
):
    contexts = (256, 2048, 4096, 8192, 16384)
    cases = [
        _entry(t, kernel, "ok" if t <= fits else "out of memory (measured)")
        for t in contexts
        for kernel, fits in (("reference", reference_fits), ("blockwise", blockwise_fits))
    ]
    sweep = {"contexts": contexts, "width": 128, "widths": (), "context": 256}
    sweep |= {"layers": 4, "batch_size": 1}
    results = {"sweep": sweep, "budget_gib": 2.5, "cases": cases}
    verdict = scaling.target(results)
    assert verdict["reference_longest"] == reference_fits
    assert verdict["blockwise_longest"] == blockwise_fits
    assert verdict["ratio"] == ratio and verdict["met"] is met
    results["machine"] = {"processor": "cpu", "cores": 2, "versions": {}}
    results["mode"] = "test"
    report = scaling.markdown(results)
    assert ("not decided" in report) == (met is None)
    assert ("(met," in report) == (met is True)
