"""Config overrides are parsed by field type, checked by name, and round-trip through JSON."""

import dataclasses
import json

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


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("steps", 0, r"train.steps: expected an int >= 1, got 0"),
        ("steps", -5, r"train.steps: expected an int >= 1, got -5"),
        ("steps", 2.5, r"train.steps: expected an int >= 1, got 2.5"),
        ("batch_size", 0, r"train.batch_size: expected an int >= 1, got 0"),
        ("learning_rate", 0.0, r"train.learning_rate: expected a finite number > 0, got 0.0"),
        ("learning_rate", -1e-3, r"train.learning_rate: expected a finite number > 0"),
        ("learning_rate", float("nan"), r"train.learning_rate: expected .*, got nan"),
        ("learning_rate", float("inf"), r"train.learning_rate: expected .*, got inf"),
        ("schedule", "linear", r"train.schedule: expected one of 'constant', 'cosine', 'rsqrt'"),
        ("optimizer", "sgd", r"train.optimizer: expected one of 'adam', 'adamw', 'adadelta'"),
        ("warmup_steps", -1, r"train.warmup_steps: expected an int >= 0, got -1"),
        ("weight_decay", -0.1, r"train.weight_decay: expected a finite number >= 0, got -0.1"),
        ("clip_norm", 0.0, r"train.clip_norm: expected a number > 0, got 0.0"),
        ("label_smoothing", 1.0, r"train.label_smoothing: expected .* >= 0 and < 1, got 1.0"),
        ("label_smoothing", -0.1, r"train.label_smoothing: expected .* >= 0 and < 1, got -0.1"),
        ("eval_every", 0, r"train.eval_every: expected an int >= 1, got 0"),
        ("checkpoint_every", 0, r"train.checkpoint_every: expected an int >= 1, got 0"),
        ("keep_last", 0, r"train.keep_last: expected an int >= 1, got 0"),
        ("log_every", 0, r"train.log_every: expected an int >= 1, got 0"),
        ("devices", -1, r"train.devices: expected an int >= 0, got -1"),
        ("param_sharding", "fsdp", r"train.param_sharding: expected one of 'replicate', 'shard'"),
        ("seed", True, r"train.seed: expected an int, got True"),
    ],
)
def test_train_config_rejects_values_out_of_range(field, value, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        TrainConfig(**{field: value})
    # dataclasses.replace runs the same check: what `--steps N` in experiments.run does.
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainConfig(), **{field: value})


def test_train_config_accepts_the_edges():
    edges = TrainConfig(
        steps=1, warmup_steps=0, devices=0, label_smoothing=0.0, clip_norm=float("inf")
    )
    assert edges.steps == 1 and edges.clip_norm == float("inf")
    assert TrainConfig(learning_rate=1, label_smoothing=0.999).learning_rate == 1


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.steps=0", r"train.steps: expected an int >= 1, got 0 \(from --set train.steps=0\)"),
        ("train.learning_rate=nan", r"train.learning_rate: expected a finite number > 0"),
        ("train.schedule=linear", r"train.schedule: expected one of 'constant', 'cosine'"),
    ],
)
def test_overrides_are_checked_when_applied(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.apply_overrides(Outer(), [override])


def test_a_saved_config_is_checked_when_loaded(tmp_path):
    path = tmp_path / "config.json"
    config_lib.save(Outer(), path)
    values = json.loads(path.read_text())
    values["train"]["keep_last"] = 0
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"train.keep_last: expected an int >= 1, got 0"):
        config_lib.load(Outer, path)


def test_helpers_name_the_field_and_the_range():
    config_lib.check_range("model", "dropout", 0.0, at_least=0, less_than=1)
    config_lib.check_range("model", "depth", 3, at_least=1, at_most=3, integer=True)
    with pytest.raises(
        config_lib.ConfigError, match=r"^model.depth: expected an int >= 1 and <= 3, got 4$"
    ):
        config_lib.check_range("model", "depth", 4, at_least=1, at_most=3, integer=True)
    with pytest.raises(
        config_lib.ConfigError, match=r"^eval.beam: expected a finite number, got 'x'$"
    ):
        config_lib.check_range("eval", "beam", "x")
    config_lib.check_choice("data", "tokenizer", "char", ("char", "bpe"))
    with pytest.raises(
        config_lib.ConfigError, match=r"^data.tokenizer: expected one of 'char', 'bpe', got 'word'$"
    ):
        config_lib.check_choice("data", "tokenizer", "word", ("char", "bpe"))


def test_check_counts_lets_none_through_only_where_the_field_is_optional():
    @dataclasses.dataclass(frozen=True)
    class Counts:
        needed: int | None = 1
        always: int = 1

    config_lib.check_counts("eval", Counts(None, 2), "needed", "always")
    with pytest.raises(
        config_lib.ConfigError, match=r"^eval.always: expected an int >= 1, got None$"
    ):
        config_lib.check_counts("eval", Counts(2, None), "needed", "always")
    with pytest.raises(config_lib.ConfigError, match=r"^eval.needed: expected an int >= 2, got 1$"):
        config_lib.check_counts("eval", Counts(), "needed", at_least=2)


def test_replace_changes_fields_of_sub_configs_and_checks_them():
    config = config_lib.replace(
        Outer(), inner={"width": 9}, train={"steps": 10, "warmup_steps": 20}
    )
    assert config.inner == Inner(width=9) and config.train == TrainConfig(steps=10, warmup_steps=20)
    assert config_lib.replace(config, inner=Inner(name="b")).inner == Inner(name="b")
    smoke = config_lib.replace(Outer(), train=config_lib.SMOKE_TRAIN).train
    assert (smoke.steps, smoke.checkpoint_every, smoke.learning_rate) == (4, 2, 1e-3)
    with pytest.raises(config_lib.ConfigError, match=r"^train.steps: expected an int >= 1"):
        config_lib.replace(Outer(), train={"steps": 0})


@pytest.mark.parametrize(
    ("experiment", "model", "override", "message"),
    [
        ("translate", "rnnsearch", "data.max_length=1", r"data.max_length: expected an int >= 2"),
        ("translate", "rnnsearch", "eval.beam_size=0", r"eval.beam_size: expected an int >= 1"),
        ("translate", "rnnsearch", "model.score=concat", r"score must be one of"),
        ("lm", "transformer", "data.tokenizer=word", r"data.tokenizer: expected one of"),
        ("lm", "transformer", "eval.windows=0", r"eval.windows: expected an int >= 1"),
        ("lm", "transformer", "data.context_length=999", r"must cover data.context_length"),
        ("caption", "sat", "loss.penalty_strength=-1", r"loss.penalty_strength: expected"),
        ("caption", "sat", "eval.examples=0", r"eval.examples: expected an int >= 1"),
    ],
)
def test_task_settings_are_checked_when_the_config_is_built(experiment, model, override, message):
    from experiments import tasks

    preset = tasks.load(experiment).presets(model)["tiny"]
    with pytest.raises(ValueError, match=message):
        config_lib.apply_overrides(preset, [override])


def test_cross_field_overrides_apply_in_any_order():
    from experiments.tasks import translate

    preset = translate.presets("rnnsearch")["tiny"]
    # The kernel first would fail alone (blockwise is not an additive kernel); together, fine.
    config = config_lib.apply_overrides(preset, ["model.kernel=blockwise", "model.score=general"])
    assert (config.model.kernel, config.model.score) == ("blockwise", "general")
