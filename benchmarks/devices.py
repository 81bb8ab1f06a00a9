"""Data- and sequence-parallel training steps on 1, 2, 4, 8 devices, and what they send.

    python -m benchmarks.devices --mode quick   # P = 1, 2, 4 and 2 processes; a few minutes
    python -m benchmarks.devices --mode full    # P = 1, 2, 4, 8, longer context, every variant

For each device count ``P`` a fresh process (``XLA_FLAGS=--xla_force_host_platform_device_count=P``)
builds the runner's training step (``experiments.runner._train_step`` with ``make_optimizer``'s
clipped AdamW, state donated) in these variants and times them interleaved:

* ``dp/replicate``, ``dp/shard``: data parallelism as ``experiments.parallel`` places it, the lm
  experiment's tiny preset (4 x 128, context 64), a fixed global batch split over ``P``;
  parameters and optimizer state replicated, or split ZeRO-3 style (``param_sharding="shard"``).
* ``sp/...``: sequence parallelism, one long sequence split over ``P`` devices with
  :func:`zoo.kernels.sharded.ring_attention` as the model's attention kernel (Liu et al. 2023):
  ``sp/zigzag`` feeds tokens already in the zigzag layout (``permute=False``),
  ``sp/zigzag+permute`` lets the kernel permute in and out in every layer
  (``permute=True``: what plugging the kernel into the model as it stands gives), and
  ``sp/contiguous`` keeps natural order (exact, but causal work is unbalanced).

Also the data-parallel step on 2 processes (``jax.distributed``, gloo, 2 CPU devices each).

Per variant: compile time, median step time (contention-filtered, ``benchmarks.timing``), the
first step's loss, and the bytes each device sends per step read from the compiled program
(:func:`parse_collectives` on ``compiled.as_text()``), projected onto real links
(:func:`project`): communication time = bytes / link bandwidth, next to compute time per device
= model FLOPs / P / a single-core matmul rate measured here (or ``--device-gflops``).

Emulated CPU devices share this machine's cores (2 here): P devices do the same total work on
the same cores plus the partitioning and the collectives, so measured step times can show
overhead only, never speed-up. The bytes are exact properties of the compiled program and do
carry over to a real cluster; the projection is only as good as its bandwidth and its
no-latency, no-overlap assumptions.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.timing import machine_info, save_results, spawn

VARIANTS = ("dp/replicate", "dp/shard", "sp/zigzag", "sp/zigzag+permute", "sp/contiguous")
MODES = {
    # devices, variants, sequence-parallel context, timed steps per variant, timing budget (s)
    "quick": ((1, 2, 4), VARIANTS[:4], 1024, 5, 30.0),
    "full": ((1, 2, 4, 8), VARIANTS, 2048, 9, 120.0),
}
CLEAN = 0.1  # a sample is clean when other processes used under 10% of the machine
FLOPS_FORMULA = "6 * (parameters - learned position table) + 12 * L * D * T per token"

# --------------------------------------------------------------------------------------------
# Bytes sent per step, read from the compiled HLO text.

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLS = re.compile(
    r"\b(condition|body|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)"
)
_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction of a compiled SPMD program (shapes are per device)."""

    op: str  # "all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all"
    name: str  # the instruction's name in the HLO
    result_bytes: int  # bytes of the result on one device
    group: int  # devices in each replica group (1 for collective-permute)
    leaving: float  # collective-permute: share of its source-target pairs that are not p -> p
    executions: int  # per run of the program: trip counts of enclosing while loops multiplied
    trip_count_known: bool  # False if an enclosing while loop has no known trip count
    in_loop: bool  # inside a while loop
    in_conditional: bool  # inside a conditional branch (counted as if it always ran)

    @property
    def sent_bytes(self) -> float:
        """Bytes one device sends per execution, by the ring-algorithm formulas.

        All-reduce ``2 (g - 1) / g x bytes`` (reduce-scatter then all-gather; Patarasuk & Yuan
        2009), all-gather ``(g - 1) / g x`` the gathered bytes, reduce-scatter ``(g - 1) / g x``
        the unscattered bytes, all-to-all ``(g - 1) / g x`` its bytes (it keeps its own share),
        collective-permute its operand (scaled by the share of pairs that leave the device).
        """
        g, b = self.group, self.result_bytes
        if self.op == "collective-permute":
            return b * self.leaving
        if self.op == "all-reduce":
            return 2.0 * (g - 1) / g * b
        if self.op == "reduce-scatter":
            return (g - 1) / g * (b * g)  # the operand is g results
        return (g - 1) / g * b  # all-gather (b is the gathered result), all-to-all


def _array_bytes(type_text: str) -> list[int]:
    """Bytes of every array in an HLO type: ``f32[4,8]{1,0}`` or a tuple of them."""
    sizes = []
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"unknown HLO element type {dtype!r} in {type_text!r}")
        sizes.append(math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype])
    return sizes


def _split_type(rhs: str) -> tuple[str, str]:
    """``"(f32[2], s32[]) all-reduce(...)..."`` -> (the result type, the rest)."""
    if not rhs.startswith("("):
        head, _, rest = rhs.partition(" ")
        return head, rest
    depth = 0
    for i, char in enumerate(rhs):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rhs[: i + 1], rhs[i + 1 :].lstrip()
    raise ValueError(f"unbalanced parentheses in HLO type: {rhs[:80]!r}")


def _group_size(attributes: str, devices: int) -> int:
    """Devices per replica group, from any of XLA's three spellings of ``replica_groups``."""
    match = re.search(
        r"replica_groups=(\{\{[^=]*?\}\}|\{\}|\[[\d,]+\]<=\S+|mesh\[[^\]]*\]\s*\{[^}]*\})",
        attributes,
    )
    if match is None or match.group(1) == "{}":
        return devices  # no groups: every device
    groups = match.group(1)
    if groups.startswith("{{"):  # explicit: {{0,1,2,3},{4,5,6,7}}
        return len(groups[2:].split("}")[0].split(","))
    if groups.startswith("["):  # iota: [num_groups, group_size]<=[...]
        return int(groups[1:].split("]")[0].split(",")[-1])
    # Over named mesh axes: mesh['axis_0'=4,'axis_1'=2] {'axis_0'} (a sub-axis: 'axis_0':(1)2).
    sizes = {name: int(size) for name, size in re.findall(r"'(\w+)'=(\d+)", groups)}
    chosen = groups.rsplit("{", 1)[1]
    size = 1
    for name, sub in re.findall(r"'(\w+)'(?::\(\d+\)(\d+))?", chosen):
        size *= int(sub) if sub else sizes[name]
    return size


def _permute_share(attributes: str) -> float:
    """The share of a collective-permute's source-target pairs that leave their device."""
    pairs = re.findall(r"\{(\d+),(\d+)\}", attributes.split("source_target_pairs=", 1)[-1])
    if not pairs:
        return 1.0
    return sum(a != b for a, b in pairs) / len(pairs)


def parse_collectives(hlo_text: str, devices: int) -> list[Collective]:
    """Every collective a compiled SPMD program runs, with how often it runs per call.

    ``hlo_text`` is ``compiled.as_text()`` (one device's program); ``devices`` is the number
    of devices it spans, for replica groups written as ``{}`` (all of them). Collectives
    inside a while loop run ``known_trip_count`` times (XLA's annotation on the loop; nested
    loops multiply); a loop without one counts once and is flagged. A collective inside a
    conditional branch is counted as if its branch always ran (an upper bound). Asynchronous
    pairs count once, at ``-start``; for an all-gather or collective-permute start the
    result tuple holds (operands, outputs) and only the outputs count.
    """
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            is_entry = line.startswith("ENTRY")
            current = line.removeprefix("ENTRY").split()[0].lstrip("%")
            computations[current] = []
            entry = current if is_entry else entry
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None:
            computations[current].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")

    found: list[Collective] = []

    def visit(name: str, times: int, known: bool, in_loop: bool, in_cond: bool) -> None:
        for line in computations.get(name, ()):
            match = _INSTRUCTION.match(line)
            if match is None:
                continue
            result_type, rest = _split_type(match.group(2))
            opcode = rest.split("(", 1)[0].strip()
            base = opcode.removesuffix("-start")
            if base in _COLLECTIVES and not opcode.endswith("-done"):
                if opcode.endswith("-start") and base in ("all-gather", "collective-permute"):
                    # (operands, outputs, u32[] contexts...): only the outputs are sent.
                    sizes = _array_bytes(re.sub(r"\bu32\[\]", "", result_type))
                    sizes = sizes[len(sizes) // 2 :]
                else:
                    sizes = _array_bytes(result_type)
                attributes = rest.split(")", 1)[-1]
                permute = base == "collective-permute"
                found.append(
                    Collective(
                        op=base,
                        name=match.group(1),
                        result_bytes=sum(sizes),
                        group=1 if permute else _group_size(attributes, devices),
                        leaving=_permute_share(attributes) if permute else 1.0,
                        executions=times,
                        trip_count_known=known,
                        in_loop=in_loop,
                        in_conditional=in_cond,
                    )
                )
            is_while = opcode == "while"
            trip = _TRIP_COUNT.search(rest)
            callees = list(_CALLS.findall(rest))
            for kind, listed in _CALL_LISTS.findall(rest):
                callees += [(kind, c.strip().lstrip("%")) for c in listed.split(",") if c.strip()]
            for kind, callee in callees:
                if kind == "to_apply" and base in _COLLECTIVES:
                    continue  # the reduction of an all-reduce: no collectives inside
                loop = is_while and kind == "body"
                visit(
                    callee,
                    times * (int(trip.group(1)) if loop and trip else 1),
                    known and not (loop and trip is None),
                    in_loop or loop,
                    in_cond
                    or kind in ("branch_computations", "true_computation", "false_computation"),
                )

    visit(entry, 1, True, False, False)
    return found


def summarize(collectives: list[Collective]) -> dict[str, Any]:
    """Bytes one device sends per step, in total and per kind of collective."""
    by_op: dict[str, dict[str, float]] = {}
    for c in collectives:
        entry = by_op.setdefault(c.op, {"instructions": 0, "launches": 0, "sent_bytes": 0.0})
        entry["instructions"] += 1
        entry["launches"] += c.executions
        entry["sent_bytes"] += c.sent_bytes * c.executions
    return {
        "sent_bytes": sum(e["sent_bytes"] for e in by_op.values()),
        "launches": sum(e["launches"] for e in by_op.values()),
        "by_op": by_op,
        "in_loops_bytes": sum(c.sent_bytes * c.executions for c in collectives if c.in_loop),
        "unknown_trip_counts": sum(not c.trip_count_known for c in collectives),
        "in_conditionals": sum(c.in_conditional for c in collectives),
    }


# --------------------------------------------------------------------------------------------
# The projection onto real links.


def project(
    sent_bytes: float, flops: float, devices: int, *, link_gbps: float, device_gflops: float
) -> dict[str, float]:
    """Seconds per step on a real machine: communication at ``link_gbps`` GB/s per device,
    compute of ``flops / devices`` at ``device_gflops``. No latency, no overlap of the two."""
    comm = sent_bytes / (link_gbps * 1e9)
    compute = flops / devices / (device_gflops * 1e9)
    return {
        "comm_s": comm,
        "compute_s": compute,
        "comm_over_compute": comm / compute if compute else math.inf,
    }


# --------------------------------------------------------------------------------------------
# Worker side: one process, one device count, every variant.


def _sequence_loss(model: Any, batch: dict[str, Any], rng: Any) -> tuple[Any, dict[str, Any]]:
    """The lm experiment's loss on inputs and targets given apart: both ``[B, T]``, so each
    splits evenly over the sequence devices (``lm.loss_fn`` shifts one ``[B, T + 1]`` array)."""
    import jax.numpy as jnp

    from experiments.tasks import lm

    total, count = lm._nll(model(batch["inputs"], rngs=rng), batch["targets"])
    return total / jnp.maximum(count, 1), {}


class _Step:
    """One runner training step on a mesh, compiled ahead of time; each call runs one step."""

    def __init__(
        self, model: Any, loss_fn: Any, train: Any, mesh: Any, rule: str, batch: Any
    ) -> None:
        import functools

        import jax
        from flax import nnx
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from experiments import parallel
        from experiments.runner import _train_step, make_optimizer

        # As experiments.runner.train builds it.
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params = parallel.place(params, mesh, rule)
        optimizer = make_optimizer(train)
        self.opt_state = parallel.place(optimizer.init(self.params), mesh, rule)
        fn = jax.jit(
            functools.partial(
                _train_step, graphdef=graphdef, rest=rest, loss_fn=loss_fn, optimizer=optimizer
            ),
            donate_argnums=(0, 1),
            out_shardings=(
                parallel.shardings(self.params),
                parallel.shardings(self.opt_state),
                NamedSharding(mesh, P()),
            ),
        )
        self.batch = batch
        # No dropout in these presets: one key, made replicated on every device of every
        # process (a host value cannot be put on another process's devices), serves every step.
        self.rng = jax.jit(
            lambda: jax.random.fold_in(jax.random.key(train.seed), 0),
            out_shardings=NamedSharding(mesh, P()),
        )()
        start = time.perf_counter()
        lowered = fn.lower(self.params, self.opt_state, batch, self.rng)
        lowered_at = time.perf_counter()
        self.compiled = lowered.compile()
        self.lower_s, self.compile_s = lowered_at - start, time.perf_counter() - lowered_at

    def __call__(self) -> Any:
        import jax

        self.params, self.opt_state, metrics = self.compiled(
            self.params, self.opt_state, self.batch, self.rng
        )
        return jax.block_until_ready((self.params, self.opt_state, metrics))[2]


def _lm_setup(preset: str, context: int | None) -> tuple[Any, Any, int]:
    import dataclasses as dc

    from benchmarks.train_steps import lm_config

    model, train, preset_context = lm_config(preset)
    if context is not None:
        model = dc.replace(model, max_length=max(model.max_length, context))
    return model, train, context or preset_context


def _build(variant: str, spec: dict[str, Any]) -> tuple[_Step, dict[str, Any]]:
    """The step of ``variant`` and what it computes (tokens, FLOPs, parameters)."""
    import functools

    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import AxisType, Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from benchmarks.train_steps import _tokens, lm_flops_per_token
    from experiments import parallel
    from experiments.tasks import lm
    from zoo.kernels.sharded import ring_attention, ring_permutation
    from zoo.models.transformer import TransformerLM, count_parameters

    rng = np.random.default_rng(0)
    if variant.startswith("dp/"):
        config, train, context = _lm_setup(spec["preset"], None)
        batch_size = spec["batch"]
        mesh = parallel.make_mesh(0)  # every device (of every process)
        tokens = _tokens(rng, (batch_size, context + 1), config.vocab_size)
        local = batch_size // jax.process_count()
        start = jax.process_index() * local
        batch = parallel.place_batch({"tokens": tokens[start : start + local]}, mesh)
        model = TransformerLM(config, rngs=nnx.Rngs(train.seed))
        parameters = count_parameters(model)  # before the step donates its arrays
        step = _Step(model, lm.loss_fn, train, mesh, variant.split("/")[1], batch)
        ring_kv_bytes = None
    else:
        config, train, context = _lm_setup(spec["preset"], spec["context"])
        batch_size = spec["sp_batch"]
        devices = jax.device_count()
        mesh = Mesh(np.asarray(jax.devices()), ("seq",), axis_types=(AxisType.Auto,))
        layout = "contiguous" if variant == "sp/contiguous" else "zigzag"
        permute = variant == "sp/zigzag+permute"
        kernel = functools.partial(
            ring_attention, mesh=mesh, axis_name="seq", layout=layout, permute=permute
        )
        tokens = _tokens(rng, (batch_size, context + 1), config.vocab_size)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        if variant == "sp/zigzag":
            # Tokens in zigzag order from the start, so no layer reshuffles them. The model
            # embeds slot i with position row i instead of row perm[i]: the learned table's
            # rows relabelled, the same computation and communication.
            perm = ring_permutation(context, devices, "zigzag")
            inputs, targets = inputs[:, perm], targets[:, perm]
        sharding = NamedSharding(mesh, P(None, "seq"))
        batch = {
            "inputs": jax.device_put(inputs, sharding),
            "targets": jax.device_put(targets, sharding),
        }
        model = TransformerLM(config, kernel=kernel, rngs=nnx.Rngs(train.seed))
        parameters = count_parameters(model)
        step = _Step(model, _sequence_loss, train, mesh, "replicate", batch)
        # The ring's own traffic (Liu et al. 2023): in each layer P - 1 hops of the K and V
        # blocks forward; P - 1 hops of K, V and their gradients backward, then the
        # gradients' last hop home. Each block is [B, T / P, K, H] float32.
        block = batch_size * context // devices * (config.num_kv_heads or config.num_heads)
        block *= config.head_dim * 4
        hops = 6 * (devices - 1) + 2 if devices > 1 else 0
        ring_kv_bytes = config.num_layers * block * hops
    info = {
        "context": context,
        "batch": batch_size,
        "tokens": batch_size * context,
        "parameters": parameters,
        "gradient_bytes": 4 * parameters,  # float32
        "flops": batch_size * context * lm_flops_per_token(config, context),
    }
    if ring_kv_bytes is not None:
        info["ring_kv_bytes"] = ring_kv_bytes
    return step, info


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, compile and time every variant of ``spec`` on this process's devices."""
    import jax

    from benchmarks.timing import Samples, race, time_call

    devices = jax.device_count()
    result: dict[str, Any] = {
        "devices": devices,
        "processes": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "variants": {},
    }
    runs = {}
    for variant in spec["variants"]:
        try:
            step, info = _build(variant, spec)
        except Exception as e:  # one variant that cannot be built must not lose the others
            result["variants"][variant] = {"error": f"{type(e).__name__}: {e}"[:400]}
            continue
        text = step.compiled.as_text() or ""
        start = time.perf_counter()
        loss = float(step()["loss"])
        first_s = time.perf_counter() - start
        result["variants"][variant] = {
            **info,
            "lower_s": step.lower_s,
            "compile_s": step.compile_s,
            "first_call_s": first_s,
            "first_loss": loss,
            "collectives": summarize(parse_collectives(text, devices)),
        }
        runs[variant] = step
    if not runs:
        return result
    if jax.process_count() > 1:
        # Every process must run the same steps (they are collective): a fixed count, in
        # the same order, rather than race()'s stop-when-clean.
        samples = {name: Samples() for name in runs}
        for _ in range(spec["repeats"]):
            for name, run in runs.items():
                seconds, contention = time_call(run)
                samples[name].seconds.append(seconds)
                samples[name].contention.append(contention)
    else:
        samples = race(runs, repeats=spec["repeats"], budget_s=spec["budget_s"], threshold=CLEAN)
    for name, s in samples.items():
        result["variants"][name].update(s.summary(CLEAN))
    return result


def matmul_worker(n: int = 1024) -> dict[str, Any]:
    """Dense float32 ``[n, n]`` matmul GFLOP/s of ``jnp.dot`` on one core (this process is
    pinned to one CPU before JAX starts): the compute rate of one emulated device."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.timing import race

    x = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    dot = jax.jit(jnp.dot).lower(x, x).compile()

    def run() -> None:
        jax.block_until_ready(dot(x, x))

    run()
    summary = race({"dot": run}, repeats=7, budget_s=20.0, threshold=CLEAN)["dot"].summary(CLEAN)
    return {
        "n": n,
        "cpus": sorted(os.sched_getaffinity(0)),
        "gflops": 2 * n**3 / summary["median_s"] / 1e9,
        **summary,
    }


def _with_device_count(flags: str, devices: int) -> str:
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", flags).strip()
    return f"{flags} --xla_force_host_platform_device_count={devices}".strip()


def _worker_main(spec: dict[str, Any]) -> dict[str, Any]:
    # Before JAX creates its CPU client: the device count is fixed then.
    os.environ["XLA_FLAGS"] = _with_device_count(
        os.environ.get("XLA_FLAGS", ""), spec["local_devices"]
    )
    import jax

    if spec.get("coordinator"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # Short timeouts: a missing peer should fail the case, not hang it for minutes.
        jax.distributed.initialize(
            spec["coordinator"],
            num_processes=spec["num_processes"],
            process_id=spec["process_id"],
            initialization_timeout=120,
            heartbeat_timeout_seconds=60,
            shutdown_timeout_seconds=60,
        )
    result = worker(spec)
    result["process_id"] = jax.process_index()
    if spec.get("coordinator"):
        jax.distributed.shutdown()
    return result


# --------------------------------------------------------------------------------------------
# Driver side.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_processes(spec: dict[str, Any], processes: int, timeout: float) -> list[dict[str, Any]]:
    """``processes`` workers joined by ``jax.distributed`` on 127.0.0.1; each one's JSON."""
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.devices",
                "--worker",
                json.dumps(
                    {**spec, "coordinator": address, "num_processes": processes, "process_id": i}
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            return [{"error": f"timed out after {timeout:.0f} s"}]
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = " | ".join(err.strip().splitlines()[-3:])[-400:]
            results.append({"error": f"process exited with {proc.returncode}: {tail}"})
        else:
            results.append(json.loads(lines[-1]))
    return results


def _add_projections(run: dict[str, Any], settings: dict[str, Any]) -> None:
    for r in run.get("variants", {}).values():
        if "collectives" not in r:
            continue
        sent, devices = r["collectives"]["sent_bytes"], run["devices"]
        links = {"link": settings["link_gbps"], "cross_host": settings["cross_host_gbps"]}
        r["projection"] = {
            name: project(
                sent,
                r["flops"],
                devices,
                link_gbps=gbps,
                device_gflops=settings["device_gflops"],
            )
            for name, gbps in links.items()
        }
        if r.get("gradient_bytes") and devices > 1:
            # Plain data parallelism's all-reduce of every gradient (ring): the yardstick.
            r["ring_allreduce_of_gradients_bytes"] = (
                2 * (devices - 1) / devices * r["gradient_bytes"]
            )


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    default_devices, default_variants, default_context, default_repeats, budget = MODES[args.mode]
    device_counts = _ints(args.devices) if args.devices else default_devices
    variants = tuple(args.variants.split(",")) if args.variants else default_variants
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    matmul = None
    if args.device_gflops is None:
        print("single-core matmul rate ...", flush=True)
        matmul = spawn("benchmarks.devices", ["--worker-matmul"], timeout=300)
    gflops = args.device_gflops or (matmul or {}).get("gflops")
    source = "--device-gflops" if args.device_gflops else "measured"
    if not gflops:
        gflops, source = 50.0, "assumed: the measurement failed"
    settings = {
        "preset": args.preset,
        "dp_batch": args.batch,
        "sp_context": args.context or default_context,
        "sp_batch": args.sp_batch,
        "repeats": args.repeats or default_repeats,
        "link_gbps": args.link_gbps,
        "cross_host_gbps": args.cross_host_gbps,
        "device_gflops": gflops,
        "device_gflops_source": source,
    }
    results: dict[str, Any] = {
        "machine": machine_info(),
        "mode": args.mode,
        "settings": settings,
        "matmul_single_core": matmul,
        "flops_formula": FLOPS_FORMULA,
        "runs": [],
    }
    spec = {
        "preset": args.preset,
        "batch": args.batch,
        "context": settings["sp_context"],
        "sp_batch": args.sp_batch,
        "repeats": settings["repeats"],
        "budget_s": args.budget_s or budget,
    }
    for P in device_counts:
        # On one device the zigzag order is the natural one: nothing for permute to do.
        chosen = [v for v in variants if not (P == 1 and v == "sp/zigzag+permute")]
        print(f"P = {P}: {', '.join(chosen)}", flush=True)
        run = spawn(
            "benchmarks.devices",
            ["--worker", json.dumps({**spec, "variants": chosen, "local_devices": P})],
            timeout=args.timeout,
        )
        run.setdefault("devices", P)
        run.setdefault("processes", 1)
        _add_projections(run, settings)
        _print_run(run)
        results["runs"].append(run)
        _save(results, out)
    if args.processes > 1:
        dp = [v for v in variants if v.startswith("dp/")]
        print(f"{args.processes} processes x 2 devices (jax.distributed): {', '.join(dp)}")
        procs = _spawn_processes(
            {**spec, "variants": dp, "local_devices": 2}, args.processes, args.timeout
        )
        run = dict(procs[0])
        run["per_process"] = [
            {k: v for k, v in p.items() if k != "variants"}
            | {
                "median_s": {n: r.get("median_s") for n, r in p.get("variants", {}).items()},
                "first_loss": {n: r.get("first_loss") for n, r in p.get("variants", {}).items()},
            }
            for p in procs
        ]
        run.setdefault("devices", 2 * args.processes)
        run.setdefault("processes", args.processes)
        # The step is synchronous: it takes as long as the slower process.
        for name, r in run.get("variants", {}).items():
            times = [p.get("median_s", {}).get(name) for p in run["per_process"]]
            if all(t is not None for t in times):
                r["median_s"] = max(times)
        _add_projections(run, settings)
        _print_run(run)
        results["distributed"] = run
    results["elapsed_s"] = time.time() - started
    _save(results, out)
    print(f"wrote {out}/results.json, results.md, devices.png", flush=True)
    return results


def _print_run(run: dict[str, Any]) -> None:
    if "error" in run:
        print("   error:", run["error"], flush=True)
    for name, r in run.get("variants", {}).items():
        if "error" in r:
            print(f"   {name:18s} error: {r['error']}", flush=True)
            continue
        median = r.get("median_s")
        print(
            f"   {name:18s} "
            + (f"{median * 1e3:8.1f} ms  " if median else "")
            + f"compile {r['compile_s']:5.1f} s  "
            f"sent {r['collectives']['sent_bytes'] / 2**20:8.2f} MiB/device/step  "
            f"loss {r['first_loss']:.4f}",
            flush=True,
        )


def _save(results: dict[str, Any], out: Path) -> None:
    save_results(out, results, markdown(results), lambda: plot(results, out / "devices.png"))


# --------------------------------------------------------------------------------------------
# Reports.


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.2f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def _rows(results: dict[str, Any]) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    runs = list(results["runs"]) + ([results["distributed"]] if "distributed" in results else [])
    return [(run, name, r) for run in runs for name, r in run.get("variants", {}).items()]


def _where(run: dict[str, Any]) -> str:
    if run.get("processes", 1) > 1:
        return f"{run['devices']} ({run['processes']} proc.)"
    return str(run["devices"])


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    contexts = [
        r["context"] for _, n, r in _rows(results) if n.startswith("dp/") and "context" in r
    ]
    mm = results.get("matmul_single_core") or {}
    rate = f"{s['device_gflops']:.0f} GFLOP/s per device (" + (
        f"measured: jnp.dot {mm['n']}^2 float32 pinned to one core, median of "
        f"{mm['clean_samples'] or mm['samples']} {'clean' if mm['clean_samples'] else 'contended'}"
        f" of {mm['samples']} calls)"
        if "gflops" in mm and s["device_gflops_source"] == "measured"
        else f"{s['device_gflops_source']})"
    )
    link, cross = f"{s['link_gbps']:g}", f"{s['cross_host_gbps']:g}"
    lines = [
        f"# Devices: data- and sequence-parallel training steps ({results['mode']})",
        "",
        f"{m['processor']}, {m['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"**Read this first.** The devices here are emulated: P XLA CPU devices in one process "
        f"sharing this machine's {m['cores']} cores (the 2-process run: two such processes on "
        "the same cores, talking through gloo on 127.0.0.1). Every P does the same total work "
        "on the same cores, plus the partitioning and the collectives, which are memory copies "
        "here, not network transfers. So the step times cannot show scaling. At most they show "
        f"the {m['cores']} cores used better by {m['cores']} device programs running side by "
        "side than by one device's program (a P = 2 time below the P = 1 time), and beyond "
        "that the overhead of more devices on the same cores. The bytes sent are read from the "
        "compiled program and are what each device would send on real hardware; the "
        "projection turns them into link time with no latency and no overlap with compute.",
        "",
        f"- `dp/*`: the lm experiment's {s['preset']} preset (vocabulary 65, AdamW, clipping), "
        f"a global batch of {s['dp_batch']} x {contexts[0] if contexts else 'T'} tokens split "
        "over P devices; `replicate` keeps a whole copy of parameters and AdamW state on every "
        "device, `shard` splits each array along its largest divisible axis "
        '(`param_sharding="shard"`, the idea of ZeRO-3 / FSDP) and leaves the rest to XLA\'s '
        "partitioner.",
        f"- `sp/*`: the same model, a batch of {s['sp_batch']} x {s['sp_context']} tokens split "
        "along the sequence over P devices, parameters replicated, `ring_attention` (causal) "
        "as the attention kernel. `zigzag`: tokens fed in zigzag order once "
        "(`permute=False`; the model then embeds slot i with position row i, a relabelling "
        "of the learned table, so its loss differs slightly); `zigzag+permute`: the kernel "
        "permutes to zigzag order and back in every layer (`permute=True`); `contiguous`: "
        "natural order, nothing permuted, causal work unbalanced over the devices.",
        f"- Step time: median of the timed steps during which other processes used under "
        f"{CLEAN:.0%} of the machine (`*`: there was no such step; median of all). The "
        "variants of one P are timed interleaved in one process; different P are different "
        "processes, not comparable to better than the machine's noise (about +-15%, more "
        "under load).",
        "- Sent: bytes one device sends per step, from the collectives in "
        "`compiled.as_text()`: all-reduce 2(g-1)/g x bytes, all-gather and reduce-scatter "
        "(g-1)/g x the full bytes, all-to-all (g-1)/g x bytes, collective-permute its "
        "operand; inside a while loop times its known trip count (the ring's P - 1 steps). "
        "Launches: collectives run per step.",
        "",
        "| P | variant | step ms | compile s | first loss | sent MiB/device/step | launches "
        "| 2(P-1)/P x gradient MiB |",
        "|---" * 8 + "|",
    ]
    for run, name, r in _rows(results):
        if "error" in r:
            lines.append(f"| {_where(run)} | {name} | error: {r['error'][:120]} |")
            continue
        median = r.get("median_s")
        star = "*" if median is not None and r.get("clean_samples", 1) == 0 else ""
        cells = [
            _where(run),
            name,
            _ms(median) + star,
            f"{r['compile_s']:.1f}",
            f"{r['first_loss']:.4f}",
            _mib(r["collectives"]["sent_bytes"]),
            str(r["collectives"]["launches"]),
            _mib(r.get("ring_allreduce_of_gradients_bytes")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for run in [*results["runs"], results.get("distributed", {})]:
        if run and "error" in run:
            lines.append(f"| {_where(run)} | all | error: {run['error'][:160]} |")

    lines += [
        "",
        "Bytes sent per device per step, by collective (MiB; launches in brackets):",
        "",
        "| P | variant | " + " | ".join(_COLLECTIVES) + " | of which in while loops |",
        "|---" * 8 + "|",
    ]
    for run, name, r in _rows(results):
        if "collectives" not in r:
            continue
        c = r["collectives"]
        cells = [
            f"{_mib(c['by_op'][op]['sent_bytes'])} [{c['by_op'][op]['launches']}]"
            if op in c["by_op"]
            else "-"
            for op in _COLLECTIVES
        ]
        unknown = " (unknown trip counts!)" if c["unknown_trip_counts"] else ""
        cells.append(_mib(c["in_loops_bytes"]) + unknown)
        lines.append(f"| {_where(run)} | {name} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "## Projection onto real links",
        "",
        f"Communication = sent bytes / link bandwidth: {link} GB/s per device (an NVLink-class "
        f"link) and {cross} GB/s (a cross-host link; for the 2-process run the ring's slowest "
        "link is the one between hosts). Compute = model FLOPs "
        f"({results['flops_formula']}) / P at {rate}. No latency, no overlap of the two. "
        "Break-even: the device FLOP/s at which compute takes as long as communication; a "
        "faster device (a GPU: tens to hundreds of TFLOP/s) is communication-bound at this "
        "model size unless the two overlap. Rerun with `--device-gflops` and `--link-gbps` for "
        "another machine.",
        "",
        f"| P | variant | comm ms @{link} GB/s | comm ms @{cross} GB/s | compute ms | "
        f"comm / compute @{link} | break-even TFLOP/s @{link} | @{cross} |",
        "|---" * 8 + "|",
    ]
    for run, name, r in _rows(results):
        if "projection" not in r or not r["collectives"]["sent_bytes"]:
            continue
        fast, slow = r["projection"]["link"], r["projection"]["cross_host"]
        per_device = r["flops"] / run["devices"]
        cells = [
            _where(run),
            name,
            f"{fast['comm_s'] * 1e3:.3f}",
            f"{slow['comm_s'] * 1e3:.3f}",
            f"{fast['compute_s'] * 1e3:.2f}",
            f"{fast['comm_over_compute']:.3f}",
            f"{per_device / fast['comm_s'] / 1e12:.1f}",
            f"{per_device / slow['comm_s'] / 1e12:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_findings(results)]
    return "\n".join(lines) + "\n"


def _findings(results: dict[str, Any]) -> list[str]:
    """Sentences the numbers support, computed from them."""
    out = [
        "## What the numbers say",
        "",
        "Yardsticks: the ring all-reduce of every float32 gradient, 2(P-1)/P x 4 x "
        "parameters, is what plain data parallelism must send. The ring's K/V traffic "
        "(Liu et al. 2023) is, per layer, P - 1 hops of the K and V blocks forward and P - 1 "
        "hops of K, V and their gradients backward, then the gradients' last hop home: "
        "6(P-1) + 2 blocks of [B, T/P, K, H] float32. Above 1: int32 positions travel with "
        "the blocks. Below 1: XLA sent a block once where the program names it twice (at "
        "P = 2 the one-step ring loops are unrolled and the backward's first K/V hop is the "
        "forward's).",
        "",
    ]
    rows = [(run, name, r) for run, name, r in _rows(results) if "collectives" in r]
    for run, name, r in rows:
        c, grads = r["collectives"], r.get("ring_allreduce_of_gradients_bytes")
        if not grads:
            continue
        if name.startswith("dp/"):
            out.append(
                f"- {name}, {_where(run)} devices: sends {c['sent_bytes'] / grads:.3f}x the ring "
                "all-reduce of every float32 gradient"
                + (
                    " (ZeRO-3 would send 1.5x: weights gathered forward and backward, "
                    "gradients reduce-scattered)."
                    if name == "dp/shard"
                    else "."
                )
            )
            continue
        ring = c["by_op"].get("collective-permute", {}).get("sent_bytes", 0.0)
        rest = {op: e["sent_bytes"] for op, e in c["by_op"].items() if op != "collective-permute"}
        out.append(
            f"- {name}, {_where(run)} devices: collective-permutes send "
            f"{ring / max(r['ring_kv_bytes'], 1):.3f}x the ring's K/V traffic; besides, "
            + ", ".join(f"{op} {b / 2**20:.2f} MiB" for op, b in rest.items())
            + f" = {sum(rest.values()) / grads:.2f}x the gradient all-reduce."
        )
    by_p: dict[int, dict[str, Any]] = {}
    for run, name, r in rows:
        if run.get("processes", 1) == 1:
            by_p.setdefault(run["devices"], {})[name] = r["collectives"]
    for P, found in sorted(by_p.items()):
        zig, perm = found.get("sp/zigzag"), found.get("sp/zigzag+permute")
        if P > 1 and zig and perm:
            extra = {
                op: e["sent_bytes"] - zig["by_op"].get(op, {}).get("sent_bytes", 0.0)
                for op, e in perm["by_op"].items()
            }
            out.append(
                f"- P={P}: letting the kernel permute to zigzag order and back in every layer "
                f"(`permute=True`) sends {perm['sent_bytes'] / max(zig['sent_bytes'], 1):.1f}x "
                "the bytes of feeding the tokens in zigzag order once; the difference: "
                + ", ".join(f"{op} {b / 2**20:+.2f} MiB" for op, b in extra.items() if b)
                + "."
            )
    base = {name: r.get("median_s") for run, name, r in rows if run["devices"] == 1}
    for run, name, r in rows:
        if run["devices"] > 1 and r.get("median_s") and base.get(name):
            out.append(
                f"- {name}, {_where(run)} devices: {r['median_s'] / base[name]:.2f}x the "
                "1-device step time (the same work on the same cores)."
            )
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    """Step time, bytes sent per device, and projected comm / compute time, against P.

    One line per variant over the single-process runs; the 2-process run is a square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    panels = (
        ("median step time, emulated devices on shared cores", "ms"),
        ("bytes each device sends per step (compiled HLO)", "MiB"),
        (f"projected comm / compute at {s['link_gbps']:g} GB/s", "comm time / compute time"),
    )

    def values(r: dict[str, Any]) -> tuple[float, float, float]:
        return (
            r.get("median_s", math.nan) * 1e3,
            r["collectives"]["sent_bytes"] / 2**20,
            r["projection"]["link"]["comm_over_compute"],
        )

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    distributed = results.get("distributed", {})
    for v in VARIANTS:
        points = [
            (run["devices"], values(r))
            for run in results["runs"]
            for name, r in run.get("variants", {}).items()
            if name == v and "collectives" in r
        ]
        if not points:
            continue
        color = None
        for i, ax in enumerate(axes):
            # Log axes: one device sends nothing, so its bytes and ratio are left out.
            xy = [(p, y[i]) for p, y in points if y[i] > 0]
            if xy:
                (line,) = ax.plot(*zip(*xy, strict=True), marker="o", label=v, color=color)
                color = line.get_color()
        d = distributed.get("variants", {}).get(v, {})
        if "collectives" in d:
            for ax, y in zip(axes, values(d), strict=True):
                if y > 0:
                    ax.plot([distributed["devices"]], [y], "s", ms=9, fillstyle="none", color=color)
    grads = [
        (run["devices"], r["ring_allreduce_of_gradients_bytes"] / 2**20)
        for run in results["runs"]
        for name, r in run.get("variants", {}).items()
        if name == "dp/replicate" and r.get("ring_allreduce_of_gradients_bytes")
    ]
    if grads:
        axes[1].plot(*zip(*grads, strict=True), "k--", lw=1, label="2(P-1)/P x gradient bytes")
    counts = sorted({run["devices"] for run in results["runs"]})
    for ax, (title, label) in zip(axes, panels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(p) for p in counts])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("devices P (square: 2 processes x 2 devices)")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(
        f"{results['machine']['processor']}, {results['machine']['cores']} cores "
        f"({results['mode']}); compute at {s['device_gflops']:.0f} GFLOP/s per device",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=tuple(MODES), default="quick")
    parser.add_argument("--out", default=None, help="default benchmarks/results/devices/<mode>")
    parser.add_argument("--devices", default=None, help="comma-separated device counts")
    parser.add_argument(
        "--variants", default=None, help="comma-separated subset of " + ",".join(VARIANTS)
    )
    parser.add_argument("--preset", default="tiny", choices=("tiny", "smoke"), help="LM shape")
    parser.add_argument("--batch", type=int, default=16, help="data-parallel global batch")
    parser.add_argument("--context", type=int, default=None, help="sequence-parallel context")
    parser.add_argument("--sp-batch", type=int, default=1, help="sequence-parallel batch")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--budget-s", type=float, default=None, help="timing budget per process")
    parser.add_argument("--timeout", type=float, default=900.0, help="per worker process")
    parser.add_argument(
        "--processes", type=int, default=2, help="jax.distributed run; 0 or 1 = skip"
    )
    parser.add_argument("--link-gbps", type=float, default=100.0, help="intra-host link GB/s")
    parser.add_argument("--cross-host-gbps", type=float, default=25.0, help="cross-host GB/s")
    parser.add_argument(
        "--device-gflops", type=float, default=None, help="per-device rate (default: measured)"
    )
    parser.add_argument(
        "--report", action="store_true", help="rewrite results.md and the PNG from results.json"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-matmul", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker_main(json.loads(args.worker))), flush=True)
        return None
    if args.worker_matmul:
        print(json.dumps(matmul_worker()), flush=True)
        return None
    args.out = args.out or f"benchmarks/results/devices/{args.mode}"
    if args.report:
        results = json.loads((Path(args.out) / "results.json").read_text())
        _save(results, Path(args.out))
        return results
    return run_sweep(args)


if __name__ == "__main__":
    main()
