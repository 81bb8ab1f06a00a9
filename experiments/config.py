"""Experiment configs: frozen dataclasses, overridden by ``--set key=value`` and saved as JSON.

An experiment's config is a dataclass of sub-configs (``data``, ``model``, ``train``), each a
frozen dataclass with a comment per field. Overrides name a dotted path
(``--set model.hidden_dim=64``) and are parsed by the field's declared type, never evaluated.

Each config checks its fields in ``__post_init__`` with ``check_range``, ``check_counts`` and
``check_choice``, so a bad value is a ``ConfigError`` naming the field and what it may be,
raised where the config is built: by a preset, ``from_dict`` (a saved config.json) or
``dataclasses.replace`` (``--set``, ``--steps``), before anything is prepared, compiled or
trained.

Presets are written as changes to another preset with :func:`replace`; every task's smoke
preset trains on ``SMOKE_TRAIN``.
"""

import dataclasses
import json
import math
import numbers
import pathlib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from experiments.errors import ConfigError

C = TypeVar("C")

__all__ = [
    "MESH_AXES",
    "OPTIMIZERS",
    "PARAM_SHARDINGS",
    "SCHEDULES",
    "SMOKE_TRAIN",
    "BeamEvalConfig",
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "check_choice",
    "check_counts",
    "check_range",
    "from_dict",
    "load",
    "mesh_axes",
    "replace",
    "save",
    "to_dict",
]

SCHEDULES = ("constant", "cosine", "rsqrt")
OPTIMIZERS = ("adam", "adamw", "adadelta")
PARAM_SHARDINGS = ("replicate", "shard")


def check_range(
    owner: str,
    name: str,
    value: Any,
    *,
    at_least: float | None = None,
    greater_than: float | None = None,
    at_most: float | None = None,
    less_than: float | None = None,
    integer: bool = False,
    finite: bool = True,
) -> None:
    """Raise ConfigError unless ``value`` is a number within the given bounds.

    For a config's ``__post_init__``: ``check_range("train", "steps", self.steps, at_least=1,
    integer=True)`` raises ``train.steps: expected an int >= 1, got 0``.

    Args:
      owner: the config's name in a dotted ``--set`` path ("train", "data", "model", "eval").
      name: the field.
      value: its value; a bool is never a number here.
      at_least, greater_than, at_most, less_than: the bounds (inclusive, exclusive, inclusive,
        exclusive); None for no bound on that side.
      integer: the value must be an int (not a float, even a whole one).
      finite: infinities are out of range too (NaN always is).
    """
    bounds = [
        (at_least, ">=", lambda v, b: v >= b),
        (greater_than, ">", lambda v, b: v > b),
        (at_most, "<=", lambda v, b: v <= b),
        (less_than, "<", lambda v, b: v < b),
    ]
    wanted = " and ".join(f"{sign} {bound:g}" for bound, sign, _ in bounds if bound is not None)
    kind = "an int" if integer else ("a finite number" if finite else "a number")
    expected = f"{kind} {wanted}".strip()
    numeric = isinstance(value, int if integer else numbers.Real) and not isinstance(value, bool)
    ok = (
        numeric
        and not math.isnan(value)
        and (math.isfinite(value) or not finite)
        and all(holds(value, bound) for bound, _, holds in bounds if bound is not None)
    )
    if not ok:
        raise ConfigError(f"{owner}.{name}: expected {expected}, got {value!r}")


def check_counts(owner: str, config: Any, *names: str, at_least: int = 1) -> None:
    """``check_range(owner, name, value, at_least=at_least, integer=True)`` for each field
    ``names`` of the dataclass ``config``; a field declared ``int | None`` may also be None.

    ``check_counts("eval", self, "examples", "beam_size")`` raises
    ``eval.beam_size: expected an int >= 1, got 0``.
    """
    hints = typing.get_type_hints(type(config))
    for name in names:
        value = getattr(config, name)
        if value is None and type(None) in typing.get_args(hints[name]):
            continue
        check_range(owner, name, value, at_least=at_least, integer=True)


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``.

    ``check_choice("train", "schedule", self.schedule, SCHEDULES)`` raises
    ``train.schedule: expected one of 'constant', 'cosine', 'rsqrt', got 'linear'``.
    """
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ConfigError(f"{owner}.{name}: expected one of {listed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How every experiment trains; one set of fields for all of them."""

    steps: int = 2000  # optimizer steps in total (``--steps`` overrides)
    # Examples per optimizer step over every device and every process: the global batch.
    # Under jax.distributed each process reads batch_size / (process count) examples of its
    # own, so it must divide evenly (and by the device count, to split over the mesh).
    batch_size: int = 64
    learning_rate: float = 1e-3  # peak learning rate
    schedule: str = "cosine"  # "constant" | "cosine" | "rsqrt" (Vaswani et al. 2017, eq. 3)
    warmup_steps: int = 100  # linear warm-up from zero to the peak
    optimizer: str = "adam"  # "adam" | "adamw" | "adadelta" (Bahdanau et al. 2014 used it)
    weight_decay: float = 0.0  # decoupled weight decay (adamw only)
    clip_norm: float = 1.0  # clip the global gradient norm (Bahdanau et al.: norm 1)
    label_smoothing: float = 0.0  # Szegedy et al. 2016; the Transformer used 0.1 (sec. 5.4)
    eval_every: int = 500  # steps between evaluations (and best-checkpoint updates)
    checkpoint_every: int = 250  # steps between checkpoints
    keep_last: int = 2  # how many recent checkpoints to keep
    log_every: int = 25  # steps between metric records
    seed: int = 0  # one seed for init, data order and every random draw
    devices: int = 1  # data parallel: split each batch over this many devices (0 = all)
    # "replicate" (parameters and optimizer state whole on every device) or "shard" (each
    # array split along its largest axis that `devices` divides, as in FSDP).
    param_sharding: str = "replicate"
    # Named mesh axes and their sizes, e.g. "data:2,sequence:2": the batch splits over "data",
    # and model.kernel=ring splits the sequence over "sequence". Empty: one "data" axis of
    # `devices` devices.
    mesh: str = ""

    def __post_init__(self) -> None:
        counts = ("steps", "batch_size", "eval_every", "checkpoint_every", "keep_last", "log_every")
        check_counts("train", self, *counts)
        check_counts("train", self, "warmup_steps", "devices", at_least=0)
        check_range("train", "seed", self.seed, integer=True)
        check_range("train", "learning_rate", self.learning_rate, greater_than=0)
        check_range("train", "weight_decay", self.weight_decay, at_least=0)
        # An infinite norm is a valid way to turn clipping off (optax.clip_by_global_norm).
        check_range("train", "clip_norm", self.clip_norm, greater_than=0, finite=False)
        check_range("train", "label_smoothing", self.label_smoothing, at_least=0, less_than=1)
        check_choice("train", "schedule", self.schedule, SCHEDULES)
        check_choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        check_choice("train", "param_sharding", self.param_sharding, PARAM_SHARDINGS)
        axes = mesh_axes(self.mesh)
        if axes and self.devices not in (1, math.prod(size for _, size in axes)):
            raise ConfigError(
                f"train.devices={self.devices} and train.mesh={self.mesh!r} disagree; with a "
                "mesh, leave train.devices at 1 (the mesh's size decides)"
            )


@dataclasses.dataclass(frozen=True)
class BeamEvalConfig:
    """How the tasks that decode by beam search (translate, caption) evaluate; each task's
    ``EvalConfig`` is one, with defaults of its own."""

    examples: int = 500  # held-out examples scored and decoded, the same ones each time
    beam_size: int = 5  # beam width of the reported outputs
    length_penalty: float = 0.6  # GNMT alpha (Wu et al. 2016, eq. 14); 0 = plain log p
    plots: int = 4  # held-out examples drawn with their attention

    def __post_init__(self) -> None:
        check_counts("eval", self, "examples", "beam_size", "plots")
        check_range("eval", "length_penalty", self.length_penalty, at_least=0)

    def beam(self) -> dict[str, Any]:
        """The keywords of ``experiments.decode.best_beam`` these settings give."""
        return {"beam_size": self.beam_size, "length_penalty": self.length_penalty}


# The train fields of every task's smoke preset: a handful of steps, each one logged, two
# checkpoints and an evaluation, in seconds; for the tests.
SMOKE_TRAIN: Mapping[str, int] = types.MappingProxyType(
    {"steps": 4, "batch_size": 8, "eval_every": 4, "checkpoint_every": 2, "log_every": 1}
)

MESH_AXES = ("data", "sequence")


def mesh_axes(text: str) -> tuple[tuple[str, int], ...]:
    """``"data:2,sequence:2"`` -> ``(("data", 2), ("sequence", 2))``; ``""`` -> ``()``."""
    axes: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = part.partition(":")
        if name not in MESH_AXES or name in dict(axes) or not size.isdigit() or int(size) < 1:
            raise ConfigError(
                f"train.mesh: expected comma-separated NAME:SIZE with NAME one of {MESH_AXES} "
                f"(each once) and SIZE >= 1, e.g. 'data:2,sequence:2'; got {text!r}"
            )
        axes.append((name, int(size)))
    return tuple(axes)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys raise."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; valid: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        kind = _dataclass_of(hints[name], value)
        if kind is not None:
            value = from_dict(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_of(kind: Any, value: Any) -> Any:
    """The dataclass a saved dict ``value`` of a field annotated ``kind`` rebuilds: ``kind``
    itself, or of a union of dataclasses (``RNNSearchConfig | TransformerConfig``) the one
    member whose fields hold every saved key. None when ``value`` is not a saved dataclass."""
    if not isinstance(value, dict):
        return None
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [k for k in typing.get_args(kind) if dataclasses.is_dataclass(k)]
        fits = [k for k in members if set(value) <= {f.name for f in dataclasses.fields(k)}]
        if len(fits) != 1:
            names = [getattr(k, "__name__", str(k)) for k in members]
            raise ValueError(f"saved fields {sorted(value)} fit {len(fits)} of {names}, not one")
        return fits[0]
    return kind if dataclasses.is_dataclass(kind) else None


def replace(config: C, **changes: Any) -> C:
    """``dataclasses.replace``, into sub-configs: a mapping given for a field that holds a
    dataclass replaces those of its fields (recursively); any other value the whole field.

    ``replace(tiny, model={"hidden_dim": 24}, train=SMOKE_TRAIN)``: a preset written as what
    it changes. Each config is built once, so its checks see all of its new fields together.
    """
    for name, value in changes.items():
        current = getattr(config, name)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
            changes[name] = replace(current, **value)
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def save(config: Any, path: pathlib.Path) -> None:
    path.write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load(cls: type[C], path: pathlib.Path) -> C:
    return from_dict(cls, json.loads(path.read_text()))


def apply_overrides(config: C, overrides: list[str]) -> C:
    """``["model.hidden_dim=64", "train.steps=10"]`` -> a new config with those fields set.

    All the overrides are set first and the config is built once, so that a check across
    fields (``model.score`` and ``model.kernel``) sees them together, in whatever order the
    command line gives them.
    """
    if not overrides:
        return config
    values = to_dict(config)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {override!r}")
        _set_path(config, values, key.strip().split("."), text.strip(), key)
    try:
        return from_dict(type(config), values)
    except ConfigError as error:  # a config's own check
        raise ConfigError(f"{error} (from --set {' --set '.join(overrides)})") from None


def _set_path(
    config: Any, values: dict[str, Any], path: list[str], text: str, full_key: str
) -> None:
    """Set the parsed ``text`` at ``path`` of ``values``, the ``to_dict`` form of ``config``."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    name = path[0]
    if name not in fields:
        raise ValueError(
            f"unknown config field {full_key!r}: {type(config).__name__} has {sorted(fields)}"
        )
    current = getattr(config, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"{full_key!r}: {name} is not a group of fields")
        _set_path(current, values[name], path[1:], text, full_key)
    elif dataclasses.is_dataclass(current):
        raise ValueError(f"{full_key!r} is a group; set one of its fields, e.g. {name}.<field>")
    else:
        values[name] = _parse(typing.get_type_hints(type(config))[name], text, full_key)


def _parse(kind: Any, text: str, key: str) -> Any:
    """Parse ``text`` as a value of the annotated type ``kind`` (bool, int, float, str, ...)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _parse(options[0], text, key)
    if origin is tuple:
        (item, *_) = typing.get_args(kind)
        return tuple(_parse(item, part, key) for part in text.split(",") if part)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        raise ValueError(f"{key}: expected {kind.__name__}, got {text!r}") from None
    raise ValueError(f"{key}: cannot set a field of type {kind} from the command line")
