#!/usr/bin/env bash
# The accelerator check, one command of at most 8 minutes on one GPU (H200: 16 cores, jax with
# its CUDA plugins, flax, optax, torch; no tensorflow-datasets, grain or tokamax needed):
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from a copy of the repo
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: every step at tiny sizes, in seconds
#
# Prints the versions, runs the kernel, layer and model tests on the device, then
# `python -m benchmarks.gpu` (mode quick; dry-run with --dry-run). Writes tests.log and the
# harness's results.json, results.md and attention.png to $OUT when it is set, else to
# benchmarks/results/gpu/<mode>/. Nothing is installed, except wheels carried in .whl/
# (tokamax and what it needs), unpacked to a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=quick
[ "${1:-}" = "--dry-run" ] && MODE=dry-run
DEST=${OUT:-benchmarks/results/gpu/$MODE}
mkdir -p "$DEST"
# The harness's driver, its fresh worker processes and the test workers share the one GPU:
# JAX's default of taking 75% of its memory in every process would starve all but the first.
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    SITE=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl &&
        export PYTHONPATH="$PYTHONPATH:$SITE"
fi

"$PY" - <<'PY'
import importlib.metadata as m, platform, jax
names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tokamax", "torch", "triton")
def version(n):
    try:
        return m.version(n)
    except m.PackageNotFoundError:
        return "-"
print("python", platform.python_version(), "|", " | ".join(f"{n} {version(n)}" for n in names))
print("devices:", jax.devices())
PY

if [ "$MODE" = quick ]; then
    # The tests that hold on accelerators: kernels, layers, models (bounded: the tables next).
    timeout 240 "$PY" -m pytest -q -x -n 8 -p no:cacheprovider -m "not slow" \
        tests/kernels tests/nn tests/models 2>&1 | tee "$DEST/tests.log" | tail -25
    echo "tests: exit status ${PIPESTATUS[0]}"
fi
"$PY" -m benchmarks.gpu --mode "$MODE" --out "$DEST" && cat "$DEST/results.md"
