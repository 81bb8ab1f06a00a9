"""Mesh checks and placement shared by the sharded and ring kernels (private)."""

from collections.abc import Callable
from typing import Any

import jax
from jax import lax
from jax.sharding import AxisType, NamedSharding, auto_axes
from jax.sharding import PartitionSpec as P

__all__ = ["arrange", "check_axes", "check_divides", "kv_repeats"]


def check_axes(mesh: Any, **axes: str | None) -> None:
    """Each named mesh axis exists and no axis is used twice."""
    named = {arg: a for arg, a in axes.items() if a is not None}
    for arg, a in named.items():
        if a not in mesh.axis_names:
            raise ValueError(f"{arg}={a!r} is not an axis of the mesh {tuple(mesh.axis_names)}")
    used = list(named.values())
    if len(set(used)) != len(used):
        raise ValueError(f"mesh axes must be distinct, got {named}")


def check_divides(size: int, what: str, mesh: Any, axis: str | None, arg: str) -> None:
    if axis is not None and size % mesh.shape[axis]:
        raise ValueError(
            f"{what}={size} must be a multiple of the {mesh.shape[axis]} devices on {arg}={axis!r}"
        )


def kv_repeats(K: int, N: int, mesh: Any, head_axis: str | None) -> int:
    """How often to repeat each key/value head so they split over ``head_axis`` with N."""
    if head_axis is None:
        return 1
    shards = mesh.shape[head_axis]
    check_divides(N, "query heads N", mesh, head_axis, "head_axis")
    if K % shards == 0:
        return 1
    if shards % K == 0:
        # Query heads on device d read key/value head n // G = d // (shards / K): repeating
        # each head shards / K times puts exactly that head on device d.
        return shards // K
    raise ValueError(
        f"key/value heads K={K} and the {shards} devices on head_axis={head_axis!r} must "
        "divide one another, so that each device's query heads share whole key/value heads"
    )


def arrange(fn: Callable[..., Any], mesh: Any, specs: Any, *args: Any) -> Any:
    """``fn(*args)``, its outputs laid out on ``mesh`` as ``specs`` for ``shard_map``.

    On a mesh with Explicit axes (the default of ``jax.make_mesh``) arrays carry their
    sharding in their type, ``shard_map`` insists that it equal ``in_specs``, and a gather
    along a sharded axis must be told its output sharding; ``auto_axes`` lets XLA choose the
    data movement and then fixes the result's sharding. On Auto axes a sharding constraint
    says the same to XLA's partitioner.
    """
    explicit = tuple(
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind == AxisType.Explicit
    )
    shardings = jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
    )
    if not explicit:
        return lax.with_sharding_constraint(fn(*args), shardings)
    return auto_axes(fn, axes=explicit, out_sharding=shardings)(*args)
