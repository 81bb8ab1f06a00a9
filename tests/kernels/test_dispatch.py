"""Dispatch: which kernel each call gets on each platform, and the adapters' contract.

The choice is a function of static facts, so it is checked by forcing the platform
(:func:`zoo.kernels.explain` computes nothing). tokamax's XLA kernels run on CPU, which is
how its adapter is checked against the reference here: values and gradients, with masks,
lengths, GQA and rows with nothing to attend.
"""

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tests.kernels import reference
from zoo.kernels import dispatch, dot_product_attention, explain

B, T, S, N, K, H = 2, 11, 13, 6, 3, 16


def _spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def _qkv(dtype=jnp.bfloat16, T=T, S=S, H=H):
    return _spec((B, T, N, H), dtype), _spec((B, S, K, H), dtype), _spec((B, S, K, H), dtype)


DROPOUT = dict(dropout_rate=0.1, dropout_rng=jax.random.key(0))
SEGMENTS = dict(
    query_segment_ids=_spec((B, T), jnp.int32), key_value_segment_ids=_spec((B, S), jnp.int32)
)

# (platform, tokamax installed, call, kernel chosen)
TABLE = [
    ("cpu", True, {}, "reference"),
    ("cpu", True, dict(T=512, S=512), "blockwise"),
    ("cpu", True, dict(T=512, S=512, return_weights=True), "reference"),
    ("cpu", True, dict(T=1, S=4096), "reference"),
    ("gpu", True, {}, "tokamax.mosaic"),
    ("gpu", True, dict(dtype=jnp.float32, is_causal=True), "tokamax.mosaic"),
    ("gpu", False, {}, "cudnn"),
    ("gpu", False, dict(dtype=jnp.float32), "reference"),
    ("gpu", False, dict(H=12), "reference"),
    ("gpu", False, dict(local_window_size=(4, 0)), "cudnn"),
    ("gpu", False, dict(local_window_size=4), "reference"),
    ("gpu", True, dict(return_residual=True), "cudnn"),
    ("gpu", True, DROPOUT, "reference"),
    ("gpu", True, {**DROPOUT, "T": 512, "S": 512}, "blockwise"),
    ("gpu", True, SEGMENTS, "reference"),
    ("gpu", True, dict(return_weights=True), "reference"),
    ("gpu", True, dict(dtype=jnp.float32, precision="highest"), "reference"),
    ("tpu", True, {}, "tokamax.mosaic"),
    ("tpu", False, {}, "reference"),
    ("tpu", True, dict(return_residual=True), "reference"),
]


@pytest.mark.parametrize("platform,tokamax,call,want", TABLE)
def test_dispatch_table(monkeypatch, platform, tokamax, call, want):
    problem = None if tokamax else "tokamax is not installed"
    monkeypatch.setattr(dispatch, "_tokamax_problem", lambda: problem)
    call = dict(call)
    shapes = {n: call.pop(n) for n in ("dtype", "T", "S", "H") if n in call}
    choice = explain(*_qkv(**shapes), platform=platform, **call)
    assert choice.implementation == want, str(choice)
    assert choice.facts.platform == platform
    # Every backend passed over says why, and the chosen one is not among them.
    assert all(why for _, why in choice.passed_over)
    assert want not in [name for name, _ in choice.passed_over]


def _not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)


def test_explain_names_why_each_backend_was_passed_over(monkeypatch):
    dispatch._tokamax_problem.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", _not_installed)
    choice = explain(*_qkv(jnp.float32), platform="gpu")
    reasons = dict(choice.passed_over)
    assert "not installed" in reasons["tokamax.mosaic"]
    assert "accelerators" in reasons["tokamax.mosaic"]  # and how to install it
    assert reasons["cudnn"] == "bfloat16 or float16 only, got float32"
    assert str(choice).splitlines()[0] == "reference (platform gpu, float32)"
    dispatch._tokamax_problem.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.12")
    reasons = dict(explain(*_qkv(), platform="gpu").passed_over)
    assert reasons["tokamax.mosaic"].startswith("tokamax 0.0.12 is older than 0.0.17")
    dispatch._tokamax_problem.cache_clear()
    monkeypatch.undo()
    reasons = dict(explain(*_qkv(), platform="gpu", **DROPOUT).passed_over)
    assert reasons == dict.fromkeys(
        ("tokamax.mosaic", "tokamax.triton", "cudnn"), "supports no dropout"
    )


def test_forced_names_and_sequences():
    q, k, v = _qkv(jnp.float32)
    assert explain(q, k, v, implementation="blockwise").implementation == "blockwise"
    fell = explain(q, k, v, implementation=("tokamax.mosaic", "cudnn", "blockwise"))
    assert fell.implementation == "blockwise"
    assert [name for name, _ in fell.passed_over] == ["tokamax.mosaic", "cudnn"]
    with pytest.raises(NotImplementedError, match=r"cudnn: needs an NVIDIA GPU.*'reference'"):
        explain(q, k, v, implementation="cudnn")
    with pytest.raises(ValueError, match=r"implementation must be None, one of .*'flash'"):
        explain(q, k, v, implementation=("blockwise", "flash"))
    with pytest.raises(ValueError, match=r"platform must be None, 'cpu', 'gpu' or 'tpu'"):
        explain(q, k, v, platform="cuda")


def test_platform_inside_shard_map_is_the_mesh_one():
    mesh = jax.make_mesh((1,), ("x",))
    seen = []

    def body(q, k, v):
        seen.append(explain(q, k, v).facts.platform)
        return dot_product_attention(q, k, v)

    q, k, v = (jnp.zeros(x.shape, x.dtype) for x in _qkv(jnp.float32))
    jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=P()))(q, k, v)
    assert seen == [jax.devices()[0].platform]


# --------------------------------------------------------------------------------------------
# The tokamax adapter, on tokamax's XLA kernels (they run on CPU).


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, T, N, H), np.float32)
    k, v = (rng.standard_normal((B, S, K, H), np.float32) for _ in range(2))
    bias = rng.standard_normal((B, N, T, S), np.float32)
    mask = rng.random((B, 1, T, S)) < 0.8
    mask[1, :, 3] = False  # a row with nothing to attend
    lengths = np.array([S, 5], np.int32)
    return q, k, v, bias, mask, lengths


@pytest.fixture(scope="module")
def value_and_grads(inputs):
    if dispatch._tokamax_problem():  # the accelerators extra (jax >= 0.11.1)
        pytest.skip(dispatch._tokamax_problem())
    q, k, v, bias, mask, lengths = inputs

    def loss(implementation, q, k, v, bias):
        out = dot_product_attention(
            q,
            k,
            v,
            bias,
            mask,
            is_causal=True,
            key_value_seq_lengths=lengths,
            implementation=implementation,
        )
        w = jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size
        return jnp.sum(out * w), out

    @jax.jit
    def run(q, k, v, bias):
        return {
            name: jax.value_and_grad(lambda *a, n=name: loss(n, *a), (0, 1, 2, 3), has_aux=True)(
                q, k, v, bias
            )
            for name in ("reference", "tokamax.xla", "tokamax.xla_chunked")
        }

    return run(q, k, v, bias)


@pytest.mark.parametrize("name", ["tokamax.xla", "tokamax.xla_chunked"])
def test_tokamax_adapter_matches_the_reference(value_and_grads, inputs, name):
    (_, want), want_grads = value_and_grads["reference"]
    (_, out), grads = value_and_grads[name]
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=2e-5)
    for what, g, w in zip(("dq", "dk", "dv", "dbias"), grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=what)
    # The empty row gives zeros (tokamax alone gives the values' mean there).
    assert np.all(np.asarray(out)[1, 3] == 0.0)
    full = reference.attention_mask(B, T, S, N=N, mask=inputs[4], is_causal=True)
    assert not full[1, :, 3].any()


def test_tokamax_refuses_what_it_cannot_do(inputs):
    q, k, v, *_ = inputs
    with pytest.raises(NotImplementedError, match=r"tokamax: does not return the log-sum-exp"):
        dot_product_attention(q, k, v, implementation="tokamax", return_residual=True)
    with pytest.raises(NotImplementedError, match=r"tokamax.xla: supports no dropout"):
        dot_product_attention(q, k, v, implementation="tokamax.xla", **DROPOUT)
