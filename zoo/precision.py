"""Mixed precision: the dtype names a model config accepts, and what they resolve to.

Every model config has two fields read here: ``dtype``, the dtype of activations and matmuls,
and ``param_dtype``, the dtype the parameters are stored (and updated) in. The usual recipe is
bfloat16 compute over float32 parameters (Micikevicius et al. 2018, sec. 3.1: a float32 master
copy of the weights; bfloat16 has float32's exponent range, so unlike float16 it needs no loss
scaling). What stays in float32 whatever ``dtype`` says is each model's business, stated in
its docstring: softmax inside the kernels, normalization statistics, recurrent states, the loss.
"""

import jax
import jax.numpy as jnp

__all__ = ["AUTO_ON_ACCELERATORS", "COMPUTE_DTYPES", "PARAM_DTYPES", "check", "resolve"]

# "auto": float32 on CPU (where bfloat16 saves no time and costs accuracy), else bfloat16.
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
# What "auto" means on GPU and TPU (a module setting, so that a test suite with float32
# tolerances can run its models in float32 there).
AUTO_ON_ACCELERATORS = "bfloat16"
PARAM_DTYPES = ("float32", "bfloat16", "float16")


def check(dtype: str, param_dtype: str) -> None:
    """Raise a ``ValueError`` naming the field unless both names are known."""
    for name, value, options in (
        ("dtype", dtype, COMPUTE_DTYPES),
        ("param_dtype", param_dtype, PARAM_DTYPES),
    ):
        if value not in options:
            raise ValueError(f"{name} must be one of {options}, got {value!r}")


def resolve(dtype: str, param_dtype: str) -> tuple[jnp.dtype, jnp.dtype]:
    """``(compute dtype, parameter dtype)``; "auto" is decided by the default backend now."""
    check(dtype, param_dtype)
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else AUTO_ON_ACCELERATORS
    return jnp.dtype(dtype), jnp.dtype(param_dtype)
