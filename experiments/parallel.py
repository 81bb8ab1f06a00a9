"""Data parallelism for the runner: one training step placed on a ``("data",)`` mesh, or on
named axes ``("data", "sequence")`` for sequence parallelism (``model.kernel=ring``).

Every device takes an equal slice of the batch along its leading axis; ``jax.jit`` (GSPMD)
turns the mean loss over the whole batch into per-device gradients and one all-reduce, so
the numbers are those of a single device up to the order of float32 sums. Parameters and
optimizer state are placed by one of two rules:

* ``"replicate"``: a whole copy on every device (plain data parallelism).
* ``"shard"``: each array split along its largest axis that the device count divides, and
  replicated when none does: the idea of ZeRO-3 / FSDP (Rajbhandari et al. 2020,
  arXiv:1910.02054), where each device stores its share of the state and XLA gathers a
  weight where the step needs it whole.

The same code runs on CPU, GPU and TPU, and across hosts under ``jax.distributed``: each
process passes its own part of the global batch (its data pipeline must read a different
slice of the data on each process) and the mesh then spans every process's devices.
"""

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "AXIS",
    "RULES",
    "gather",
    "make_mesh",
    "place",
    "place_batch",
    "shardings",
    "spec_for",
]

AXIS = "data"
RULES = ("replicate", "shard")


def make_mesh(devices: int, axes: tuple[tuple[str, int], ...] = ()) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``devices`` devices (0 = all of them),
    or, given ``axes`` (``(("data", 2), ("sequence", 2))``, from ``train.mesh``), a mesh of
    those named axes; a "data" axis of size 1 is added when ``axes`` has none."""
    available = jax.device_count()
    if axes:
        if AXIS not in dict(axes):
            axes = ((AXIS, 1), *axes)
        devices = int(np.prod([size for _, size in axes]))
        if devices > available:
            raise ValueError(
                f"train.mesh needs {devices} devices, but {available} "
                f"{jax.default_backend()} devices are available"
            )
    if not 0 <= devices <= available:
        raise ValueError(
            f"train.devices must be between 0 (all) and the {available} "
            f"{jax.default_backend()} devices available, got {devices}"
        )
    count = devices or available
    if jax.process_count() > 1 and count != available:
        raise ValueError(
            f"train.devices={devices} would use {count} of the {available} devices, but this "
            f"run spans {jax.process_count()} processes and each one must hold part of the "
            "mesh; set train.devices=0 (all devices)"
        )
    # In jax.devices() order, which keeps each process's devices together: its part of the
    # batch is then one contiguous slice. Auto axes: XLA lays out every intermediate, so
    # model code written for one device needs no sharding annotations.
    names, shape = zip(*axes, strict=True) if axes else ((AXIS,), (count,))
    grid = np.asarray(jax.devices()[:count]).reshape(shape)
    return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def spec_for(shape: tuple[int, ...], devices: int, rule: str) -> P:
    """Where one parameter or optimizer-state array of ``shape`` goes under ``rule``."""
    _check_rule(rule)
    if rule == "replicate":
        return P()
    divisible = [axis for axis, size in enumerate(shape) if size % devices == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda a: shape[a])  # the first of the largest on a tie
    return P(*[None] * axis, AXIS)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"train.param_sharding must be one of {RULES}, got {rule!r}")


def place(tree: Any, mesh: Mesh, rule: str) -> Any:
    """Parameters or optimizer state, every array on ``mesh`` by ``rule``.

    Every process must pass the same values (as it does when all initialize from one seed).
    """
    _check_rule(rule)

    def one(x: Any) -> jax.Array:
        spec = spec_for(np.shape(x), mesh.shape[AXIS], rule)
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(one, tree)


def place_batch(batch: Any, mesh: Mesh) -> Any:
    """This process's batch as one global batch split along its leading axis over ``mesh``.

    With several processes the global batch is their local batches concatenated in process
    order, so its leading size is the local one times the number of processes.
    """
    sharding = NamedSharding(mesh, P(AXIS))  # replicated over any other axis
    # The slices of the batch this process holds: over "data" only, whatever other axes.
    local = len(mesh.local_devices) * mesh.shape[AXIS] // mesh.size

    def one(path: Any, x: Any) -> jax.Array:
        name = "batch" + jax.tree_util.keystr(path)
        if np.ndim(x) == 0:
            raise ValueError(f"{name} is a scalar; every batch entry needs a leading batch axis")
        size = np.shape(x)[0]
        if size % local:
            where = f"{local} devices" + (
                f" of this process ({mesh.size} in the mesh)" if local != mesh.size else ""
            )
            raise ValueError(
                f"{name} has leading size {size}, which cannot be split evenly over the "
                f"{where}; make train.batch_size a multiple of {mesh.shape[AXIS]}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(one, batch)


def shardings(tree: Any) -> Any:
    """The sharding of every array of ``tree``: what a step should give back."""
    return jax.tree.map(lambda x: x.sharding, tree)


def gather(tree: Any) -> Any:
    """Every array whole on this process's first device: for evaluation and pictures."""

    def one(x: jax.Array) -> jax.Array:
        if not x.is_fully_addressable:  # spans other processes: collect it everywhere
            x = multihost_utils.process_allgather(x, tiled=True)
        return jax.device_put(x, jax.local_devices()[0])

    return jax.tree.map(one, tree)
