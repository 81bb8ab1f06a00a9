"""Mixed-precision settings: the dtype names every model config accepts, "auto", the errors."""

import jax
import jax.numpy as jnp
import pytest

from zoo import precision
from zoo.models.rnnsearch import RNNSearchConfig
from zoo.models.show_attend_tell import ShowAttendTellConfig
from zoo.models.transformer import TransformerConfig

CONFIGS = [RNNSearchConfig, ShowAttendTellConfig, TransformerConfig]


def test_names_resolve_to_dtypes():
    assert precision.resolve("bfloat16", "float32") == (jnp.bfloat16, jnp.float32)
    assert precision.resolve("float16", "bfloat16") == (jnp.float16, jnp.bfloat16)


def test_auto_is_float32_on_cpu_and_bfloat16_elsewhere(monkeypatch):
    expected = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    assert precision.resolve("auto", "float32") == (expected, jnp.float32)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert precision.resolve("auto", "float32")[0] == jnp.bfloat16
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert precision.resolve("auto", "float32")[0] == jnp.float32


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_model_config_defaults_to_auto_over_float32(config):
    assert (config().dtype, config().param_dtype) == ("auto", "float32")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"dtype": "bf16"},
            r"dtype must be one of \('auto', 'float32', 'bfloat16', 'float16'\), got 'bf16'",
        ),
        (
            {"param_dtype": "auto"},
            r"param_dtype must be one of \('float32', 'bfloat16', 'float16'\), got 'auto'",
        ),
    ],
)
def test_unknown_dtype_names_are_errors_naming_the_field(config, fields, message):
    with pytest.raises(ValueError, match=message):
        config(**fields)
