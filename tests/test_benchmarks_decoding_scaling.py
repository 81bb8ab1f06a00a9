"""The decoding and scaling measurements on their smoke settings: tiny shapes, in this process."""

import argparse
import importlib
import json

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import decoding, harness, scaling


def _in_process(function, argument, *, timeout, env=None):
    """``harness.spawn`` without the fresh process, the argument and result through JSON."""
    assert timeout > 0
    if function == "benchmarks.harness:dense_matmul":
        return {}  # the roofline: seconds of matmuls that no test here looks at
    module, name = function.split(":")
    result = getattr(importlib.import_module(module), name)(json.loads(json.dumps(argument)))
    return json.loads(json.dumps(result))


def _smoke(module, out, *options):
    """``python -m <module> --mode smoke`` with every worker in this process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness, "spawn", _in_process)
        results = harness.main(module.__name__, ["--mode", "smoke", "--out", str(out), *options])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert {"benchmark", "mode", "options", "machine", "roofline", "rows", "targets",
            "elapsed_s"} <= set(saved)  # fmt: skip
    return saved, (out / "results.md").read_text()


def _decoding_cases(**options):
    args = argparse.Namespace(mode="smoke", lengths=None, bucket=None, recompute_kernel="reference")
    return list(decoding.cases(argparse.Namespace(**{**vars(args), **options}), []))


def test_cached_decoding_gives_the_recomputed_tokens_and_teacher_forcing_agrees():
    case = _decoding_cases()[0]
    (model, _), prompt = decoding.build(case)
    cached, recompute = decoding.decoders(model, bucket=case["bucket"])
    N, P = case["generated"], case["prompt_length"]
    # The smoke length crosses bucket boundaries: more than one padded length is compiled.
    assert decoding.round_up(P + 1, case["bucket"]) < P + N
    tokens = np.asarray(cached(prompt, N))
    assert tokens.shape == (case["batch_size"], N)
    np.testing.assert_array_equal(tokens, np.asarray(recompute(prompt, N)))
    # Independently: each token is the argmax (end token excluded) of one forward pass.
    logits = model(jnp.concatenate([prompt, jnp.asarray(tokens[:, :-1])], axis=1))
    expected = jnp.argmax(decoding.without_end(logits)[:, P - 1 :], axis=-1)
    np.testing.assert_array_equal(tokens, np.asarray(expected))
    assert not np.any(tokens == decoding.EOS_ID)


def test_decoding_cases_share_one_model_and_a_length_option():
    cases = _decoding_cases(lengths="8,20", bucket=4)
    assert [c["generated"] for c in cases] == [8, 20, 12]
    assert "beam_sizes" in cases[-1] and all("beam_sizes" not in c for c in cases[:-1])
    # One position table for every case, long enough for the longest: the same parameters.
    assert {c["max_length"] for c in cases} == {24} and {c["bucket"] for c in cases} == {4}


def test_decoding_smoke_writes_every_field(tmp_path):
    saved, markdown = _smoke(decoding, tmp_path)
    (row, *beams) = saved["rows"]
    assert row["generated"] == decoding.SETTINGS["smoke"].lengths[0]
    assert row["tokens_agree"] is True and row["first_difference"] is None
    assert row["model"]["parameters"] > 0 and row["model"]["kernel"] == "reference"
    for name in ("kv_cache", "recompute"):
        assert row[name]["tokens_per_s"] > 0 and row[name]["samples"] >= 1
    assert row["kv_cache"]["first_call_s"] > 0 and row["recompute"]["compile_s"] > 0
    assert row["speedup"] == pytest.approx(
        row["recompute"]["median_s"] / row["kv_cache"]["median_s"]
    )
    assert [r["beam_size"] for r in beams] == [None, *decoding.SETTINGS["smoke"].beam_sizes]
    assert all(r["per_token_ms"] > 0 and r["first_call_s"] > 0 for r in beams)
    assert beams[0]["search"] == "greedy" and beams[0]["relative_to_greedy"] == 1.0
    # The smoke run does not reach 1,024 tokens: the target is stored as not measured.
    (target,) = saved["targets"]
    assert target["verdict"] == "not measured" and target["threshold"] == 10.0
    assert "**not measured**" in markdown and "| 12 |" in markdown and "beam, W = 2" in markdown
    assert (tmp_path / "decoding.png").stat().st_size > 0
    assert (tmp_path / "beams.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("speedup", "agree", "verdict"), [(12.0, True, "met"), (9.0, True, "missed")]
)
def test_decoding_target_verdict(speedup, agree, verdict):
    timing = {"median_s": 1.0, "clean_samples": 1}
    row = {"case": {"name": "N1024"}, "generated": 1024, "speedup": speedup,
           "tokens_agree": agree, "kv_cache": timing, "recompute": timing}  # fmt: skip
    (check,) = decoding.targets([{"case": {"name": "N128"}, "generated": 128, "speedup": 99}, row])
    assert (check["measured"], check["verdict"], check["case"]) == (speedup, verdict, "N1024")
    assert decoding.targets([])[0]["verdict"] == "not measured"


@pytest.mark.slow
def test_scaling_smoke_writes_every_field(tmp_path):
    # The workers run inside this test process, whose resident memory after the tests
    # before it says nothing of the case's: a budget no run here comes near.
    saved, markdown = _smoke(scaling, tmp_path, "--memory-limit-gib", "1000")
    assert [r["case"]["kernel"] for r in saved["rows"]] == list(scaling.KERNELS)
    for row in saved["rows"]:
        assert row["status"] == "ok", row
        # Memory from each kernel's own worker, speed from one worker timing both.
        assert row["peak_bytes"] >= row["resident_bytes"] > 0
        assert row["planned_peak_bytes"] >= row["resident_bytes"]
        assert row["parameters"] > 0 and np.isfinite(row["first_loss"])
        assert row["interleaved_with"] == list(scaling.KERNELS)
        assert row["samples"] >= 1 and row["first_call_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(16 / row["median_s"])
    # Same parameters and batch: both kernels compute the same first loss.
    reference, blockwise = (r["first_loss"] for r in saved["rows"])
    assert reference == pytest.approx(blockwise, rel=1e-5)
    # Nothing ran out of memory, so the sweep cannot decide the target.
    (target,) = saved["targets"]
    assert target["verdict"] == "not measured" and "not decided" in target["note"]
    assert "**not measured**" in markdown and "tok/s<br>" in markdown
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert (tmp_path / "memory.png").stat().st_size > 0


def test_scaling_worker_does_not_run_a_step_over_budget():
    case = {"context": 8, "width": 32, "kernel": "reference", "layers": 1, "batch_size": 1,
            "budget_gib": 2**-30}  # fmt: skip
    result = scaling.memory(case)
    assert result["status"] == "out of memory (XLA's plan)"
    assert result["planned_peak_bytes"] > result["resident_bytes"] > 1
    assert "peak_bytes" not in result and "first_loss" not in result


def _row(context, kernel, status="ok", width=128):
    sweep = {"width": 128, "context": 256}
    case = {"context": context, "width": width, "kernel": kernel, "budget_gib": 2.5}
    row = {"case": case | {"sweep": sweep}, "status": status}
    if status == "ok":
        return row | {"tokens_per_s": 1000.0, "peak_bytes": 2**30, "clean_samples": 1}
    return row | ({"peak_bytes": 3 * 2**30} if status.endswith("(measured)") else {})


def test_scaling_does_not_run_larger_cases_after_one_that_did_not_fit():
    args = argparse.Namespace(mode="quick", memory_limit_gib=2.5, contexts=None,
                              widths="128,512,1024", kernels="reference,blockwise", repeats=None)  # fmt: skip
    rows: list[dict] = []
    shapes = []
    for shape in scaling.cases(args, rows):
        shapes.append(shape)
        for k in shape["kernels"]:  # the reference runs out of memory from T = 4,096 or D = 512
            fits = (shape["context"] < 4096 and shape["width"] < 512) or k == "blockwise"
            status = shape["skip"].get(k, "ok" if fits else "out of memory (measured)")
            rows.append(_row(shape["context"], k, status, shape["width"]))
    skips = {(s["context"], s["width"]): s["skip"] for s in shapes}
    assert skips == {
        (256, 128): {}, (2048, 128): {}, (4096, 128): {},
        (16384, 128): {"reference": "out of memory (not run: T=4,096 did not fit)"},
        (256, 512): {},
        (256, 1024): {"reference": "out of memory (not run: D=512 did not fit)"},
    }  # fmt: skip
    assert all(s["in_process"] and s["budget_gib"] == 2.5 for s in shapes)


@pytest.mark.parametrize(
    ("reference_fits", "blockwise_fits", "ratio", "verdict"),
    [(2048, 16384, 8.0, "met"), (2048, 8192, 4.0, "missed"), (16384, 16384, None, "not measured")],
)
def test_scaling_target_compares_the_longest_contexts_that_fit(
    reference_fits, blockwise_fits, ratio, verdict
):
    rows = [
        _row(t, kernel, "ok" if t <= fits else "out of memory (measured)")
        for t in (256, 2048, 4096, 8192, 16384)
        for kernel, fits in (("reference", reference_fits), ("blockwise", blockwise_fits))
    ]
    rows.append(_row(256, "reference", "out of memory (measured)", width=512))  # not the width
    (check,) = scaling.targets(rows)
    assert (check["measured"], check["verdict"]) == (ratio, verdict)
    assert f"reference {reference_fits:,}" in check["case"]
    assert ("at least" in check["note"]) == (blockwise_fits == 16384 and ratio is not None)
    table = "\n".join(scaling.TABLES[0].markdown(rows))
    assert "1,000 tok/s<br>1.00 GiB" in table
    assert ("OOM: 3.00 GiB measured" in table) == (reference_fits < 16384)
