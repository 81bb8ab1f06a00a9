"""Input checks shared by the additive and multiplicative kernels (private).

:func:`prepare_additive` is the whole check of an additive call, so that the reference and
the blockwise additive kernels fail alike.

They run at trace time on static shapes and name the argument, the expected shape in the
``zoo.shapes`` letters with the sizes bound so far, and the shape given.
"""

import jax.numpy as jnp

from zoo.shapes import Array


def check_shape(name: str, x: Array, axes: tuple[str, ...], sizes: dict[str, int]) -> None:
    """Raise unless ``x`` has one axis per letter and the sizes already bound in ``sizes``."""
    # `or` short-circuits, so zip only ever sees equal lengths.
    if x.ndim != len(axes) or any(sizes.get(a, n) != n for a, n in zip(axes, x.shape, strict=True)):
        letters = "[" + ", ".join(axes) + "]"
        numbers = "[" + ", ".join(str(sizes.get(a, a)) for a in axes) + "]"
        expected = letters if numbers == letters else f"{letters} = {numbers}"
        raise ValueError(f"{name} must be {expected}, got shape {x.shape}")
    sizes.update(zip(axes, x.shape, strict=True))


def check_dtypes(dtype: jnp.dtype, **arrays: Array) -> None:
    for name, x in arrays.items():
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
        if x.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype} like the other inputs, got {x.dtype}")


def check_mask(mask: Array, shape: tuple[int, ...], axes: tuple[str, ...]) -> Array:
    """A bool mask that broadcasts to ``shape`` without help, padded to its rank."""
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be bool (True = attend), got dtype {mask.dtype}")
    fits = mask.ndim <= len(shape) and all(
        d in (1, n) for d, n in zip(mask.shape[::-1], shape[::-1], strict=False)
    )
    if not fits:
        letters = "[" + ", ".join(axes) + "]"
        raise ValueError(
            f"mask must broadcast to {letters} = {list(shape)}, got shape {mask.shape}"
        )
    return mask.reshape((1,) * (len(shape) - mask.ndim) + mask.shape)


def prepare_additive(
    query: Array,
    projected_keys: Array,
    values: Array | None,
    w_query: Array,
    v: Array,
    mask: Array | None,
) -> tuple[Array, Array, Array | None, Array, Array, Array | None, bool]:
    """Check an additive-attention call at trace time; return the arrays with a batch axis."""
    query, projected_keys = jnp.asarray(query), jnp.asarray(projected_keys)
    w_query, v = jnp.asarray(w_query), jnp.asarray(v)
    if projected_keys.ndim not in (2, 3):
        raise ValueError(
            f"projected_keys must be [B, S, A] or [S, A], got shape {projected_keys.shape}"
        )
    batched = projected_keys.ndim == 3
    lead = ("B",) if batched else ()
    sizes: dict[str, int] = {}
    check_shape("projected_keys", projected_keys, (*lead, "S", "A"), sizes)
    check_shape("query", query, (*lead, "T", "D_q"), sizes)
    check_shape("w_query", w_query, ("D_q", "A"), sizes)
    check_shape("v", v, ("A",), sizes)
    arrays = {"query": query, "projected_keys": projected_keys, "w_query": w_query, "v": v}
    if values is not None:
        values = jnp.asarray(values)
        check_shape("values", values, (*lead, "S", "D_v"), sizes)
        arrays["values"] = values
    check_dtypes(query.dtype, **arrays)
    if mask is not None:
        mask = check_mask(mask, tuple(sizes[a] for a in (*lead, "T", "S")), (*lead, "T", "S"))
    if not batched:
        query, projected_keys = query[None], projected_keys[None]
        values = None if values is None else values[None]
        mask = None if mask is None else mask[None]
    return query, projected_keys, values, w_query, v, mask, batched
