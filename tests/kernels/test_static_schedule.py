"""The accelerator schedule of the engine, run on CPU by making the kernels see a GPU.

On GPU and TPU the blockwise kernels enumerate their visible block pairs at trace time and
predicate what lengths mask (no ``lax.cond``, no data-dependent trip count), and ring
attention computes rather than skips empty chunk pairs. Values and gradients against the
reference, with masks and sizes that do not divide the blocks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.kernels import (
    _call,
    additive_attention,
    blockwise_additive_attention,
    blockwise_attention,
    dot_product_attention,
    ring_attention,
)

B, T, S, N, K, H = 2, 19, 23, 4, 2, 8
rng = np.random.default_rng(7)
Q = rng.standard_normal((B, T, N, H)).astype(np.float32)
KV = rng.standard_normal((2, B, S, K, H)).astype(np.float32)
BIAS = rng.standard_normal((1, N, T, S)).astype(np.float32)
SEGMENTS = dict(
    query_segment_ids=np.sort(rng.integers(0, 3, (B, T)), axis=1).astype(np.int32),
    key_value_segment_ids=np.sort(rng.integers(0, 3, (B, S)), axis=1).astype(np.int32),
)
CASES = {
    "causal": dict(is_causal=True),
    "window": dict(local_window_size=(5, 2)),
    "causal+lengths": dict(
        is_causal=True,
        query_seq_lengths=np.array([T, 7], np.int32),
        key_value_seq_lengths=np.array([S, 0], np.int32),  # batch 1: every row empty
    ),
    "segments+window": dict(**SEGMENTS, local_window_size=(30, 3)),
}
BLOCKS = dict(query_block_size=8, key_value_block_size=8)


def _value_and_grads(fn, **opts):
    def loss(q, k, v, bias):
        out = fn(q, k, v, bias, **opts)
        return jnp.sum(out * jnp.cos(out)), out

    return jax.value_and_grad(loss, (0, 1, 2, 3), has_aux=True)(Q, KV[0], KV[1], BIAS)


@pytest.fixture(scope="module")
def results():
    @jax.jit
    def run():
        return {
            name: (
                _value_and_grads(dot_product_attention, implementation="reference", **opts),
                _value_and_grads(blockwise_attention, **BLOCKS, **opts),
            )
            for name, opts in CASES.items()
        }

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_call, "platform_of", lambda x, mesh=None: "gpu")
        return jax.device_get(run())


@pytest.mark.parametrize("case", list(CASES))
def test_static_blockwise_matches_the_reference(results, case):
    ((_, want), want_grads), ((_, out), grads) = results[case]
    np.testing.assert_allclose(out, want, atol=2e-6, rtol=1e-5)
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=5e-6, rtol=1e-5, err_msg=name)


def test_static_schedule_has_no_cond_and_no_while_with_data_dependent_trips(monkeypatch):
    monkeypatch.setattr(_call, "platform_of", lambda x, mesh=None: "gpu")

    def loss(q, k, v):
        lengths = dict(key_value_seq_lengths=jnp.array([S, 5]))
        return blockwise_attention(q, k, v, is_causal=True, **BLOCKS, **lengths).sum()

    hlo = jax.jit(jax.grad(loss, (0, 1, 2))).lower(Q, *KV).as_text()
    assert "stablehlo.case" not in hlo and "stablehlo.if" not in hlo
    # Every loop is a scan over a static list of block pairs: its trip count is a constant.
    text = str(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(Q, *KV))
    assert " while[" not in text
    assert text.count("scan[") >= 2  # forward and backward


def test_static_additive_and_ring_match_their_references(monkeypatch):
    monkeypatch.setattr(_call, "platform_of", lambda x, mesh=None: "gpu")
    A, D = 5, 6
    pq = rng.standard_normal((B, T, D)).astype(np.float32)
    pk = rng.standard_normal((B, S, A)).astype(np.float32)
    values = rng.standard_normal((B, S, D)).astype(np.float32)
    w, v = rng.standard_normal((D, A)).astype(np.float32), rng.standard_normal(A).astype(np.float32)
    mask = rng.random((B, T, S)) < 0.7

    def additive(fn, **kw):
        def loss(*a):
            return jnp.sum(jnp.sin(fn(*a[:3], w_query=a[3], v=a[4], mask=mask, **kw)))

        return jax.jit(jax.value_and_grad(loss, range(5)))(pq, pk, values, w, v)

    want = additive(additive_attention, implementation="reference")
    got = additive(blockwise_additive_attention, query_block_size=4, key_block_size=8)
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w_, atol=5e-6, rtol=1e-5)

    # Zigzag on one device: two chunks, one pair of which causal masking leaves empty.
    mesh = jax.make_mesh((1,), ("seq",), devices=jax.devices()[:1])
    q, k, val = Q[:, :16], KV[0][:, :16], KV[1][:, :16]

    def ring_loss(fn, **kw):
        def loss(q, k, v):
            out = fn(q, k, v, is_causal=True, key_value_seq_lengths=jnp.array([16, 0]), **kw)
            return jnp.sum(out * jnp.cos(out)), out

        return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, val)

    (_, out), grads = ring_loss(ring_attention, mesh=mesh, axis_name="seq", layout="zigzag")
    (_, want_out), want_grads = ring_loss(dot_product_attention)
    np.testing.assert_allclose(out, want_out, atol=2e-6, rtol=1e-5)
    for g, w_ in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w_, atol=5e-6, rtol=1e-5)
