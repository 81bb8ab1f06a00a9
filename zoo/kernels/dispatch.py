"""Which kernel runs a dot-product call: ``implementation=None`` resolved from static facts.

:func:`zoo.kernels.dot_product_attention` hands every call here. The choice is made at trace
time from what is static about the call: the platform (of the mesh inside ``shard_map``, of
the arrays when they are concrete, else JAX's default backend), the dtype, the shapes and
which options are set. Backends, in the order tried:

* GPU: tokamax's Mosaic GPU and Triton flash kernels (PyPI ``tokamax``, openxla's Pallas
  kernel library, the ``accelerators`` extra), then cuDNN's fused attention through
  ``jax.nn.dot_product_attention(implementation="cudnn")``, then the zoo's own kernels.
* TPU: tokamax's Mosaic TPU kernel, then the zoo's own.
* CPU: the zoo's reference kernel for short sequences (its one matmul per head beats a loop
  of small ones), the blockwise kernel for long ones.

The zoo's kernels run every call (dropout, segment ids, the weights, the residual); the
others only what they support, checked here before they are tried. A name forces one
backend (an error says why it cannot run); a sequence of names is tried in order, falling
through on ``NotImplementedError``, as tokamax does. Backends keep the zoo's contract:
the scale is passed explicitly, and a query row with nothing to attend gives zeros (the
others give the mean of the values there). :func:`explain` says which backend a call gets
and why the ones before it were passed over.
"""

import dataclasses
import functools
import importlib.metadata
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from zoo.kernels import _call
from zoo.kernels import masks as masks_lib
from zoo.shapes import Array

__all__ = ["IMPLEMENTATIONS", "Choice", "Facts", "choose", "dispatching_core", "explain"]

# tokamax's flash kernels by backend name ("tokamax.<name>"); "tokamax" lets tokamax pick.
_TOKAMAX = ("mosaic", "triton", "cudnn", "xla_chunked", "xla")
IMPLEMENTATIONS = (
    "reference",
    "xla",
    "blockwise",
    "cudnn",
    "tokamax",
    *(f"tokamax.{name}" for name in _TOKAMAX),
)
_ZOO = ("reference", "xla", "blockwise")

# Up to this many query x key positions the reference kernel (one [T, S] matmul per head)
# is the faster on CPU; beyond, the blockwise one (whose memory is also linear). On a 2-core
# AMD EPYC (AVX2), B=8 N=6 H=64 causal: reference/blockwise time 0.72 (forward+backward) at
# T = S = 64, 1.0 at 128, 1.4 at 256; decoding one query over 1,024 keys, 0.36.
_SHORT_POSITIONS = 128 * 128


@dataclasses.dataclass(frozen=True)
class Facts:
    """What is static about a call, all that the choice reads."""

    platform: str  # "cpu" | "gpu" | "tpu"
    dtype: str
    shape: tuple[int, int, int, int, int, int]  # (B, T, S, K, G, H)
    bias: bool
    mask: bool
    lengths: bool
    segments: bool
    window: tuple[int, int] | None
    dropout: bool
    weights: bool  # the [B, N, T, S] weights are wanted (return_weights or module=)
    residual: bool  # the log-sum-exp is wanted
    exact: bool  # float64, or precision "highest": only the zoo's kernels


@dataclasses.dataclass(frozen=True)
class Choice:
    """The backend a call gets, and why each one tried before it was passed over."""

    implementation: str
    facts: Facts
    passed_over: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        lines = [f"{self.implementation} (platform {self.facts.platform}, {self.facts.dtype})"]
        lines += [f"  not {name}: {why}" for name, why in self.passed_over]
        return "\n".join(lines)


def facts_of(call: _call.Call, *, weights: bool, residual: bool, platform: str | None) -> Facts:
    precision = call.options.precision
    exact = jnp.dtype(call.query.dtype) == jnp.float64 or precision in (
        "highest",
        lax.Precision.HIGHEST,
    )
    return Facts(
        platform=platform or _call.platform_of(call.query),
        dtype=jnp.dtype(call.query.dtype).name,
        shape=call.shape,
        bias=call.bias is not None,
        mask=call.mask is not None,
        lengths=call.query_lengths is not None or call.key_lengths is not None,
        segments=call.query_segments is not None,
        window=call.options.window,
        dropout=call.options.dropout_rate > 0.0,
        weights=weights,
        residual=residual,
        exact=bool(exact),
    )


def order(facts: Facts) -> tuple[str, ...]:
    """The backends ``implementation=None`` tries, fastest first."""
    _, T, S, *_ = facts.shape
    zoo = ("reference",) if T * S <= _SHORT_POSITIONS else ("blockwise", "reference")
    if facts.exact:
        return zoo
    if facts.platform == "gpu":
        return ("tokamax.mosaic", "tokamax.triton", "cudnn", *zoo)
    if facts.platform == "tpu":
        return ("tokamax.mosaic", *zoo)
    return zoo


def why_not(name: str, facts: Facts) -> str | None:
    """Why backend ``name`` cannot run a call with these facts, or None if it can."""
    if name in _ZOO:
        if name == "blockwise" and facts.weights:
            return "cannot return the weights (it never materializes them)"
        return None
    missing = [
        what
        for what, present in (
            ("dropout", facts.dropout),
            ("segment ids", facts.segments),
            ("the weights", facts.weights),
        )
        if present
    ]
    if missing:
        return f"supports no {' or '.join(missing)}"
    if name == "cudnn":
        _, _, _, _, _, H = facts.shape
        if facts.platform != "gpu":
            return "needs an NVIDIA GPU"
        if facts.dtype not in ("bfloat16", "float16"):
            return f"bfloat16 or float16 only, got {facts.dtype}"
        if H % 8 or H > 256:
            return f"head dim a multiple of 8 up to 256, got H={H}"
        if facts.window is not None and facts.window[1] != 0:
            return "left-only local windows"
        return None
    # tokamax
    if facts.residual:
        return "does not return the log-sum-exp residual"
    if facts.dtype == "float64":
        return "no float64"
    problem = _tokamax_problem()
    if problem:
        return problem
    impl = name.partition(".")[2]
    platforms = {"mosaic": ("gpu", "tpu"), "triton": ("gpu",), "cudnn": ("gpu",)}
    if impl in platforms and facts.platform not in platforms[impl]:
        return f"needs {' or '.join(p.upper() for p in platforms[impl])}"
    return None


def choose(implementation: str | Sequence[str] | None, facts: Facts) -> Choice:
    """The first backend of ``implementation`` (None: :func:`order`) that supports ``facts``."""
    names = _names(implementation, facts)
    passed: list[tuple[str, str]] = []
    for name in names:
        reason = why_not(name, facts)
        if reason is None:
            return Choice(name, facts, tuple(passed))
        passed.append((name, reason))
    raise NotImplementedError(_no_backend(passed))


def explain(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    *,
    implementation: str | Sequence[str] | None = None,
    platform: str | None = None,
    return_weights: bool = False,
    return_residual: bool = False,
    **options: Any,
) -> Choice:
    """Which backend ``dot_product_attention`` would run this call on, and why.

    Takes the call of :func:`zoo.kernels.dot_product_attention` (arrays or
    ``jax.ShapeDtypeStruct``); nothing is computed. ``platform`` ("cpu", "gpu", "tpu")
    overrides the one the call would find. A backend that passes this check may still
    refuse at trace time (tokamax's own limits); the call then falls through to the next.
    """
    if platform not in (None, "cpu", "gpu", "tpu"):
        raise ValueError(f"platform must be None, 'cpu', 'gpu' or 'tpu', got {platform!r}")
    choices: list[Choice] = []

    def core(call: _call.Call, want_weights: bool) -> tuple[Array, Array | None, Array]:
        facts = facts_of(call, weights=want_weights, residual=return_residual, platform=platform)
        choices.append(choose(implementation, facts))
        B, T, S, K, G, _ = call.shape  # abstract outputs: nothing is computed
        weights = jnp.zeros((B, K * G, T, S), jnp.float32) if want_weights else None
        return call.query, weights, jnp.zeros((B, T, K * G), jnp.float32)

    options = _with_defaults(options)
    arrays = {n: x for n, x in options.items() if hasattr(x, "shape")}  # traced abstractly
    static = {n: x for n, x in options.items() if n not in arrays}

    def run(query: Array, key: Array, value: Array, bias: Any, mask: Any, arrays: Any) -> Any:
        return _call.attend(
            core,
            query,
            key,
            value,
            bias,
            mask,
            return_weights=return_weights,
            return_residual=return_residual,
            forms_weights=True,
            kernel_name="dot_product_attention",
            module=None,
            **arrays,
            **static,
        )

    jax.eval_shape(run, query, key, value, bias, mask, arrays)
    (choice,) = choices
    return choice


def dispatching_core(
    implementation: str | Sequence[str] | None,
    zoo_cores: dict[str, _call.Core],
    *,
    residual: bool,
) -> _call.Core:
    """The core of ``dot_product_attention``: chooses a backend per call, then runs it."""

    def core(call: _call.Call, want_weights: bool) -> tuple[Array, Array | None, Array | None]:
        facts = facts_of(call, weights=want_weights, residual=residual, platform=None)
        names = _names(implementation, facts)
        passed: list[tuple[str, str]] = []
        for name in names:
            reason = why_not(name, facts)
            if reason is None:
                try:
                    return _backend(name, zoo_cores)(call, want_weights)
                except NotImplementedError as e:  # the backend's own limits
                    reason = str(e) or type(e).__name__
            passed.append((name, reason))
        raise NotImplementedError(_no_backend(passed))

    return core


def _names(implementation: str | Sequence[str] | None, facts: Facts) -> tuple[str, ...]:
    if implementation is None:
        return order(facts)
    names = (implementation,) if isinstance(implementation, str) else tuple(implementation)
    unknown = [n for n in names if n not in IMPLEMENTATIONS]
    if unknown or not names:
        raise ValueError(
            f"implementation must be None, one of {IMPLEMENTATIONS} or a sequence of them, "
            f"got {implementation!r}"
        )
    return names


def _no_backend(passed: list[tuple[str, str]]) -> str:
    reasons = "; ".join(f"{name}: {why}" for name, why in passed)
    return f"no kernel can run this call ({reasons}); implementation='reference' runs every call"


def _backend(name: str, zoo_cores: dict[str, _call.Core]) -> _call.Core:
    if name in _ZOO:
        return zoo_cores["reference" if name == "xla" else name]
    if name == "cudnn":
        return _cudnn_core
    impl = name.partition(".")[2] or None
    return functools.partial(_tokamax_core, implementation=impl)


@functools.cache
def _tokamax_problem() -> str | None:
    """Why the installed tokamax cannot be used, or None."""
    try:
        version = importlib.metadata.version("tokamax")
    except importlib.metadata.PackageNotFoundError:
        return "tokamax is not installed (pip install 'attention-zoo[accelerators]')"
    if tuple(int(x) for x in version.split(".")[:3] if x.isdigit()) < (0, 0, 17):
        # Earlier releases parse the host program's command line as their own flags.
        return f"tokamax {version} is older than 0.0.17 (pip install -U tokamax, jax >= 0.11.1)"
    return None


def _heads(x: Array | None) -> Array | None:
    """A ``[b, k, g, t, s]`` bias or mask as jax.nn's ``[b, n, t, s]``."""
    if x is None:
        return None
    b, k, g, t, s = x.shape
    return x.reshape(b, k * g, t, s)


def _live_rows(call: _call.Call) -> Array | None:
    """Whether each query row ``[B, T, N]`` has a key to attend; None when every row has."""
    B, T, S, K, G, _ = call.shape
    o = call.options
    dead_by_window = o.window is not None and (T - 1) - o.window[0] > S - 1
    if (
        call.mask is None
        and call.bias is None
        and call.query_lengths is None
        and call.key_lengths is None
        and not dead_by_window
    ):
        return None
    positions = masks_lib.position_mask(
        jnp.arange(T, dtype=jnp.int32),
        jnp.arange(S, dtype=jnp.int32),
        is_causal=o.is_causal,
        local_window_size=o.window,
        query_lengths=call.query_lengths,
        key_lengths=call.key_lengths,
    )
    keep = masks_lib.combine_masks(
        call.mask,
        None if positions is None else positions[:, None, None],
        None if call.bias is None else call.bias > masks_lib.MASK_VALUE,
    )
    assert keep is not None
    live = jnp.any(keep, axis=-1)  # [b, k, g, T], reduced where it is formed
    live = jnp.broadcast_to(live, (live.shape[0], K, G, T)).reshape(live.shape[0], K * G, T)
    return jnp.broadcast_to(jnp.swapaxes(live, 1, 2), (B, T, K * G))


def _zero_dead(out: Array, live: Array | None) -> Array:
    return out if live is None else jnp.where(live[..., None], out, jnp.zeros((), out.dtype))


def _library_call(call: _call.Call) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call as jax.nn's (and tokamax's, the same) positional and keyword arguments."""
    o = call.options
    args = (call.query, call.key, call.value, _heads(call.bias), _heads(call.mask))
    return args, {
        "scale": o.scale,
        "is_causal": o.is_causal,
        "query_seq_lengths": call.query_lengths,
        "key_value_seq_lengths": call.key_lengths,
        "local_window_size": o.window,
    }


def _cudnn_core(call: _call.Call, want_weights: bool) -> tuple[Array, None, Array]:
    """cuDNN's fused attention through jax.nn, with the zoo's empty-row convention."""
    args, kwargs = _library_call(call)
    out, lse = jax.nn.dot_product_attention(
        *args, **kwargs, implementation="cudnn", return_residual=True
    )
    live = _live_rows(call)
    lse = lse.astype(jnp.promote_types(lse.dtype, jnp.float32))
    if live is not None:
        lse = jnp.where(live, lse, masks_lib.MASK_VALUE)
    return _zero_dead(out, live), None, lax.stop_gradient(lse)


def _tokamax_core(
    call: _call.Call, want_weights: bool, *, implementation: str | None
) -> tuple[Array, None, None]:
    """tokamax's attention (no residual), with the zoo's empty-row convention."""
    import tokamax  # optional: the accelerators extra; why_not checked it is installed

    args, kwargs = _library_call(call)
    out = tokamax.dot_product_attention(
        *args, **kwargs, precision=call.options.precision, implementation=implementation
    )
    return _zero_dead(out, _live_rows(call)), None, None


def _with_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """``dot_product_attention``'s keyword defaults under ``options`` (for :func:`explain`)."""
    defaults: dict[str, Any] = {
        "scale": None,
        "is_causal": False,
        "query_seq_lengths": None,
        "key_value_seq_lengths": None,
        "local_window_size": None,
        "query_segment_ids": None,
        "key_value_segment_ids": None,
        "dropout_rate": 0.0,
        "dropout_rng": None,
        "broadcast_dropout": True,
        "deterministic": False,
        "dtype": None,
        "precision": None,
    }
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"explain() got unexpected keyword arguments {sorted(unknown)}")
    return {**defaults, **options}
