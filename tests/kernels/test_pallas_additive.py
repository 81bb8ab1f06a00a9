"""zoo.kernels.pallas_additive against the reference additive kernel, in interpret mode.

Values and the gradients of every differentiable input, on prime-ish sizes (so a swapped axis
fails loudly) that no block size divides: T = 11, S = 19 under forced 4 x 8 blocks, and under
the default 16 x 32 blocks, which pad both. Interpret mode is slow on CPU, so each case is one
jitted value_and_grad, computed once per module.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.kernels.additive import additive_attention
from zoo.kernels.pallas_additive import pallas_additive_attention

B, T, S, A, DQ, DV = 2, 11, 19, 5, 3, 6
FULLY_MASKED = (1, 3)  # (b, t): a query row with no key to attend
NAMES = ("query", "projected_keys", "values", "w_query", "v")
SMALL_BLOCKS = {"query_block_size": 4, "key_block_size": 8}


def _inputs(seed, batch=(B,)):
    rng = np.random.default_rng(seed)
    shapes = {
        "query": (*batch, T, DQ),
        "projected_keys": (*batch, S, A),
        "values": (*batch, S, DV),
        "w_query": (DQ, A),
        "v": (A,),
    }
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    cotangent = rng.standard_normal((*batch, T, DV)).astype(np.float32)
    return arrays, cotangent, rng


def _masks(rng):
    random = rng.random((B, T, S)) < 0.6
    random[FULLY_MASKED] = False
    lengths = np.array([S, 9])
    padding = (np.arange(S)[None, :] < lengths[:, None])[:, None, :]  # [B, 1, S]
    shared = rng.random((T, S)) < 0.7  # [T, S], one mask for the batch
    return {"random": random, "padding": padding, "shared": shared, None: None}


# name -> (mask, blocks, batched)
CASES = {
    "random_mask_small_blocks": ("random", SMALL_BLOCKS, True),
    "source_padding_default_blocks": ("padding", {}, True),
    "shared_mask_small_blocks": ("shared", SMALL_BLOCKS, True),
    # No mask: the padded keys (S = 19 in one 32-row block) are masked by the kernels alone.
    "unbatched_no_mask": (None, {"query_block_size": 8}, False),
}


def _value_and_grad(kernel, mask, cotangent, **options):
    def loss(query, projected_keys, values, w_query, v):
        context = kernel(query, projected_keys, values, w_query=w_query, v=v, mask=mask, **options)
        return jnp.sum(context * cotangent), context

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(5)), has_aux=True))


@functools.cache
def _results(name):
    """((context, grads) of ours, the same of the reference) for one case, computed once."""
    mask_name, blocks, batched = CASES[name]
    arrays, cotangent, rng = _inputs(0, (B,) if batched else ())
    mask = _masks(rng)[mask_name]
    args = [arrays[n] for n in NAMES]
    (_, ours), our_grads = _value_and_grad(pallas_additive_attention, mask, cotangent, **blocks)(
        *args
    )
    (_, theirs), their_grads = _value_and_grad(additive_attention, mask, cotangent)(*args)
    return (ours, our_grads), (theirs, their_grads)


@pytest.mark.parametrize("name", CASES)
def test_context_matches_reference(name):
    (ours, _), (theirs, _) = _results(name)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
@pytest.mark.parametrize("name", CASES)
def test_gradients_match_reference(name, index):
    (_, our_grads), (_, their_grads) = _results(name)
    assert np.all(np.isfinite(our_grads[index]))
    np.testing.assert_allclose(our_grads[index], their_grads[index], atol=1e-5, rtol=1e-5)


def test_fully_masked_row_gives_zeros():
    (ours, our_grads), _ = _results("random_mask_small_blocks")
    np.testing.assert_array_equal(ours[FULLY_MASKED], 0.0)
    np.testing.assert_array_equal(our_grads[0][FULLY_MASKED], 0.0)  # d query


def test_bfloat16_context_in_values_dtype():
    arrays, _, rng = _inputs(1)
    args = {k: jnp.asarray(x, jnp.bfloat16) for k, x in arrays.items()}
    query, projected_keys, values = args["query"], args["projected_keys"], args["values"]
    kwargs = {"w_query": args["w_query"], "v": args["v"], "mask": _masks(rng)["random"]}
    ours = jax.jit(pallas_additive_attention)(query, projected_keys, values, **kwargs)
    theirs = additive_attention(query, projected_keys, values, **kwargs)
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(ours.astype(np.float32), theirs.astype(np.float32), atol=5e-2)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            {"query": np.zeros((B, T, DQ + 1), np.float32)},
            ValueError,
            r"w_query must be \[D_q, A\] = \[4, 5\], got shape \(3, 5\)",
        ),
        ({"query": np.zeros((B, T), np.float32)}, ValueError, r"query must be \[B, T, D_q\]"),
        (
            {"values": np.zeros((B, S + 1, DV), np.float32)},
            ValueError,
            r"values must be \[B, S, D_v\] = \[2, 19, D_v\]",
        ),
        ({"v": np.zeros((A + 1,), np.float32)}, ValueError, r"v must be \[A\] = \[5\]"),
        ({"mask": np.ones((B, T, S), np.int32)}, TypeError, "mask must be bool"),
        ({"mask": np.ones((B, 2, S), bool)}, ValueError, "mask must broadcast to"),
        ({"query_block_size": 6}, ValueError, "query_block_size must be a power of two, got 6"),
        ({"key_block_size": 0}, ValueError, "key_block_size must be a positive int"),
    ],
    ids=[
        "query_width",
        "query_rank",
        "values_length",
        "v_width",
        "mask_dtype",
        "mask_shape",
        "block_power_of_two",
        "block_positive",
    ],
)
def test_bad_input_names_the_argument(change, error, message):
    arrays, _, _ = _inputs(2)
    call = {**arrays, **change}
    with pytest.raises(error, match=message):
        pallas_additive_attention(
            call.pop("query"), call.pop("projected_keys"), call.pop("values"), **call
        )


def test_additive_attention_runs_each_implementation():
    arrays, _, rng = _inputs(3)
    mask = _masks(rng)["random"]
    args = (arrays["query"], arrays["projected_keys"], arrays["values"])
    params = dict(w_query=arrays["w_query"], v=arrays["v"], mask=mask)
    want, weights = additive_attention(*args, **params, return_weights=True)  # None on CPU
    for name in ("reference", "blockwise", "pallas"):
        out = additive_attention(*args, **params, implementation=name)
        np.testing.assert_allclose(out, want, atol=1e-6, err_msg=name)
    assert weights.shape == (B, T, S)
    with pytest.raises(ValueError, match=r"implementation='pallas' cannot return_weights"):
        additive_attention(*args, **params, implementation="pallas", return_weights=True)
    with pytest.raises(ValueError, match=r"implementation must be one of .*'flash'"):
        additive_attention(*args, **params, implementation="flash")
