"""`pip install attention-zoo` without extras: the library alone, without the runner's
dependencies, and the library works there."""

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# The pins of the interpreter running the tests, so that pip resolves from its cache.
CONSTRAINTS = ROOT / ("constraints.txt" if sys.version_info >= (3, 12) else "constraints-py311.txt")

# Installed by the experiments extra only. optax and orbax-checkpoint are not among them:
# flax requires both (and flax.nnx imports optax), so they come with any install of flax.
RUNNER_ONLY = [
    "tensorflow_datasets",
    "grain",
    "array_record",
    "sentencepiece",
    "sacrebleu",
    "matplotlib",
    "tensorboardX",
    "mlxtend",
]

CHECK = """
import importlib.metadata, importlib.util, json, sys
import jax, jax.numpy as jnp
import zoo.decoding, zoo.kernels, zoo.models, zoo.nn

B, T, S, N, K, H = 1, 3, 5, 4, 2, 7
q = jax.random.normal(jax.random.key(0), (B, T, N, H))
k = jax.random.normal(jax.random.key(1), (B, S, K, H))
v = jax.random.normal(jax.random.key(2), (B, S, K, H))
out = zoo.kernels.dot_product_attention(q, k, v, is_causal=True)
expected = jax.nn.dot_product_attention(q, k, v, is_causal=True)
print(json.dumps({
    "zoo": zoo.kernels.__file__,
    "shape": list(out.shape),
    "error": float(jnp.abs(out - expected).max()),
    "importable": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None],
    "requires": importlib.metadata.requires("attention-zoo"),
}))
"""


@pytest.mark.slow  # about a minute: a fresh virtual environment, jax and flax from pip's cache
def test_the_bare_package_installs_and_runs_without_the_runner(tmp_path):
    # Build from a copy, so the build leaves nothing in the tree and imports cannot reach it.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "zoo", source / "zoo", ignore=shutil.ignore_patterns("__pycache__"))

    env_dir = tmp_path / "venv"
    try:
        venv.create(env_dir, with_pip=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot create a virtual environment here: {error}")
    python = env_dir / "bin" / "python"

    install = [python, "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS, source]
    result = subprocess.run(install, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr

    result = subprocess.run(
        [python, "-c", CHECK, *RUNNER_ONLY],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])

    assert Path(report["zoo"]).is_relative_to(env_dir)
    assert report["shape"] == [1, 3, 4, 7]
    assert report["error"] < 1e-5
    assert report["importable"] == []
    bare = {re.split(r"[ <>=!~;]", r)[0] for r in report["requires"] if "extra ==" not in r}
    assert bare == {"flax", "jax", "jaxtyping", "numpy"}
