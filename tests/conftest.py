"""Test settings shared by every test.

On GPU and TPU, float32 matmuls default to reduced precision (TF32 on NVIDIA, bfloat16 passes
on TPU) and models built with ``dtype="auto"`` compute in bfloat16, neither of which the
float32 parity tolerances are written for: tests there run with the ``highest`` matmul
precision and "auto" models in float32, as on CPU (the bfloat16 paths have tests of their
own). Tests that need an accelerator carry the ``gpu`` marker and are skipped elsewhere.
"""

import jax
import pytest

from zoo import precision

if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")
    precision.AUTO_ON_ACCELERATORS = "float32"


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
