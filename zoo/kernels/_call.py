"""The one front end of the dot-product kernels (private): checks, batch dims, heads, masks.

Every public dot-product kernel takes ``jax.nn.dot_product_attention``'s call (plus segment
ids, dropout and the weights on request) and hands it to :func:`attend` with its *core*, a
function of one normalized :class:`Call`. The front end does, once for all kernels:

* checks at trace time, each error naming the argument, the shape expected (in the
  ``zoo.shapes`` letters, sizes bound) and the shape given;
* any number of leading batch dims ``[*batch, T, N, H]`` (flax passes several), flattened to
  one ``B`` for the core and restored on the way out;
* grouped-query heads: bias and mask laid out ``[b, k, g, t, s]`` (each axis 1 or full), so
  query head ``n`` meets key/value head ``n // G`` without copying keys N / K times;
* masks: bool, or any number read as attend-where-nonzero (flax's masks are float32);
  lengths and segment ids checked and kept as such, so each core builds the combined mask
  with :func:`zoo.kernels.masks.position_mask` where it needs it (whole or per block);
* explicit-sharding meshes: the core runs under ``auto_axes``, which lets XLA place its
  reshapes, and the outputs come back sharded like the query;
* outputs: the log-sum-exp residual in the input dtype (as jax.nn returns it), finite for a
  row with nothing to attend, and flax's ``module=`` weight sowing.

A core returns ``(out [B, T, N, H], weights [B, N, T, S] or None, lse [B, T, N])`` with
``lse`` in float32 or wider, ``MASK_VALUE`` for an empty row.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, auto_axes
from jax.sharding import PartitionSpec as P

from zoo.kernels import masks as masks_lib
from zoo.shapes import Array, PRNGKey

__all__ = [
    "Call",
    "Options",
    "attend",
    "check_block_size",
    "check_qkv",
    "platform_of",
    "prepare",
]


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything static about one call; hashable, so it can be a custom_vjp static arg."""

    scale: float
    is_causal: bool
    window: tuple[int, int] | None  # (left, right)
    dropout_rate: float  # 0.0 when dropout is off
    broadcast_dropout: bool
    precision: Any

    @property
    def banded(self) -> bool:
        """Whether positions alone leave whole blocks empty (causal or a local window)."""
        return self.is_causal or self.window is not None


@dataclasses.dataclass(frozen=True)
class Call:
    """One validated call with a single batch axis; what every core receives."""

    query: Array  # [B, T, N, H]
    key: Array  # [B, S, K, H]
    value: Array  # [B, S, K, H]
    bias: Array | None  # [b, k, g, t, s], each axis 1 or full
    mask: Array | None  # bool, [b, k, g, t, s]
    query_lengths: Array | None  # int32 [B]
    key_lengths: Array | None  # int32 [B]
    query_segments: Array | None  # int32 [B, T]
    key_segments: Array | None  # int32 [B, S]
    dropout_rng: PRNGKey | None  # None when dropout is off
    options: Options

    @property
    def shape(self) -> tuple[int, int, int, int, int, int]:
        """``(B, T, S, K, G, H)``."""
        B, T, N, H = self.query.shape
        S, K = self.key.shape[1:3]
        return B, T, S, K, N // K, H


# (out, weights or None, lse or None): a core that cannot give the log-sum-exp returns None
# and is never chosen for a call that asks for it (zoo.kernels.dispatch).
Core = Callable[[Call, bool], tuple[Array, Array | None, Array | None]]


def check_block_size(name: str, size: int | None) -> int | None:
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"{name} must be a positive int, got {size!r}")
    return size


def attend(
    core: Core,
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None,
    mask: Array | None,
    *,
    scale: float | None,
    is_causal: bool,
    query_seq_lengths: Array | None,
    key_value_seq_lengths: Array | None,
    local_window_size: int | tuple[int, int] | None,
    query_segment_ids: Array | None,
    key_value_segment_ids: Array | None,
    dropout_rate: float,
    dropout_rng: PRNGKey | None,
    broadcast_dropout: bool,
    deterministic: bool,
    return_weights: bool,
    return_residual: bool,
    dtype: Any,
    precision: Any,
    module: Any,
    forms_weights: bool,
    kernel_name: str,
    places_itself: bool = False,
) -> Array | tuple[Array, ...]:
    """Check and normalize the call, run ``core`` on it, and lay its outputs back out.

    ``forms_weights`` says whether the core can return the ``[B, N, T, S]`` weights
    (``return_weights`` and ``module=`` need them); ``kernel_name`` goes into the errors.
    ``places_itself``: the core lays its arrays out on a mesh of its own (ring attention),
    so it runs as it is on explicit-sharding meshes too.
    """
    if not forms_weights and (return_weights or module is not None):
        what = "return_weights" if return_weights else "sow weights into module="
        raise ValueError(
            f"{kernel_name} cannot {what}: the [B, N, T, S] weights are what it never "
            "materializes; call zoo.kernels.dot_product_attention(..., implementation="
            "'reference') for them"
        )
    if dtype is not None:
        query, key, value = (jnp.asarray(x, dtype) for x in (query, key, value))
    arrays: dict[str, Any] = {
        "query": jnp.asarray(query),
        "key": jnp.asarray(key),
        "value": jnp.asarray(value),
        "bias": bias,
        "mask": mask,
        "query_seq_lengths": query_seq_lengths,
        "key_value_seq_lengths": key_value_seq_lengths,
        "query_segment_ids": query_segment_ids,
        "key_value_segment_ids": key_value_segment_ids,
    }
    window = masks_lib.normalize_window(local_window_size)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    use_dropout = dropout_rate > 0.0 and not deterministic
    if use_dropout and dropout_rng is None:
        raise ValueError("dropout_rng is required when dropout_rate > 0 and not deterministic")
    arrays["dropout_rng"] = dropout_rng if use_dropout else None
    H = arrays["query"].shape[-1] if arrays["query"].ndim else 0
    options = Options(
        scale=float(H**-0.5 if scale is None else scale),
        is_causal=bool(is_causal),
        window=window,
        dropout_rate=float(dropout_rate) if use_dropout else 0.0,
        broadcast_dropout=bool(broadcast_dropout),
        precision=precision,
    )
    want_weights = return_weights or module is not None
    batch = check_qkv(arrays["query"], arrays["key"], arrays["value"])

    def run(arrays: dict[str, Any]) -> tuple[Array, Array | None, Array | None]:
        call = prepare(arrays, options, batch)
        out, weights, lse = core(call, want_weights)
        _, T, S, K, G, H = call.shape
        out = out.reshape(*batch, T, K * G, H)
        if weights is not None:
            weights = weights.reshape(*batch, K * G, T, S)
        if not return_residual:
            return out, weights, None
        assert lse is not None, "the dispatch gives a residual whenever one is asked for"
        # The residual in the input dtype, as jax.nn returns it; an empty row's MASK_VALUE
        # clipped to the dtype's own large negative number so that it stays finite.
        low = masks_lib.mask_value(call.key.dtype)
        lse = jnp.maximum(lse, low).astype(call.key.dtype).reshape(*batch, T, K * G)
        return out, weights, lse

    if places_itself:
        out, weights, lse = run(arrays)
    else:
        out, weights, lse = _under_explicit_axes(run, arrays, batch, want_weights, return_residual)
    if module is not None:
        _sow(module, weights, out.dtype)
    extras: list[Array] = []
    if return_weights:
        assert weights is not None
        extras.append(weights)
    if return_residual:
        assert lse is not None
        extras.append(lse)
    return (out, *extras) if extras else out


def check_qkv(query: Array, key: Array, value: Array) -> tuple[int, ...]:
    """Check query, key and value; return the leading batch dims."""
    if query.ndim < 3:
        raise ValueError(
            f"query must be [*batch, T, N, H] (e.g. [B, T, N, H] or [T, N, H]), got shape "
            f"{query.shape}"
        )
    batch = tuple(query.shape[:-3])
    if key.ndim != query.ndim or tuple(key.shape[:-3]) != batch:
        letters = ", ".join([*batch_letters(batch), "S, K, H"])
        sizes = ", ".join([*(str(b) for b in batch), "S, K, H"])
        raise ValueError(
            f"key must be [{letters}] = [{sizes}] with query's batch dims, got shape {key.shape}"
        )
    if value.shape != key.shape:
        raise ValueError(f"value must have key's shape {key.shape}, got {value.shape}")
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(
            "query, key and value must share one dtype, got "
            f"{query.dtype}, {key.dtype}, {value.dtype}"
        )
    T, N, H = query.shape[-3:]
    S, K, Hk = key.shape[-3:]
    if Hk != H:
        raise ValueError(f"key head dim must equal query head dim H={H}, got key shape {key.shape}")
    if K == 0 or N % K:
        raise ValueError(
            f"key/value heads K={K} must divide query heads N={N} (query shape "
            f"{query.shape}, key shape {key.shape})"
        )
    if S == 0 or T == 0:
        raise ValueError(
            f"query length T and key length S must be positive, got T={T} (query shape "
            f"{query.shape}) and S={S} (key shape {key.shape})"
        )
    return batch


def prepare(arrays: dict[str, Any], options: Options, batch: tuple[int, ...]) -> Call:
    """The checked call with its batch dims flattened to one ``B``."""
    query, key, value = arrays["query"], arrays["key"], arrays["value"]
    T, N, H = query.shape[-3:]
    S, K, _ = key.shape[-3:]
    B = math.prod(batch)
    names = batch_letters(batch)
    weights_shape = (*batch, N, T, S)
    weights_letters = "[" + ", ".join([*names, "N, T, S"]) + "]"

    grouped: dict[str, Array | None] = {}
    for name in ("bias", "mask"):
        x = arrays[name]
        if x is None:
            grouped[name] = None
            continue
        x = jnp.asarray(x)
        if name == "bias" and not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"bias must be floating point, got dtype {x.dtype}")
        fits = x.ndim <= len(weights_shape) and all(
            d in (1, n) for d, n in zip(x.shape[::-1], weights_shape[::-1], strict=False)
        )
        if not fits:
            raise ValueError(
                f"{name} must broadcast to {weights_letters} = {list(weights_shape)}, "
                f"got shape {x.shape}"
            )
        if name == "mask" and x.dtype != jnp.bool_:
            if not (jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.floating)):
                raise TypeError(
                    f"mask must be bool or real numbers (nonzero = attend), got dtype {x.dtype}"
                )
            x = x != 0  # attend where nonzero, as flax reads its float masks
        grouped[name] = _grouped(x, batch, K, N // K)

    def ids(name: str, shape: tuple[int, ...], letters: list[str]) -> Array | None:
        x = arrays[name]
        if x is None:
            return None
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
        if x.shape != shape:
            expected = "[" + ", ".join(letters) + "]"
            raise ValueError(f"{name} must be {expected} = {list(shape)}, got shape {x.shape}")
        return x.astype(jnp.int32).reshape(B, *shape[len(batch) :])

    q_len = ids("query_seq_lengths", batch, names)
    kv_len = ids("key_value_seq_lengths", batch, names)
    _check_lengths("query_seq_lengths", q_len, T, "T")
    _check_lengths("key_value_seq_lengths", kv_len, S, "S")
    q_ids, kv_ids = arrays["query_segment_ids"], arrays["key_value_segment_ids"]
    if (q_ids is None) != (kv_ids is None):
        raise ValueError("query_segment_ids and key_value_segment_ids must be given together")
    return Call(
        query=query.reshape(B, T, N, H),
        key=key.reshape(B, S, K, H),
        value=value.reshape(B, S, K, H),
        bias=grouped["bias"],
        mask=grouped["mask"],
        query_lengths=q_len,
        key_lengths=kv_len,
        query_segments=ids("query_segment_ids", (*batch, T), [*names, "T"]),
        key_segments=ids("key_value_segment_ids", (*batch, S), [*names, "S"]),
        dropout_rng=arrays["dropout_rng"],
        options=options,
    )


def platform_of(x: Array, mesh: Any = None) -> str:
    """The platform ("cpu", "gpu", "tpu") a computation on ``x`` runs on, as far as trace
    time can tell: ``mesh``'s when given, else the current mesh's (inside ``shard_map``),
    else ``x``'s devices if it is concrete, else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh.abstract_mesh
    device = getattr(mesh, "abstract_device", None)
    if device is not None:
        return str(device.platform)
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return str(next(iter(x.devices())).platform)
    return jax.default_backend()


def batch_letters(batch: tuple[int, ...]) -> list[str]:
    """``B`` for one batch dim, ``B1, B2, ...`` for several (the letters of the errors)."""
    return ["B"] if len(batch) == 1 else [f"B{i + 1}" for i in range(len(batch))]


def _grouped(x: Array, batch: tuple[int, ...], K: int, G: int) -> Array:
    """A bias or mask broadcastable to ``[*batch, N, T, S]`` as ``[b, k, g, t, s]``.

    ``b`` is 1 when ``x`` is shared by the whole batch, else ``B``; ``(k, g)`` is ``(1, 1)``
    for one shared head, else ``(K, G)``: query head ``n = k G + g`` reads key head ``k``.
    """
    x = x.reshape((1,) * (len(batch) + 3 - x.ndim) + x.shape)
    lead, (n, t, s) = x.shape[: len(batch)], x.shape[len(batch) :]
    if any(d != 1 for d in lead):
        x = jnp.broadcast_to(x, (*batch, n, t, s))
        b = math.prod(batch)
    else:
        b = 1
    return x.reshape(b, 1, 1, t, s) if n == 1 else x.reshape(b, K, G, t, s)


def _check_lengths(name: str, lengths: Array | None, most: int, letter: str) -> None:
    """Lengths outside ``[0, most]`` are an error, when their values are known at trace time."""
    if lengths is None:
        return
    try:
        values = np.asarray(lengths)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return  # traced: the values are known only when the computation runs
    if values.size and (values.min() < 0 or values.max() > most):
        raise ValueError(
            f"{name} must lie in [0, {letter}={most}], got values from {values.min()} to "
            f"{values.max()}"
        )


def _under_explicit_axes(
    run: Callable[[dict[str, Any]], tuple[Array, Array | None, Array | None]],
    arrays: dict[str, Any],
    batch: tuple[int, ...],
    want_weights: bool,
    want_residual: bool,
) -> tuple[Array, Array | None, Array | None]:
    """``run(arrays)``; on a mesh with Explicit axes, under ``auto_axes``.

    With explicit sharding every array carries its sharding in its type, and a reshape that
    merges or splits a sharded axis (the batch dims into ``B``, the heads into ``K x G``)
    must say where its result lives. Under ``auto_axes`` XLA's partitioner decides, and the
    outputs are then fixed to the layout the caller gave: sharded like the query.
    """
    sharding: Any = jax.typeof(arrays["query"]).sharding
    mesh: Any = getattr(sharding, "mesh", None)
    names, kinds = getattr(mesh, "axis_names", ()), getattr(mesh, "axis_types", ())
    explicit = tuple(a for a, kind in zip(names, kinds, strict=True) if kind == AxisType.Explicit)
    if not explicit:
        return run(arrays)
    spec = tuple(sharding.spec) + (None,) * (arrays["query"].ndim - len(sharding.spec))
    lead, (t, n, h) = spec[: len(batch)], spec[len(batch) :]
    out_sharding = (
        NamedSharding(mesh, P(*lead, t, n, h)),
        NamedSharding(mesh, P(*lead, n, t, None)) if want_weights else None,
        NamedSharding(mesh, P(*lead, t, n)) if want_residual else None,
    )
    return auto_axes(run, axes=explicit, out_sharding=out_sharding)(arrays)


def _sow(module: Any, weights: Array | None, dtype: Any) -> None:
    """Store the weights in ``module``'s ``nnx.Intermediate`` collection, as flax's own
    ``dot_product_attention_weights`` does (flax imported only for a caller that is flax)."""
    from flax import nnx

    assert weights is not None
    module.sow(nnx.Intermediate, "attention_weights", weights.astype(dtype))
