"""Multi-device checks of the drop-in kernels, run in a fresh process by test_drop_in.py.

The number of CPU devices must be fixed before JAX starts, so these checks cannot run in the
pytest process. The worker sets the device count, runs the named checks and prints one line
``RESULT {json}``. It only measures (errors, shardings, differences); the asserts live in
test_drop_in.py, so a failure reads as a normal pytest failure. A check that raises reports
its error instead of crashing the worker, so the others still report.

    python -m tests.kernels.drop_in_worker --devices 4 explicit_mesh
"""

import argparse
import json
import traceback
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checks", nargs="+")
    parser.add_argument("--devices", type=int, required=True, help="CPU devices")
    args = parser.parse_args()

    import jax

    # Before anything touches a backend: the device count is fixed at initialization.
    jax.config.update("jax_num_cpu_devices", args.devices)
    results = {name: CHECKS[name]() for name in args.checks}
    print("RESULT " + json.dumps(results), flush=True)


def _max_err(got: Any, want: Any) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got - want), initial=0.0))


def _spec(x: Any) -> list[Any] | None:
    spec = getattr(getattr(x, "sharding", None), "spec", None)
    if spec is None:
        return None
    entries = [list(a) if isinstance(a, tuple) else a for a in spec]
    return entries + [None] * (x.ndim - len(entries))  # P("a") means P("a", None, ...)


def explicit_mesh() -> dict[str, Any]:
    """dot_product_attention and blockwise_attention on a 2 x 2 (data, model) mesh with
    Explicit axes (``jax.set_mesh``): batch over "data", heads over "model", every masking
    option given as a sharded array. Values, residual and gradients against the same call on
    unsharded arrays, under jit.

    Cases: GQA with K = 2 key/value heads split over "model" like the N = 6 query heads, and
    MQA (K = 1) with the one key/value head replicated.
    """
    import functools

    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from zoo.kernels import blockwise_attention, dot_product_attention

    B, T, S, N, H = 2, 13, 11, 6, 5
    kernels = {
        "reference": dot_product_attention,
        "blockwise": functools.partial(
            blockwise_attention, query_block_size=4, key_value_block_size=3
        ),
    }
    # Unoptimized machine code: the same numbers, several times faster to compile.
    _jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    rng = np.random.default_rng(0)
    mask = rng.random((B, 1, T, S)) < 0.8
    mask[1, 0, 3] = False  # a row with no key to attend
    extras = {
        "mask": mask,
        "query_seq_lengths": np.array([13, 9], np.int32),
        "key_value_seq_lengths": np.array([11, 6], np.int32),
        "query_segment_ids": np.sort(rng.integers(0, 2, (B, T)), axis=1).astype(np.int32),
        "key_value_segment_ids": np.sort(rng.integers(0, 2, (B, S)), axis=1).astype(np.int32),
    }
    data_spec = {
        "mask": P("data"),
        "query_seq_lengths": P("data"),
        "key_value_seq_lengths": P("data"),
        "query_segment_ids": P("data"),
        "key_value_segment_ids": P("data"),
    }

    def value_and_grads(kernel: Any) -> Any:
        def f(q: Any, k: Any, v: Any, bias: Any, d_out: Any, extras: dict[str, Any]) -> Any:
            def loss(q: Any, k: Any, v: Any, bias: Any) -> Any:
                out, lse = kernel(q, k, v, bias, is_causal=True, return_residual=True, **extras)
                return jnp.sum(out * d_out), (out, lse)

            (_, (out, lse)), grads = jax.value_and_grad(loss, (0, 1, 2, 3), has_aux=True)(
                q, k, v, bias
            )
            return out, lse, grads

        return f

    cases: dict[str, Any] = {}  # name -> (function, inputs, key/value head axis)
    for K, kv_heads_axis in ((2, "model"), (1, None)):
        q, k, v, bias, d_out = (
            rng.standard_normal(s).astype(np.float32)
            for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H), (B, N, T, S), (B, T, N, H))
        )
        inputs = dict(q=q, k=k, v=v, bias=bias, d_out=d_out, extras=extras)
        for name, kernel in kernels.items():
            cases[f"{name}_K={K}"] = (value_and_grads(kernel), inputs, kv_heads_axis)
    # The unsharded calls, all in one program.
    wanted = _jit(lambda inputs: {case: cases[case][0](**inputs[case]) for case in inputs})
    wants = wanted({case: inputs for case, (_, inputs, _) in cases.items()})

    results: dict[str, Any] = {}
    for case, (fn, inputs, kv_heads_axis) in cases.items():
        want = wants[case]
        try:
            with jax.set_mesh(mesh):
                put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
                qkv = P("data", None, "model")
                sharded = dict(
                    q=put(inputs["q"], qkv),
                    k=put(inputs["k"], P("data", None, kv_heads_axis)),
                    v=put(inputs["v"], P("data", None, kv_heads_axis)),
                    bias=put(inputs["bias"], P("data", "model")),
                    d_out=put(inputs["d_out"], qkv),
                    extras={n: put(x, data_spec[n]) for n, x in inputs["extras"].items()},
                )
                out, lse, grads = _jit(fn)(**sharded)
        except Exception:  # reported to the test, which fails with it
            results[case] = {"error": traceback.format_exc(limit=-8)}
            continue
        results[case] = {
            "out": _max_err(out, want[0]),
            "lse": _max_err(lse, want[1]),
            "grads": [_max_err(g, w) for g, w in zip(grads, want[2], strict=True)],
            "finite": bool(all(np.isfinite(np.asarray(x)).all() for x in (out, lse, *grads))),
            "out_spec": _spec(out),
            "scale": float(np.abs(np.asarray(want[0])).max()),
        }
    return results


CHECKS = {"explicit_mesh": explicit_mesh}

if __name__ == "__main__":
    main()
