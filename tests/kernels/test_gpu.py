"""On an NVIDIA GPU (skipped elsewhere): the dispatched kernels and the compiled Pallas
additive kernel against the reference, in bfloat16, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.kernels import additive_attention, dot_product_attention, explain

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("causal", [False, True])
def test_dispatch_picks_a_fused_kernel_and_matches_the_reference(causal):
    rng = np.random.default_rng(0)
    B, T, N, K, H = 2, 300, 8, 2, 64
    q = jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.standard_normal((B, T, K, H)), jnp.bfloat16) for _ in range(2))
    lengths = jnp.array([T, 77])
    assert explain(q, k, v, is_causal=causal).implementation not in ("reference", "blockwise")

    def loss(implementation, q, k, v):
        out = dot_product_attention(
            q, k, v, is_causal=causal, key_value_seq_lengths=lengths, implementation=implementation
        )
        return jnp.sum(out.astype(jnp.float32) ** 2), out

    grad = jax.jit(jax.value_and_grad(loss, (1, 2, 3), has_aux=True), static_argnums=0)
    (_, out), grads = grad(None, q, k, v)
    (_, want), want_grads = grad("reference", q, k, v)
    np.testing.assert_allclose(np.float32(out), np.float32(want), atol=2e-2, rtol=2e-2)
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(np.float32(g), np.float32(w), atol=5e-2, rtol=5e-2)


def test_compiled_pallas_additive_matches_the_reference():
    rng = np.random.default_rng(1)
    B, T, S, A, D = 2, 37, 53, 64, 32
    args = [rng.standard_normal(s).astype(np.float32) for s in ((B, T, D), (B, S, A), (B, S, D))]
    w, v = rng.standard_normal((D, A)).astype(np.float32) / 8, rng.standard_normal(A) / 8
    mask = rng.random((B, 1, S)) < 0.8

    def loss(implementation, *a):
        out = additive_attention(
            *a[:3], w_query=a[3], v=a[4], mask=mask, implementation=implementation
        )
        return jnp.sum(jnp.sin(out))

    grad = jax.jit(jax.value_and_grad(loss, range(1, 6)), static_argnums=0)
    with jax.default_matmul_precision("highest"):
        got = grad("pallas", *args, w, np.float32(v))
        want = grad("reference", *args, w, np.float32(v))
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w_, atol=1e-4, rtol=1e-4)
