"""Data- and sequence-parallel training steps on 1, 2, 4, 8 emulated devices, and what they send.

python -m benchmarks.devices                # P = 1, 2, 4 and 2 processes; a few minutes
python -m benchmarks.devices --mode full    # P = 1, 2, 4, 8, longer context, every variant
python -m benchmarks.devices --devices 2 --variants dp/replicate --processes 0
"""

import argparse
import functools
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from benchmarks import harness
from benchmarks.collectives import COLLECTIVES, parse_collectives, project, summarize
from benchmarks.harness import Column, Plot, Row, Table

NAME, TITLE = "devices", "Data- and sequence-parallel devices"
VARIANTS = ("dp/replicate", "dp/shard", "sp/zigzag", "sp/zigzag+permute", "sp/contiguous")
MODES = {
    "quick": "P = 1, 2, 4 and 2 processes x 2 devices; dp/* and sp/zigzag(+permute), context 1,024",
    "full": "P = 1, 2, 4, 8 and 2 processes x 2 devices; every variant, context 2,048",
}
# devices, variants, sequence-parallel context, timed steps per variant, timing budget (s)
SWEEPS = {"quick": ((1, 2, 4), VARIANTS[:4], 1024, 5, 30.0),
          "full": ((1, 2, 4, 8), VARIANTS, 2048, 9, 120.0)}  # fmt: skip
NOTE = """\
**Read this first.** The devices are emulated: P XLA CPU devices in one process on this
machine's cores (the 2-process run: two such processes joined by `jax.distributed`, gloo on
127.0.0.1). Every P does the same work on the same cores plus the partitioning and the
collectives (memory copies here), so step times show overhead, never speed-up; the bytes sent
are properties of the compiled program and carry over to a real cluster. The step is the
runner's (`experiments.runner.train_step`, clipped AdamW, state donated) on the lm preset.
`dp/*`: a global batch split over P, state replicated or split ZeRO-3 style
(`param_sharding="shard"`). `sp/*`: one sequence split over P, causal `ring_attention` (Liu et
al. 2023) as the kernel; `zigzag` feeds tokens in zigzag order once (slot i embeds with position
row i: its loss differs slightly), `zigzag+permute` permutes in every layer, `contiguous` keeps
natural order (causal work unbalanced). Step time: median of the steps (a P's variants
interleaved in one fresh process) while others used under 10% of the machine (`*`: none). Sent:
bytes one device sends per step by ring formulas from the collectives in `compiled.as_text()`
(`benchmarks/collectives.py`), times enclosing loops' trip counts; launches: collectives run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--devices", default=None, help="comma-separated device counts (default: the mode's)")
    add("--variants", default=None, help="comma-separated subset of " + ",".join(VARIANTS))
    add("--preset", default="tiny", choices=("tiny", "smoke"), help="LM shape")
    add("--batch", type=int, default=16, help="data-parallel global batch")
    add("--context", type=int, default=None, help="sequence-parallel context")
    add("--sp-batch", type=int, default=1, help="sequence-parallel batch")
    add("--repeats", type=int, default=None, help="timed steps per variant")
    add("--budget-s", type=float, default=None, help="timing budget per process")
    add("--timeout", type=float, default=900.0, help="per worker process")
    add("--processes", type=int, default=2, help="jax.distributed run; 0 or 1 = skip")
    add("--link-gbps", type=float, default=100.0, help="intra-host link GB/s (NVLink-class)")
    add("--cross-host-gbps", type=float, default=25.0, help="cross-host link GB/s")
    add("--device-gflops", type=float, default=None, help="per-device rate (default: measured)")


def cases(args: argparse.Namespace, rows: list[Row]) -> Iterator[Row]:
    counts, variants, context, repeats, budget = SWEEPS[args.mode]
    counts = tuple(int(p) for p in args.devices.split(",")) if args.devices else counts
    variants = tuple(args.variants.split(",")) if args.variants else variants
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    gflops, source = args.device_gflops, "--device-gflops"
    if gflops is None:
        yield {"name": "single-core matmul", "matmul": 1024, "timeout_s": 300}
        gflops = next((r["gflops"] for r in rows if "gflops" in r), None)
        gflops, source = (gflops, "measured") if gflops else (50.0, "assumed: not measured")
    spec = {k: getattr(args, k) for k in ("preset", "batch", "sp_batch", "link_gbps",
                                          "cross_host_gbps")}  # fmt: skip
    spec |= {"in_process": True,  # the driver only starts the workers, with their device count
             "context": args.context or context, "repeats": args.repeats or repeats,
             "budget_s": args.budget_s or budget, "timeout_s": args.timeout,
             "device_gflops": [gflops, source]}  # fmt: skip
    for P in counts:
        # On one device the zigzag order is the natural one: nothing for permute to do.
        chosen = [v for v in variants if not (P == 1 and v == "sp/zigzag+permute")]
        yield {**spec, "name": f"P{P}", "devices": P, "processes": 1, "variants": chosen}
    n, dp = args.processes, [v for v in variants if v.startswith("dp/")]
    if n > 1 and dp:
        yield {**spec, "name": f"P{2 * n} {n} processes", "devices": 2 * n, "processes": n,
               "variants": dp}  # fmt: skip


def measure(case: Row) -> Row | list[Row]:
    """One device count in one worker process, or several joined by ``jax.distributed``."""
    if "matmul" in case:  # one emulated device's rate: this fresh process pinned to one CPU
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        rates = harness.dense_matmul({"n": case["matmul"]})
        cpus = sorted(os.sched_getaffinity(0))
        return {"n": case["matmul"], "cpus": cpus, "gflops": rates["jnp.dot"]}
    n, flags = case["processes"], os.environ.get("XLA_FLAGS", "").split()
    count = f"--xla_force_host_platform_device_count={case['devices'] // n}"
    env = {"XLA_FLAGS": " ".join([*(f for f in flags if "device_count=" not in f), count])}
    specs = [case]
    if n > 1:
        with socket.socket() as s:  # a free port for the coordinator
            s.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{s.getsockname()[1]}"
        specs = [{**case, "coordinator": address, "process_id": i} for i in range(n)]
    spawn = functools.partial(harness.spawn, "benchmarks.devices:worker", timeout=case["timeout_s"])
    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(lambda spec: spawn(spec, env=env), specs))
    where = {"devices": case["devices"], "processes": n}
    if errors := [r["error"] for r in runs if "error" in r]:
        return {**where, "variant": "all", "error": " / ".join(errors)[:400]}
    rows = []
    facts = {k: v for k, v in runs[0].items() if k != "variants"}
    for variant, r in runs[0]["variants"].items():
        rows.append(row := {**where, **facts, "variant": variant, **r})
        if n > 1 and "median_s" in r:
            keys = ("median_s", "first_loss")
            row["per_process"] = [{k: p["variants"][variant][k] for k in keys} for p in runs]
            # The step is synchronous: it takes as long as the slower process.
            row["median_s"] = max(p["median_s"] for p in row["per_process"])
    return rows


# --------------------------------------------------------------------------------------
# Inside a worker process: one device count, every variant.


def _sequence_loss(model: Any, batch: Row, rng: Any) -> tuple[Any, Row]:
    """The lm loss on inputs and targets given apart, both ``[B, T]``, so each splits evenly
    over the sequence devices (``lm.loss_fn`` shifts one ``[B, T + 1]`` array)."""
    import jax.numpy as jnp

    from experiments.losses import masked_cross_entropy

    total, count = masked_cross_entropy(model(batch["inputs"], rngs=rng), batch["targets"])
    return total / jnp.maximum(count, 1), {}


def _build(variant: str, spec: Row) -> tuple[Callable[[], Any], str, Row]:
    """``variant``'s step as ``experiments.runner.train`` builds it, compiled ahead of time:
    (a call running one step, its HLO text, what it computes and its compile seconds)."""
    import dataclasses

    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import AxisType, Mesh, NamedSharding
    from jax.sharding import PartitionSpec as PS

    from benchmarks.train_steps import lm_config, lm_flops_per_token
    from experiments import parallel
    from experiments.runner import make_optimizer, train_step
    from experiments.tasks import lm
    from zoo.kernels.ring import ring_attention, ring_permutation
    from zoo.models.transformer import TransformerLM, count_parameters

    config, train, context = lm_config(spec["preset"])
    P = jax.device_count()
    if variant.startswith("dp/"):
        B, loss_fn, kernel = spec["batch"], lm.loss_fn, None
        mesh = parallel.make_mesh(0)  # every device of every process
        place = functools.partial(parallel.place, mesh=mesh, rule=variant[3:])
    else:
        B, loss_fn, context = spec["sp_batch"], _sequence_loss, spec["context"]
        config = dataclasses.replace(config, max_length=max(config.max_length, context))
        mesh = Mesh(np.asarray(jax.devices()), ("seq",), axis_types=(AxisType.Auto,))
        # Parameters replicated (parallel.place knows the data axis only).
        place = functools.partial(jax.device_put, device=NamedSharding(mesh, PS()))
        layout: Literal["contiguous", "zigzag"] = (
            "contiguous" if variant == "sp/contiguous" else "zigzag"
        )
        kernel = functools.partial(ring_attention, mesh=mesh, axis_name="seq", layout=layout,
                                   permute=variant == "sp/zigzag+permute")  # fmt: skip
    # Ids 0-3 are PAD, BOS, EOS, UNK in every tokenizer of the zoo: real tokens only.
    tokens = np.random.default_rng(0).integers(4, config.vocab_size, (B, context + 1), np.int32)
    if kernel is None:
        local = B // jax.process_count()
        mine = tokens[jax.process_index() * local :][:local]
        batch = parallel.place_batch({"tokens": mine}, mesh)
    else:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        if variant == "sp/zigzag":  # in zigzag order from the start: no layer reshuffles them
            perm = ring_permutation(context, P, "zigzag")
            inputs, targets = inputs[:, perm], targets[:, perm]
        split = NamedSharding(mesh, PS(None, "seq"))
        batch = {"inputs": jax.device_put(inputs, split), "targets": jax.device_put(targets, split)}
    model = TransformerLM(config, kernel=kernel, rngs=nnx.Rngs(train.seed))
    parameters = count_parameters(model)  # before the step donates its arrays
    parts: tuple[Any, ...] = nnx.split(model, nnx.Param, ...)  # a State per filter: three
    graphdef, params, rest = parts
    optimizer = make_optimizer(train)
    params = place(params)
    state = [params, place(optimizer.init(params))]
    step = functools.partial(train_step, graphdef=graphdef, rest=rest, loss_fn=loss_fn,
                             optimizer=optimizer)  # fmt: skip
    replicated = NamedSharding(mesh, PS())
    shardings = (*(parallel.shardings(s) for s in state), replicated)
    # No dropout in these presets: one key, made replicated on every device of every process
    # (a host value cannot be put on another process's devices), serves every step.
    key = jax.jit(lambda: jax.random.fold_in(jax.random.key(train.seed), 0),
                  out_shardings=replicated)()  # fmt: skip
    start = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1), out_shardings=shardings).lower(
        *state, batch, key
    )
    lowered_at = time.perf_counter()
    compiled = lowered.compile()

    def run() -> Any:
        state[0], state[1], metrics = compiled(*state, batch, key)
        return jax.block_until_ready((state, metrics))[1]

    info = {"context": context, "batch": B, "tokens": B * context, "parameters": parameters,
            "gradient_bytes": 4 * parameters, "lower_s": lowered_at - start,
            "compile_s": time.perf_counter() - lowered_at,
            "flops": B * context * lm_flops_per_token(config, context)}  # fmt: skip
    if P > 1:  # plain data parallelism's ring all-reduce of every float32 gradient
        info["ring_allreduce_of_gradients_bytes"] = 2 * (P - 1) / P * info["gradient_bytes"]
    if kernel is not None:
        # The ring's own traffic (Liu et al. 2023): per layer P - 1 hops of the K and V blocks
        # forward, P - 1 of K, V and their gradients backward, then the gradients' last hop
        # home. Each block is [B, T / P, K, H] float32.
        block = B * context // P * (config.num_kv_heads or config.num_heads) * config.head_dim * 4
        info["ring_kv_bytes"] = config.num_layers * block * (6 * (P - 1) + 2 if P > 1 else 0)
    return run, compiled.as_text() or "", info


def worker(spec: Row) -> Row:
    """Build, compile and time every variant of ``spec`` on this process's devices."""
    import jax

    if spec.get("coordinator"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # Short timeouts: a missing peer should fail the case, not hang it for minutes.
        jax.distributed.initialize(
            spec["coordinator"], num_processes=spec["processes"], process_id=spec["process_id"],
            initialization_timeout=120, heartbeat_timeout_seconds=60, shutdown_timeout_seconds=60,
        )  # fmt: skip
    P = jax.device_count()
    variants: dict[str, Row] = {}
    runs: dict[str, Callable[[], Any]] = {}
    for variant in spec["variants"]:
        try:
            run, hlo, info = _build(variant, spec)
        except Exception as e:  # one variant that cannot be built must not lose the others
            variants[variant] = {"error": f"{type(e).__name__}: {e}"[:400]}
            continue
        start = time.perf_counter()
        loss = float(run()["loss"])
        info |= {"first_call_s": time.perf_counter() - start, "first_loss": loss}
        variants[variant] = info | {"collectives": summarize(parse_collectives(hlo, P))}
        runs[variant] = run
    if jax.process_count() > 1:
        # Every process must run the same steps (they are collective): a fixed count, in the
        # same order, rather than race()'s stop-when-clean.
        samples = {name: harness.Samples() for name in runs}
        for _ in range(spec["repeats"]):
            for name, run in runs.items():
                seconds, contention = harness.time_call(run)
                samples[name].seconds.append(seconds)
                samples[name].contention.append(contention)
        jax.distributed.shutdown()
    else:
        samples = harness.race(runs, repeats=spec["repeats"], budget_s=spec["budget_s"])
    for name, s in samples.items():
        variants[name].update(s.summary())
    flags = os.environ.get("XLA_FLAGS", "")
    return {"devices": P, "local_devices": jax.local_device_count(), "xla_flags": flags,
            "variants": variants}  # fmt: skip


# --------------------------------------------------------------------------------------
# Reading the rows.


def _where(r: Row) -> str:
    return f"{r['devices']} ({r['processes']} proc.)" if r["processes"] > 1 else str(r["devices"])


def _mib(x: float | None) -> str | None:
    return None if x is None else f"{x / 2**20:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _read(rows: list[Row]) -> list[Row]:
    """The measured rows, each with its bytes against the yardsticks (the gradient all-reduce,
    the ring's K/V traffic, sp/zigzag's bytes at the same P), its step time against one
    device's and its projection onto the links of its case (``collectives.project``)."""
    done = [r for r in rows if "collectives" in r]
    one = {r["variant"]: r.get("median_s") for r in done if r["devices"] == 1}
    zigzag = {
        r["devices"]: r["collectives"]["sent_bytes"]
        for r in done
        if r["variant"] == "sp/zigzag" and r["devices"] > 1 and r["processes"] == 1
    }
    out = []
    for r in done:
        sent, case, ring = r["collectives"]["sent_bytes"], r["case"], r.get("ring_kv_bytes")
        grads = r.get("ring_allreduce_of_gradients_bytes")
        permutes = r["collectives"]["by_op"].get("collective-permute", {}).get("sent_bytes", 0.0)
        at = functools.partial(
            project, sent, r["flops"], r["devices"], device_gflops=case["device_gflops"][0]
        )
        links = {k: at(link_gbps=case[k]) for k in ("link_gbps", "cross_host_gbps")}
        # permuting in every layer (or none) against zigzag order once
        alone = r["processes"] == 1 and r["variant"] in ("sp/zigzag+permute", "sp/contiguous")
        many = r["devices"] > 1
        out.append(
            r
            | {
                "links": links,
                "vs": {
                    "gradients": _ratio(sent, grads),
                    "ring": _ratio(permutes, ring),
                    "rest": _ratio(sent - permutes, grads) if ring is not None else None,
                    "zigzag": _ratio(sent, zigzag.get(r["devices"])) if alone else None,
                    "one": _ratio(r.get("median_s"), one.get(r["variant"])) if many else None,
                },
            }
        )
    return out  # fmt: skip


def _vs(key: str, fmt: str) -> Callable[[Row], str | None]:
    return lambda r: None if r["vs"][key] is None else fmt.format(r["vs"][key])


def _links(f: Callable[[Row, Row], float], fmt: str) -> Callable[[Row], str]:
    """``link / cross-host`` values of a row's projection."""
    return lambda r: " / ".join(fmt.format(f(r, r["links"][k])) for k in r["links"])


def _sent(op: str) -> Callable[[Row], str]:
    def cell(r: Row) -> str:
        e = r["collectives"]["by_op"].get(op)
        return f"{_mib(e['sent_bytes'])} [{e['launches']}]" if e else "-"

    return cell


_P, _VARIANT = Column("P", _where), Column("variant", lambda r: r["variant"])
TABLES = (
    Table("Step time and bytes sent", [
        _P, _VARIANT,
        Column("batch x T", lambda r: f"{r['batch']} x {r['context']}"),
        Column("step ms", lambda r: r.get("median_s") and
               f"{r['median_s'] * 1e3:.1f}{harness.star(r)}"),
        Column("compile s", lambda r: r["compile_s"], "{:.1f}"),
        Column("first loss", lambda r: r["first_loss"], "{:.4f}"),
        Column("sent MiB/device/step", lambda r: _mib(r["collectives"]["sent_bytes"])),
        Column("launches", lambda r: r["collectives"]["launches"]),
        Column("2(P-1)/P x gradient MiB",
               lambda r: _mib(r.get("ring_allreduce_of_gradients_bytes"))),
        Column("sent / that", _vs("gradients", "{:.3f}x")),
        Column("step / 1 device's", _vs("one", "{:.2f}x")),
    ], _read,
        "`2(P-1)/P x gradient`: the ring all-reduce of every float32 gradient, what plain data "
        "parallelism must send (ZeRO-3 would send 1.5x). `step / 1 device's`: the same work."),
    Table("Bytes sent per device per step, by collective", [
        _P, _VARIANT, *(Column(op, _sent(op)) for op in COLLECTIVES),
        Column("in while loops", lambda r: f"{r['collectives']['in_loops_bytes'] / 2**20:.2f}" + (
            " (unknown trip counts!)" if r["collectives"]["unknown_trip_counts"] else "")),
        Column("collective-permute / ring K/V", _vs("ring", "{:.3f}x")),
        Column("the rest / gradient all-reduce", _vs("rest", "{:.2f}x")),
        Column("sent / sp/zigzag's", _vs("zigzag", "{:.1f}x")),
    ], _read,
        "MiB [launches]. Ring K/V: 6(P-1) + 2 blocks of [B, T/P, K, H] float32 per layer; above "
        "1, int32 positions travel with them; below 1, XLA sends a block once where the program "
        "names it twice (P = 2: loops unrolled, the backward's first hop is the forward's)."),
    Table("Projection onto real links", [
        _P, _VARIANT,
        Column("link / cross-host GB/s", lambda r: "{link_gbps:g} / {cross_host_gbps:g}".format(
            **r["case"])),
        Column("comm ms", _links(lambda r, p: 1e3 * p["comm_s"], "{:.3f}")),
        Column("compute ms", lambda r: 1e3 * r["links"]["link_gbps"]["compute_s"], "{:.2f}"),
        Column("at GFLOP/s per device",
               lambda r: "{:.0f} ({})".format(*r["case"]["device_gflops"])),
        Column("comm / compute", _links(lambda r, p: p["comm_over_compute"], "{:.3f}")),
        Column("break-even TFLOP/s", _links(
            lambda r, p: r["flops"] / r["devices"] / p["comm_s"] / 1e12, "{:.1f}")),
    ], lambda rows: [r for r in _read(rows) if r["collectives"]["sent_bytes"]],
        "Comm = bytes / link bandwidth (NVLink-class, then cross-host); compute = FLOPs (6 x "
        "(parameters - position table) + 12 L D T per token) / P at a single-core `jnp.dot` "
        "rate of the run (or `--device-gflops`); no latency, no overlap. Break-even: the device "
        "rate at which compute takes as long as comm: a faster device is comm-bound here."),
    Table("Failed", [_P, _VARIANT, Column("error", lambda r: r["error"][:200])],
          lambda rows: [r for r in rows if "error" in r and "variant" in r]),
)  # fmt: skip


def _points(row: Row) -> Iterator[tuple[str, str, float, float]]:
    if "collectives" not in row:
        return
    (row,) = _read([row])
    P, sent = row["devices"], row["collectives"]["sent_bytes"] / 2**20
    series = row["variant"] + (f" ({row['processes']} processes)" if row["processes"] > 1 else "")
    if "median_s" in row:
        yield "median step ms, emulated devices on shared cores", series, P, 1e3 * row["median_s"]
    if sent > 0:  # log axes: one device sends nothing
        yield "MiB each device sends per step (compiled HLO)", series, P, sent
        if row["variant"] == "dp/replicate" and row["processes"] == 1:
            grads = row["ring_allreduce_of_gradients_bytes"] / 2**20
            yield "MiB each device sends per step (compiled HLO)", "2(P-1)/P x gradients", P, grads
        ratio = row["links"]["link_gbps"]["comm_over_compute"]
        yield "projected comm / compute on the intra-host link", series, P, ratio


PLOTS = (Plot("devices.png", _points, "devices P", "ms / MiB / ratio (see the title)"),)


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    return []  # what is sent and what it would cost: a measurement that promises nothing


if __name__ == "__main__":
    harness.main("benchmarks.devices")
