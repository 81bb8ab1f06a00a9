"""Experiment configs: frozen dataclasses, overridden by ``--set key=value`` and saved as JSON.

An experiment's config is a dataclass of sub-configs (``data``, ``model``, ``train``), each a
frozen dataclass with a comment per field. Overrides name a dotted path
(``--set model.hidden_dim=64``) and are parsed by the field's declared type, never evaluated.
"""

import dataclasses
import json
import pathlib
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C")

__all__ = ["TrainConfig", "apply_overrides", "from_dict", "load", "save", "to_dict"]


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
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = from_dict(kind, value)  # type: ignore[arg-type]
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def save(config: Any, path: pathlib.Path) -> None:
    path.write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load(cls: type[C], path: pathlib.Path) -> C:
    return from_dict(cls, json.loads(path.read_text()))


def apply_overrides(config: C, overrides: list[str]) -> C:
    """``["model.hidden_dim=64", "train.steps=10"]`` -> a new config with those fields set."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {override!r}")
        config = _replace_path(config, key.strip().split("."), text.strip(), key)
    return config


def _replace_path(config: Any, path: list[str], text: str, full_key: str) -> Any:
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
        value = _replace_path(current, path[1:], text, full_key)
    else:
        if dataclasses.is_dataclass(current):
            raise ValueError(f"{full_key!r} is a group; set one of its fields, e.g. {name}.<field>")
        value = _parse(typing.get_type_hints(type(config))[name], text, full_key)
    return dataclasses.replace(config, **{name: value})


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
