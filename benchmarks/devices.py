"""Data- and sequence-parallel training steps on 1, 2, 4, 8 devices, and what they send.

    python -m benchmarks.devices --mode quick   # P = 1, 2, 4 and 2 processes; a few minutes
    python -m benchmarks.devices --mode full    # P = 1, 2, 4, 8, longer context, every variant

For each device count ``P`` a fresh process (``XLA_FLAGS=--xla_force_host_platform_device_count=P``)
builds the runner's training step (``experiments.runner.train_step`` with ``make_optimizer``'s
clipped AdamW, state donated) in these variants and times them interleaved:

* ``dp/replicate``, ``dp/shard``: data parallelism as ``experiments.parallel`` places it, the lm
  experiment's tiny preset (4 x 128, context 64), a fixed global batch split over ``P``;
  parameters and optimizer state replicated, or split ZeRO-3 style (``param_sharding="shard"``).
* ``sp/...``: sequence parallelism, one long sequence split over ``P`` devices with
  :func:`zoo.kernels.ring.ring_attention` as the model's attention kernel (Liu et al. 2023):
  ``sp/zigzag`` feeds tokens already in the zigzag layout (``permute=False``),
  ``sp/zigzag+permute`` lets the kernel permute in and out in every layer
  (``permute=True``: what plugging the kernel into the model as it stands gives), and
  ``sp/contiguous`` keeps natural order (exact, but causal work is unbalanced).

Also the data-parallel step on 2 processes (``jax.distributed``, gloo, 2 CPU devices each).

Per variant: compile time, median step time (contention-filtered, ``benchmarks.timing``), the
first step's loss, and the bytes each device sends per step read from the compiled program
(``benchmarks/collectives.py``: ``parse_collectives`` on ``compiled.as_text()``), projected
onto real links (``collectives.project``): communication time = bytes / link bandwidth, next to
compute time per device = model FLOPs / P / a single-core matmul rate measured here (or
``--device-gflops``). Tables and plot: ``benchmarks/devices_report.py``.

Emulated CPU devices share this machine's cores (2 here): P devices do the same total work on
the same cores plus the partitioning and the collectives, so measured step times can show
overhead only, never speed-up. The bytes are exact properties of the compiled program and do
carry over to a real cluster; the projection is only as good as its bandwidth and its
no-latency, no-overlap assumptions.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from benchmarks.collectives import parse_collectives, project, summarize
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
# Worker side: one process, one device count, every variant.


def _sequence_loss(model: Any, batch: dict[str, Any], rng: Any) -> tuple[Any, dict[str, Any]]:
    """The lm experiment's loss on inputs and targets given apart: both ``[B, T]``, so each
    splits evenly over the sequence devices (``lm.loss_fn`` shifts one ``[B, T + 1]`` array)."""
    import jax.numpy as jnp

    from experiments.losses import masked_cross_entropy

    total, count = masked_cross_entropy(model(batch["inputs"], rngs=rng), batch["targets"])
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
        from experiments.runner import make_optimizer, train_step

        # As experiments.runner.train builds it.
        # nnx.split's type is variadic (a State per filter); two filters give exactly three.
        parts: tuple[Any, ...] = nnx.split(model, nnx.Param, ...)
        graphdef, params, rest = parts
        self.params = parallel.place(params, mesh, rule)
        optimizer = make_optimizer(train)
        self.opt_state = parallel.place(optimizer.init(self.params), mesh, rule)
        fn = jax.jit(
            functools.partial(
                train_step, graphdef=graphdef, rest=rest, loss_fn=loss_fn, optimizer=optimizer
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
    from zoo.kernels.ring import ring_attention, ring_permutation
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
        layout: Literal["contiguous", "zigzag"] = (
            "contiguous" if variant == "sp/contiguous" else "zigzag"
        )
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
    from benchmarks.devices_report import markdown, plot

    save_results(out, results, markdown(results), lambda: plot(results, out / "devices.png"))


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
