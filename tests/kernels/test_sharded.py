"""zoo.kernels.sharded: batch/head-parallel and ring attention against the references.

The multi-device checks run in fresh processes (tests/kernels/sharded_worker.py): the CPU
device count is fixed when JAX starts, and this pytest process (shared with every other
test file, perhaps under xdist) has already started it with one device. Each worker
measures; the asserts are here. One process per check keeps failures apart and lets xdist
spread them over its workers.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from zoo.kernels import dot_product_attention
from zoo.kernels.ring import ring_attention, ring_permutation
from zoo.kernels.sharded import sharded_attention

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds: a hung collective fails the test instead of the whole run


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # The worker sets its own device count; a count inherited from XLA_FLAGS would clash.
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = flags.strip()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _worker_command(checks: list[str], devices: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.kernels.sharded_worker",
        "--devices",
        str(devices),
        *extra,
        *checks,
    ]


def _parse(stdout: str, stderr: str, returncode: int) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        pytest.fail(f"worker exited with {returncode}:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _run(check: str, devices: int = 8) -> dict:
    try:
        done = subprocess.run(
            _worker_command([check], devices),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=ROOT,
            env=_worker_env(),
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"worker {check} did not finish in {TIMEOUT} s:\n{e.stderr!r}")
    return _parse(done.stdout, done.stderr, done.returncode)[check]


# --------------------------------------------------------------------------------------------
# Ring attention on 8 devices: values and gradients against the float64 reference and the
# single-device kernel. The worker's docstrings say what each case exercises.

SEQ = [None, "seq", None, None]
RING_CASES = {
    "ring_plain": SEQ,  # non-causal, 3 tokens per device, GQA (N = 6 over K = 3)
    "ring_causal": SEQ,
    "ring_causal_zigzag": SEQ,  # and a non-default scale
    "ring_causal_striped": SEQ,
    "ring_padding_zigzag": SEQ,  # padded keys and queries, a row with no key at all
    "ring_segments_window_striped": SEQ,
    "ring_cross_lengths": SEQ,  # T = 16 != S = 40
    "ring_auto_mesh_zigzag": SEQ,  # a mesh with Auto axes
    "ring_mesh3d_mqa": ["data", "seq", "model", None],  # one key/value head, 2 head shards
}


@pytest.mark.parametrize("check", RING_CASES)
def test_ring_attention_matches_reference(check):
    got = _run(check)
    assert got["finite"]
    assert got["out_dtype"] == "float32" and got["grad_dtypes"] == ["float32"] * 3
    assert got["out_spec"] == RING_CASES[check]
    assert got["out_vs_reference"] < 2e-5
    assert max(got["grads_vs_reference"]) < 5e-5, got["grads_vs_reference"]
    # The single-device kernel computes the same float32 numbers up to summation order.
    assert got["out_vs_kernel"] < 1e-5
    assert max(got["grads_vs_kernel"]) < 2e-5, got["grads_vs_kernel"]


def test_ring_attention_in_bfloat16_keeps_the_dtype():
    got = _run("ring_bfloat16")
    assert got["finite"]
    assert got["out_dtype"] == "bfloat16" and got["grad_dtypes"] == ["bfloat16"] * 3
    # bfloat16 has 8 bits of mantissa: about 4e-3 relative per rounding.
    assert got["out_vs_reference"] < 2e-2
    assert max(got["grads_vs_reference"]) < 5e-2, got["grads_vs_reference"]


def test_ring_attention_in_layout_order_and_unbatched():
    got = _run("ring_unbatched_permute_false")
    assert got["shape"] == [32, 6, 5]
    assert got["out_vs_reference"] < 2e-5 and got["out_vs_kernel"] < 1e-5
    # The output really is in zigzag order until the caller undoes the permutation.
    assert got["layout_order_differs"]


def test_causal_ring_skips_fully_masked_chunks():
    # A NaN in the last value row reaches every query row whose chunk is computed against
    # the last key chunk (0 * NaN = NaN), masked or not; only skipped chunks stay finite.
    got = _run("ring_skips_masked_blocks")
    # 48 tokens on 8 devices: contiguous blocks of 6, the last one (42..47) holds the NaN.
    assert got["contiguous_causal=True"] == list(range(42))
    # Zigzag chunks of 3; the NaN's chunk 45..47 is the second half of device 0.
    assert got["zigzag_causal=True"] == list(range(45))
    # Controls: without a causal mask nothing is skipped; the dense kernel skips nothing.
    assert got["contiguous_causal=False"] == []
    assert got["dense_kernel"] == []


def test_compiled_ring_passes_blocks_around_instead_of_gathering():
    ops = _run("hlo_is_a_ring")
    assert ops["collective-permute"] >= 2  # forward and backward rings
    assert ops["all-gather"] == ops["all-to-all"] == ops["all-reduce"] == 0
    assert ops["conditional"] >= 2  # the causal skip survives compilation


# --------------------------------------------------------------------------------------------
# Batch- and head-parallel attention on a 2 x 4 (data, model) mesh.


def test_head_batch_parallel_matches_reference():
    got = _run("head_batch_parallel")
    assert set(got) == {"explicit_K=4", "auto_K=2", "explicit_K=1"}
    for name, r in got.items():
        assert r["finite"], name
        assert r["out_spec"] == ["data", None, "model", None], name
        assert r["out_vs_reference"] < 2e-5, name
        assert max(r["grads_vs_reference"]) < 5e-5, (name, r["grads_vs_reference"])
        assert r["out_vs_kernel"] < 1e-6, name
        assert max(r["grads_vs_kernel"]) < 1e-6, (name, r["grads_vs_kernel"])


def test_head_batch_parallel_weights_other_kernels_and_dropout():
    # Kernels: jax.nn.dot_product_attention and zoo's blockwise kernel (custom VJP, scans).
    got = _run("head_batch_parallel_extras")
    assert got["out"] < 1e-6 and got["weights"] < 1e-6 and got["lse"] < 1e-6
    assert got["specs"] == [
        ["data", None, "model", None],
        ["data", "model", None, None],
        ["data", None, "model"],
    ]
    assert got["jax_nn_kernel"] < 1e-6
    assert got["abstract_mesh"] < 1e-6
    assert got["blockwise_kernel"] < 1e-5
    assert max(got["blockwise_grads"]) < 5e-5, got["blockwise_grads"]
    assert got["dropout_repeatable"] == 0.0
    assert got["dropout_changes_with_key"] > 1e-3
    # broadcast_dropout: one pattern within a device, a different one on each device.
    assert got["dropout_within_shard"] == 0.0
    assert got["dropout_across_shards"] > 1e-3


# --------------------------------------------------------------------------------------------
# A model on the ring: TransformerLM with ring_attention as its kernel, on 4 devices.


@pytest.mark.slow
def test_transformer_lm_on_the_ring_matches_the_reference_kernel():
    got = _run("ring_transformer_lm", devices=4)
    # The same parameters, the same numbers to float32 rounding (logits ~4, gradients ~20).
    assert got["logits_vs_reference"] < 1e-5
    assert got["grads_vs_reference"] < 5e-5
    assert got["logits_scale"] > 0.1 and got["grad_scale"] > 0.1  # not trivially zero
    assert got["grad_leaves"] == got["param_leaves"] > 0  # every parameter compared
    # What the ring cannot do reaches the model's caller as the kernel's own error.
    assert got["refusals"]["return_weights"].startswith("ring_attention cannot return_weights")
    assert "dropout_rate=0.1 with deterministic=False" in got["refusals"]["dropout"]


# --------------------------------------------------------------------------------------------
# Two processes, two CPU devices each, one ring across both (jax.distributed, gloo).


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ring_attention_across_two_processes():
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            _worker_command(
                ["distributed_ring"],
                2,
                "--coordinator",
                address,
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_worker_env(),
        )
        for i in range(2)
    ]
    results = []
    deadline = time.monotonic() + TIMEOUT
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append(_parse(stdout, stderr, proc.returncode)["distributed_ring"])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the two-process ring did not finish in {TIMEOUT} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert sorted(r["process_index"] for r in results) == [0, 1]
    for r in results:
        assert r["process_count"] == 2
        assert r["global_devices"] == 4 and r["local_devices"] == 2
        assert r["mesh_processes"] == [0, 1]  # the ring crosses the process boundary
        assert r["out_vs_reference"] < 2e-5
        assert max(r["grads_vs_reference"]) < 5e-5, r["grads_vs_reference"]


# --------------------------------------------------------------------------------------------
# In this process: layouts, a one-device ring, and argument checking (no devices needed).


def test_ring_permutation_layouts():
    np.testing.assert_array_equal(ring_permutation(8, 2, "contiguous"), np.arange(8))
    # zigzag: 4 chunks of 2; device 0 holds chunks 0 and 3, device 1 chunks 1 and 2.
    np.testing.assert_array_equal(ring_permutation(8, 2, "zigzag"), [0, 1, 6, 7, 2, 3, 4, 5])
    # striped: device p holds tokens p, p + P, ...
    np.testing.assert_array_equal(ring_permutation(8, 2, "striped"), [0, 2, 4, 6, 1, 3, 5, 7])
    for layout in ("contiguous", "zigzag", "striped"):
        perm = ring_permutation(90, 3, layout)
        np.testing.assert_array_equal(np.sort(perm), np.arange(90))
    # Zigzag balances causal work: every device's tokens sum to the same total of positions.
    per_device = ring_permutation(64, 4, "zigzag").reshape(4, -1).sum(axis=1)
    np.testing.assert_array_equal(per_device, per_device[0])


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_ring_on_a_one_device_mesh_matches_kernel(layout):
    mesh = jax.make_mesh((1,), ("seq",), devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    q, k, v, d_out = (
        rng.standard_normal(s).astype(np.float32)
        for s in ((2, 6, 6, 5), (2, 6, 3, 5), (2, 6, 3, 5), (2, 6, 6, 5))
    )
    opts = dict(is_causal=True, key_value_seq_lengths=np.array([6, 0], np.int32))

    def loss(fn, **kwargs):
        def f(q, k, v):
            out = fn(q, k, v, **opts, **kwargs)
            return jnp.sum(out * d_out), out

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, out), grads = loss(ring_attention, mesh=mesh, axis_name="seq", layout=layout)
    (_, want), want_grads = loss(dot_product_attention)
    np.testing.assert_allclose(out, want, atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)  # no key to attend: zeros, not NaN
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


MESH = AbstractMesh((2, 4), ("data", "seq"))
B, T, N, K, H = 2, 24, 4, 2, 3
RING_ERRORS = [
    (dict(T=22), r"query length T=22 must be a multiple of 4 \(4 devices on axis_name='seq'\)"),
    (
        dict(T=12, layout="zigzag"),
        r"query length T=12 must be a multiple of 8 \(4 devices on axis_name='seq' x 2 zigzag",
    ),
    (dict(S=18), r"key length S=18 must be a multiple of 4"),
    (
        dict(axis_name="sequence"),
        r"axis_name='sequence' is not an axis of the mesh \('data', 'seq'\)",
    ),
    (dict(batch_axis="seq"), r"mesh axes must be distinct"),
    (
        dict(B=3, batch_axis="data"),
        r"batch B=3 must be a multiple of the 2 devices on batch_axis='data'",
    ),
    (
        dict(N=6, K=3, head_axis="data"),
        r"key/value heads K=3 and the 2 devices on head_axis='data' must divide one another",
    ),
    (dict(layout="spiral"), r"layout must be one of \('contiguous', 'zigzag', 'striped'\)"),
    (dict(K=3), r"key/value heads K=3 must divide query heads N=4"),
]


@pytest.mark.parametrize("bad,message", RING_ERRORS)
def test_ring_bad_input_names_the_argument(bad, message):
    dims = dict(B=B, T=T, S=T, N=N, K=K)
    dims.update({d: bad.pop(d) for d in list(bad) if d in dims})
    q = np.zeros((dims["B"], dims["T"], dims["N"], H), np.float32)
    kv = np.zeros((dims["B"], dims["S"], dims["K"], H), np.float32)
    kwargs = {"mesh": MESH, "axis_name": "seq", **bad}
    with pytest.raises(ValueError, match=message):
        ring_attention(q, kv, kv, **kwargs)


# The arguments of the dot_product_attention call that the ring refuses: each error names
# it, says what it would cost, and what to use instead.
RING_REFUSALS = [
    (dict(bias=np.zeros((T, T), np.float32)), r"takes no bias: .* T x S .* blockwise_attention"),
    (
        dict(mask=np.ones((B, 1, T, T), bool)),
        r"takes no mask: .* T x S .* is_causal, local_window_size, query_seq_lengths",
    ),
    (
        dict(dropout_rate=0.1, deterministic=False),
        r"no attention dropout, got dropout_rate=0.1 with deterministic=False: .* T x S",
    ),
    (
        dict(return_weights=True),
        r"cannot return_weights: .* T x S .* dot_product_attention \(the reference kernel\)",
    ),
]


@pytest.mark.parametrize("bad,message", RING_REFUSALS, ids=["bias", "mask", "dropout", "weights"])
def test_ring_refuses_what_needs_t_by_s_memory(bad, message):
    q = np.zeros((B, T, N, H), np.float32)
    kv = np.zeros((B, T, K, H), np.float32)
    with pytest.raises(ValueError, match=message):
        ring_attention(q, kv, kv, mesh=MESH, axis_name="seq", **bad)


def test_ring_refuses_bias_and_mask_given_positionally():
    q = np.zeros((B, T, N, H), np.float32)
    kv = np.zeros((B, T, K, H), np.float32)
    with pytest.raises(ValueError, match="takes no bias"):
        ring_attention(q, kv, kv, np.zeros((T, T), np.float32), mesh=MESH, axis_name="seq")
    with pytest.raises(ValueError, match="takes no mask"):
        ring_attention(q, kv, kv, None, np.ones((T, T), bool), mesh=MESH, axis_name="seq")


SHARDED_ERRORS = [
    (dict(q=(T, N, H)), r"query must be \[B, T, N, H\], got shape \(24, 4, 3\)"),
    (dict(q=(3, T, N, H), kv=(3, T, K, H)), r"batch B=3 must be a multiple of the 2 devices"),
    (
        dict(q=(B, T, 6, H), kv=(B, T, 2, H)),
        r"query heads N=6 must be a multiple of the 4 devices on head_axis='model'",
    ),
    (
        dict(q=(B, T, 12, H), kv=(B, T, 3, H)),
        r"key/value heads K=3 and the 4 devices on head_axis='model'",
    ),
    (dict(head_axis="heads"), r"head_axis='heads' is not an axis of the mesh"),
    (dict(kv=(B, T, 3, H)), r"key/value heads K=3 must divide query heads N=4"),
]


@pytest.mark.parametrize("bad,message", SHARDED_ERRORS)
def test_sharded_bad_input_names_the_argument(bad, message):
    mesh = AbstractMesh((2, 4), ("data", "model"))
    q = np.zeros(bad.pop("q", (B, T, N, H)), np.float32)
    kv = np.zeros(bad.pop("kv", (B, T, K, H)), np.float32)
    with pytest.raises(ValueError, match=message):
        sharded_attention(q, kv, kv, mesh=mesh, **bad)
