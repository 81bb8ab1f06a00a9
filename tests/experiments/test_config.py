"""Config overrides are parsed by field type, checked by name, and round-trip through JSON."""

import dataclasses

import pytest

from experiments import config as config_lib
from experiments.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Inner:
    width: int = 3
    rate: float = 0.5
    name: str = "a"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    maybe: str | None = None


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def test_overrides_are_parsed_by_type():
    config = config_lib.apply_overrides(
        Outer(),
        [
            "inner.width=7",
            "inner.rate=1e-3",
            "inner.name=b=c",
            "inner.flag=true",
            "inner.sizes=4,5,6",
            "inner.maybe=x",
            "train.steps=11",
        ],
    )
    assert config.inner == Inner(7, 1e-3, "b=c", True, (4, 5, 6), "x")
    assert config.train.steps == 11
    assert config_lib.apply_overrides(config, ["inner.maybe=none"]).inner.maybe is None


def test_round_trip_through_json(tmp_path):
    config = config_lib.apply_overrides(Outer(), ["inner.sizes=9", "train.seed=4"])
    config_lib.save(config, tmp_path / "config.json")
    assert config_lib.load(Outer, tmp_path / "config.json") == config


@pytest.mark.parametrize(
    "override,message",
    [
        ("inner.depth=3", r"unknown config field 'inner.depth': Inner has \['flag', 'maybe'"),
        ("nope=1", r"unknown config field 'nope': Outer has \['inner', 'train'\]"),
        ("inner.width=wide", r"inner.width: expected int, got 'wide'"),
        ("inner.flag=maybe", r"inner.flag: expected bool, got 'maybe'"),
        ("inner=3", r"'inner' is a group; set one of its fields"),
        ("inner.width", r"--set expects key=value, got 'inner.width'"),
    ],
)
def test_bad_overrides_say_what_is_valid(override, message):
    with pytest.raises(ValueError, match=message):
        config_lib.apply_overrides(Outer(), [override])


def test_unknown_saved_field_is_an_error():
    with pytest.raises(ValueError, match=r"unknown Inner fields \['depth'\]"):
        config_lib.from_dict(Inner, {"depth": 3})
