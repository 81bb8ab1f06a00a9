"""Test settings shared by every test.

On GPU and TPU, float32 matmuls default to reduced precision (TF32 on NVIDIA, bfloat16 passes
on TPU), which the float32 parity tolerances are not written for: tests there run with the
``highest`` matmul precision, the CPU's. Tests that need an accelerator carry the ``gpu``
marker and are skipped elsewhere.
"""

import jax
import pytest

if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
