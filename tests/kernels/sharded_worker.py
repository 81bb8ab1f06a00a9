"""Multi-device checks of zoo.kernels.sharded and .ring, run in a fresh process by test_sharded.py.

The number of CPU devices must be fixed before JAX starts, so these checks cannot run in the
pytest process (other test files share it). The worker sets the device count, optionally
joins a multi-process cluster (``jax.distributed`` with gloo CPU collectives), runs the named
checks and prints one line ``RESULT {json}``. It only measures (errors, flags, HLO facts);
the asserts live in test_sharded.py, so a failure reads as a normal pytest failure.

    python -m tests.kernels.sharded_worker --devices 8 ring_causal_zigzag hlo_is_a_ring
    python -m tests.kernels.sharded_worker --devices 2 --coordinator 127.0.0.1:PORT \\
        --num-processes 2 --process-id 0 distributed_ring
"""

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checks", nargs="+")
    parser.add_argument("--devices", type=int, required=True, help="CPU devices per process")
    parser.add_argument("--coordinator", help="host:port of jax.distributed's coordinator")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args()

    import jax

    # Before anything touches a backend: the device count is fixed at initialization.
    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # Short timeouts: a missing peer should fail the test, not hang it for minutes.
        jax.distributed.initialize(
            args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=60,
            heartbeat_timeout_seconds=30,
            shutdown_timeout_seconds=30,
        )
    results = {name: CHECKS[name]() for name in args.checks}
    print("RESULT " + json.dumps(results), flush=True)
    if args.coordinator:
        jax.distributed.shutdown()


# --------------------------------------------------------------------------------------------
# Helpers (imported lazily so that main() can configure JAX first).


def _random(seed: int, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _max_err(got: Any, want: Any) -> float:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got - want), initial=0.0))


def _reference_mask(B: int, T: int, S: int, N: int, opts: dict[str, Any]) -> np.ndarray:
    from tests.kernels import reference

    window = opts.get("local_window_size")
    if isinstance(window, int):
        window = (window, window)
    return reference.attention_mask(
        B,
        T,
        S,
        N=N,
        mask=opts.get("mask"),
        is_causal=opts.get("is_causal", False),
        window=window,
        q_lengths=opts.get("query_seq_lengths"),
        kv_lengths=opts.get("key_value_seq_lengths"),
        q_segments=opts.get("query_segment_ids"),
        kv_segments=opts.get("key_value_segment_ids"),
    )


def _compare(
    attention: Callable[..., Any],
    dims: tuple[int, int, int, int, int, int],
    opts: dict[str, Any],
    *,
    seed: int = 0,
    dtype: Any = None,
    bias: bool = False,
) -> dict[str, Any]:
    """Values and gradients of ``attention`` against the float64 reference and the
    single-device ``dot_product_attention``, on the same random inputs and options.

    ``attention`` has its mesh and placement bound already; ``opts`` are kernel options.
    """
    import jax
    import jax.numpy as jnp

    from tests.kernels import reference
    from zoo.kernels import dot_product_attention

    B, T, S, N, K, H = dims
    q, k, v, d_out, b = _random(
        seed, (B, T, N, H), (B, S, K, H), (B, S, K, H), (B, T, N, H), (B, N, T, S)
    )
    dtype = dtype or jnp.float32
    inputs = [jnp.asarray(x, dtype) for x in (q, k, v)] + ([b] if bias else [])

    def loss(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
        def f(*args: Any) -> Any:
            out = fn(*args, **kwargs)
            return jnp.sum(out.astype(jnp.float32) * d_out), out

        return jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(inputs))), has_aux=True))

    (_, out), grads = loss(attention, opts)(*inputs)
    (_, k_out), k_grads = loss(dot_product_attention, opts)(*inputs)

    full_mask = _reference_mask(B, T, S, N, opts)
    ref_inputs = [np.asarray(x, np.float64) for x in (*inputs[:3], d_out)]
    scale = opts.get("scale")
    ref_out, _ = reference.attention_forward(
        *ref_inputs[:3], bias=b if bias else None, mask=full_mask, scale=scale
    )
    ref_grads = reference.attention_backward(
        *ref_inputs, bias=b if bias else None, mask=full_mask, scale=scale
    )
    return {
        "out_vs_reference": _max_err(out, ref_out),
        "grads_vs_reference": [_max_err(g, r) for g, r in zip(grads, ref_grads, strict=False)],
        "out_vs_kernel": _max_err(out, k_out),
        "grads_vs_kernel": [_max_err(g, r) for g, r in zip(grads, k_grads, strict=True)],
        "finite": bool(all(np.isfinite(np.asarray(x, np.float32)).all() for x in (out, *grads))),
        "out_dtype": str(out.dtype),
        "grad_dtypes": [str(g.dtype) for g in grads],
        "out_spec": _spec(out),
    }


def _spec(x: Any) -> list[Any] | None:
    spec = getattr(getattr(x, "sharding", None), "spec", None)
    if spec is None:
        return None
    entries = [list(a) if isinstance(a, tuple) else a for a in spec]
    return entries + [None] * (x.ndim - len(entries))  # P("a") means P("a", None, ...)


def _mesh(shape: tuple[int, ...], names: tuple[str, ...], explicit: bool = True) -> Any:
    import jax
    from jax.sharding import AxisType

    kind = AxisType.Explicit if explicit else AxisType.Auto
    return jax.make_mesh(shape, names, axis_types=(kind,) * len(names))


def _ring(**placement: Any) -> Callable[..., Any]:
    import functools

    from zoo.kernels import ring

    return functools.partial(ring.ring_attention, **placement)


def _sorted_ids(seed: int, B: int, L: int, segments: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.integers(0, segments, (B, L)), axis=1).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Checks on 8 devices. Sizes: B = 3 (prime), N = 6 query heads over K = 3, H = 5; sequences
# of 24 (3 per device: odd) or 48 (zigzag: 2 chunks of 3 per device).


def _seq_mesh(explicit: bool = True) -> Any:
    return _mesh((8,), ("seq",), explicit)


def ring_plain() -> dict[str, Any]:
    return _compare(_ring(mesh=_seq_mesh(), axis_name="seq"), (3, 24, 24, 6, 3, 5), {})


def ring_causal() -> dict[str, Any]:
    return _compare(
        _ring(mesh=_seq_mesh(), axis_name="seq"), (3, 24, 24, 6, 3, 5), {"is_causal": True}
    )


def ring_causal_zigzag() -> dict[str, Any]:
    ring = _ring(mesh=_seq_mesh(), axis_name="seq", layout="zigzag")
    return _compare(ring, (3, 48, 48, 6, 3, 5), {"is_causal": True, "scale": 0.37})


def ring_causal_striped() -> dict[str, Any]:
    ring = _ring(mesh=_seq_mesh(), axis_name="seq", layout="striped")
    return _compare(ring, (3, 48, 48, 6, 3, 5), {"is_causal": True})


def ring_padding_zigzag() -> dict[str, Any]:
    # Lengths that leave whole blocks padding, a batch row with no key at all (all zeros),
    # and padded queries (zeros too).
    opts = {
        "is_causal": True,
        "query_seq_lengths": np.array([48, 30, 48], np.int32),
        "key_value_seq_lengths": np.array([37, 48, 0], np.int32),
    }
    ring = _ring(mesh=_seq_mesh(), axis_name="seq", layout="zigzag")
    return _compare(ring, (3, 48, 48, 6, 3, 5), opts)


def ring_segments_window_striped() -> dict[str, Any]:
    opts = {
        "is_causal": True,
        "local_window_size": (5, 0),
        "query_segment_ids": _sorted_ids(1, 3, 48, 4),
        "key_value_segment_ids": _sorted_ids(1, 3, 48, 4),
    }
    ring = _ring(mesh=_seq_mesh(), axis_name="seq", layout="striped")
    return _compare(ring, (3, 48, 48, 6, 3, 5), opts)


def ring_cross_lengths() -> dict[str, Any]:
    # T != S (2 queries and 5 keys per device), upper-left causal, padded keys.
    opts = {"is_causal": True, "key_value_seq_lengths": np.array([40, 13, 1], np.int32)}
    return _compare(_ring(mesh=_seq_mesh(), axis_name="seq"), (3, 16, 40, 6, 3, 5), opts)


def ring_auto_mesh_zigzag() -> dict[str, Any]:
    # A mesh with Auto axes (jax.sharding.Mesh's default) rather than Explicit ones.
    ring = _ring(mesh=_seq_mesh(explicit=False), axis_name="seq", layout="zigzag")
    opts = {"is_causal": True, "key_value_seq_lengths": np.array([48, 20, 33], np.int32)}
    return _compare(ring, (3, 48, 48, 6, 3, 5), opts)


def ring_mesh3d_mqa() -> dict[str, Any]:
    # Sequence, batch and heads split at once; one key/value head for N = 4 query heads
    # over 2 head shards, so the kernel repeats it.
    mesh = _mesh((2, 2, 2), ("data", "seq", "model"))
    ring = _ring(mesh=mesh, axis_name="seq", batch_axis="data", head_axis="model", layout="zigzag")
    return _compare(ring, (2, 12, 12, 4, 1, 5), {"is_causal": True})


def ring_bfloat16() -> dict[str, Any]:
    import jax.numpy as jnp

    ring = _ring(mesh=_seq_mesh(), axis_name="seq", layout="zigzag")
    return _compare(ring, (3, 48, 48, 6, 3, 5), {"is_causal": True}, dtype=jnp.bfloat16)


def ring_unbatched_permute_false() -> dict[str, Any]:
    """The caller permutes into zigzag order once and keeps it (permute=False)."""
    import jax
    import jax.numpy as jnp

    from tests.kernels import reference
    from zoo.kernels import dot_product_attention
    from zoo.kernels.ring import ring_permutation

    mesh = _seq_mesh()
    T, N, K, H = 32, 6, 3, 5
    q, k, v = _random(7, (T, N, H), (T, K, H), (T, K, H))
    seg = _sorted_ids(2, 1, T, 3)[0]
    perm = ring_permutation(T, 8, "zigzag")
    opts = dict(is_causal=True, query_segment_ids=seg, key_value_segment_ids=seg)
    fn = jax.jit(
        lambda q, k, v, s: ring_attention_of(mesh)(
            q, k, v, is_causal=True, query_segment_ids=s, key_value_segment_ids=s
        )
    )
    out_perm = fn(q[perm], k[perm], v[perm], seg[perm])
    out = np.asarray(out_perm)[np.argsort(perm)]
    mask = _reference_mask(
        1, T, T, N, {**opts, "query_segment_ids": seg[None], "key_value_segment_ids": seg[None]}
    )
    ref, _ = reference.attention_forward(q[None], k[None], v[None], mask=mask)
    kernel = dot_product_attention(jnp.asarray(q), k, v, **opts)
    return {
        "out_vs_reference": _max_err(out, ref[0]),
        "out_vs_kernel": _max_err(out, kernel),
        "layout_order_differs": _max_err(out_perm, ref[0]) > 1e-3,
        "shape": list(out_perm.shape),
    }


def ring_attention_of(mesh: Any) -> Callable[..., Any]:
    return _ring(mesh=mesh, axis_name="seq", layout="zigzag", permute=False)


def ring_skips_masked_blocks() -> dict[str, Any]:
    """NaN in the last value row: a chunk that is skipped cannot spread it (0 * NaN = NaN).

    Returns, per layout, which query rows stay finite; the test checks that these are
    exactly the rows whose chunk never computes against the poisoned key's chunk.
    """
    import functools

    import jax
    import jax.numpy as jnp

    from zoo.kernels import dot_product_attention, ring

    T = 48
    q, k, v = _random(3, (1, T, 2, 4), (1, T, 1, 4), (1, T, 1, 4))
    v[0, -1] = np.nan
    finite: dict[str, Any] = {}
    for layout, causal in (("contiguous", True), ("zigzag", True), ("contiguous", False)):
        attention = functools.partial(
            ring.ring_attention,
            mesh=_seq_mesh(),
            axis_name="seq",
            is_causal=causal,
            layout=layout,
        )
        out = jax.jit(attention)(q, k, v)
        rows = np.isfinite(np.asarray(out)).all(axis=(0, 2, 3))
        finite[f"{layout}_causal={causal}"] = np.flatnonzero(rows).tolist()
    kernel = dot_product_attention(jnp.asarray(q), k, v, is_causal=True)
    finite["dense_kernel"] = np.flatnonzero(
        np.isfinite(np.asarray(kernel)).all(axis=(0, 2, 3))
    ).tolist()
    return finite


def hlo_is_a_ring() -> dict[str, Any]:
    """Ops in the compiled forward+backward HLO, inputs already sharded on the sequence."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from zoo.kernels import ring

    mesh = _seq_mesh()
    q, k, v = _random(0, (2, 24, 6, 5), (2, 24, 3, 5), (2, 24, 3, 5))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P(None, "seq")))  # noqa: E731

    def loss(q, k, v):
        out = ring.ring_attention(q, k, v, mesh=mesh, axis_name="seq", is_causal=True)
        return jnp.sum(out**2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(put(q), put(k), put(v)).compile()
    text = compiled.as_text() or ""
    ops = ("collective-permute", "all-gather", "all-to-all", "all-reduce", "conditional")
    return {op: text.count(op) for op in ops}


def head_batch_parallel() -> dict[str, Any]:
    """sharded_attention on a 2 x 4 (data, model) mesh, every option, three GQA layouts."""
    import functools

    from zoo.kernels.sharded import sharded_attention

    rng = np.random.default_rng(5)
    B, T, S, N, H = 2, 5, 7, 8, 3
    mask = rng.random((B, 1, T, S)) < 0.8
    mask[1, 0, 2] = False  # a fully masked query row
    opts = {
        "mask": mask,
        "is_causal": True,
        "key_value_seq_lengths": np.array([7, 4], np.int32),
        "query_segment_ids": np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], np.int32),
        "key_value_segment_ids": np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 2]], np.int32),
        "scale": 0.41,
    }
    results: dict[str, Any] = {}
    # K = 4 is split with N; K = 2 and K = 1 are repeated to the 4 head shards. Both kinds
    # of mesh axes: Explicit (jax.make_mesh's default) and Auto (jax.sharding.Mesh's).
    for K, explicit in ((4, True), (2, False), (1, True)):
        mesh = _mesh((2, 4), ("data", "model"), explicit)
        fn = functools.partial(sharded_attention, mesh=mesh)
        name = f"{'explicit' if explicit else 'auto'}_K={K}"
        results[name] = _compare(fn, (B, T, S, N, K, H), opts, bias=True)
    return results


def head_batch_parallel_extras() -> dict[str, Any]:
    """Weights and log-sum-exp come back sharded; other kernels run unchanged; dropout."""
    import functools

    import jax
    import jax.numpy as jnp

    from zoo.kernels import dot_product_attention
    from zoo.kernels.sharded import sharded_attention

    mesh = _mesh((2, 4), ("data", "model"))
    q, k, v = _random(9, (4, 6, 8, 3), (4, 7, 4, 3), (4, 7, 4, 3))
    out, weights, lse = jax.jit(
        lambda q, k, v: sharded_attention(
            q, k, v, mesh=mesh, is_causal=True, return_weights=True, return_residual=True
        )
    )(q, k, v)
    r_out, r_weights, r_lse = dot_product_attention(
        q, k, v, is_causal=True, return_weights=True, return_residual=True
    )
    theirs = jax.jit(
        lambda q, k, v: sharded_attention(
            q, k, v, mesh=mesh, attention_fn=jax.nn.dot_product_attention, is_causal=True
        )
    )(q, k, v)
    # The memory-efficient kernel (a custom VJP around scans) runs per device unchanged.
    from zoo.kernels.blockwise import blockwise_attention

    def squares(fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda q, k, v: jnp.sum(fn(q, k, v, is_causal=True) ** 2)

    blockwise = functools.partial(sharded_attention, mesh=mesh, attention_fn=blockwise_attention)
    grads = jax.jit(jax.grad(squares(blockwise), argnums=(0, 1, 2)))(q, k, v)
    want_grads = jax.grad(squares(dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    blockwise_out = jax.jit(lambda q, k, v: blockwise(q, k, v, is_causal=True))(q, k, v)

    # Every example and head the same, so only the dropout pattern can tell shards apart.
    same = [np.broadcast_to(x[:1, :, :1], x.shape) for x in (q, k, v)]
    drop = jax.jit(
        lambda rng: sharded_attention(*same, mesh=mesh, dropout_rate=0.5, dropout_rng=rng)
    )
    a, b = drop(jax.random.key(0)), drop(jax.random.key(1))
    shards = np.asarray(a).reshape(2, 2, 6, 4, 2, 3)  # [data shard, b, T, model shard, n, H]

    # Inside jit under `jax.set_mesh`, the abstract mesh of the context serves as well.
    def from_context(q, k, v):
        context = jax.sharding.get_abstract_mesh()
        return sharded_attention(q, k, v, mesh=context, is_causal=True)

    with jax.set_mesh(mesh):
        in_context = jax.jit(from_context)(q, k, v)
    return {
        "out": _max_err(out, r_out),
        "weights": _max_err(weights, r_weights),
        "lse": _max_err(lse, r_lse),
        "jax_nn_kernel": _max_err(theirs, jax.nn.dot_product_attention(q, k, v, is_causal=True)),
        "abstract_mesh": _max_err(in_context, r_out),
        "blockwise_kernel": _max_err(blockwise_out, r_out),
        "blockwise_grads": [_max_err(g, w) for g, w in zip(grads, want_grads, strict=True)],
        "specs": [_spec(x) for x in (out, weights, lse)],
        "dropout_repeatable": _max_err(a, drop(jax.random.key(0))),
        "dropout_changes_with_key": _max_err(a, b),
        "dropout_within_shard": _max_err(shards[:, :1, :, :, :1], shards[:, 1:, :, :, 1:]),
        "dropout_across_shards": _max_err(shards[0, :, :, 0], shards[1, :, :, 1]),
    }


# --------------------------------------------------------------------------------------------
# A model on the ring: 4 devices.


def ring_transformer_lm() -> dict[str, Any]:
    """A TransformerLM with ``ring_attention`` as its kernel, as it stands (no adapter),
    against the same parameters on the reference kernel: logits and parameter gradients,
    both under one ``jax.jit``. Attention dropout is configured but off (no rngs), so the
    model passes the kernel ``dropout_rate=0.1, deterministic=True``; then, eagerly, the
    two requests the ring refuses: the weights and active attention dropout."""
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from zoo.kernels import ring
    from zoo.models.transformer import TransformerConfig, TransformerLM

    config = TransformerConfig(
        vocab_size=11,
        model_dim=16,
        ff_dim=24,
        num_heads=2,
        num_layers=2,
        attention_dropout_rate=0.1,
        max_length=16,
    )
    # Auto axes: with Explicit ones the ring's sequence sharding enters the types of the
    # later activations, and the gradient of a model whose parameters are not on the mesh
    # raises a ShardingTypeError (JAX 0.10.2).
    mesh = _mesh((4,), ("seq",), explicit=False)
    kernel = functools.partial(ring.ring_attention, mesh=mesh, axis_name="seq", layout="zigzag")
    model = TransformerLM(config, kernel=kernel, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    reference = nnx.graphdef(nnx.eval_shape(lambda: TransformerLM(config, rngs=nnx.Rngs(0))))

    rng = np.random.default_rng(4)
    B, T = 2, 16  # zigzag on 4 devices: 8 chunks of 2 tokens
    tokens = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    d_logits = rng.standard_normal((B, T, config.vocab_size)).astype(np.float32)

    def loss(graph: Any, state: Any, tokens: Any) -> Any:
        logits = nnx.merge(graph, state)(tokens)
        return jnp.sum(logits * d_logits), logits

    @jax.jit
    def both(state: Any, tokens: Any) -> Any:
        grad = jax.value_and_grad(loss, argnums=1, has_aux=True)
        return grad(graphdef, state, tokens), grad(reference, state, tokens)

    ((_, logits), grads), ((_, want), want_grads) = both(state, tokens)
    grad_errors = jax.tree.leaves(jax.tree.map(_max_err, grads, want_grads))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    refusals = {}
    for name, call in (
        ("return_weights", lambda: model(tokens, return_weights=True)),
        ("dropout", lambda: model(tokens, rngs=nnx.Rngs(dropout=1))),
    ):
        try:
            call()
            refusals[name] = None
        except ValueError as e:
            refusals[name] = str(e)
    return {
        "logits_vs_reference": _max_err(logits, want),
        "logits_scale": float(np.max(np.abs(np.asarray(want)))),
        "grads_vs_reference": max(grad_errors),
        "grad_scale": max(float(np.max(np.abs(np.asarray(g)))) for g in jax.tree.leaves(grads)),
        "grad_leaves": len(grad_errors),
        "param_leaves": len(params),
        "refusals": refusals,
    }


# --------------------------------------------------------------------------------------------
# The multi-process check: each of 2 processes has 2 local CPU devices; the ring spans all 4.


def distributed_ring() -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from tests.kernels import reference
    from zoo.kernels.ring import ring_attention

    mesh = _mesh((jax.device_count(),), ("seq",))
    B, T, N, K, H = 2, 24, 6, 3, 5
    q, k, v, d_out = _random(11, (B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H))
    lengths = np.array([24, 17], np.int32)
    replicated = NamedSharding(mesh, P())

    def global_array(x: np.ndarray) -> Any:
        # Every process holds the whole array; each device takes what its index selects.
        return jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])

    def loss(q, k, v):
        out = ring_attention(
            q,
            k,
            v,
            mesh=mesh,
            axis_name="seq",
            is_causal=True,
            layout="zigzag",
            key_value_seq_lengths=jnp.asarray(lengths),
        )
        return jnp.sum(out * d_out), out

    step = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), out_shardings=replicated
    )
    (_, out), grads = step(*(global_array(x) for x in (q, k, v)))
    local = [np.asarray(x.addressable_shards[0].data) for x in (out, *grads)]
    mask = _reference_mask(B, T, T, N, {"is_causal": True, "key_value_seq_lengths": lengths})
    ref_out, _ = reference.attention_forward(q, k, v, mask=mask)
    ref_grads = reference.attention_backward(q, k, v, d_out, mask=mask)
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "mesh_processes": sorted({d.process_index for d in mesh.devices.flat}),
        "out_vs_reference": _max_err(local[0], ref_out),
        "grads_vs_reference": [
            _max_err(g, r) for g, r in zip(local[1:], ref_grads[:3], strict=True)
        ],
    }


CHECKS: dict[str, Callable[[], Any]] = {
    f.__name__: f
    for f in (
        ring_plain,
        ring_causal,
        ring_causal_zigzag,
        ring_causal_striped,
        ring_padding_zigzag,
        ring_segments_window_striped,
        ring_cross_lengths,
        ring_auto_mesh_zigzag,
        ring_mesh3d_mqa,
        ring_bfloat16,
        ring_unbatched_permute_false,
        ring_skips_masked_blocks,
        hlo_is_a_ring,
        head_batch_parallel,
        head_batch_parallel_extras,
        ring_transformer_lm,
        distributed_ring,
    )
}

if __name__ == "__main__":
    main()
