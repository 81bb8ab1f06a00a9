"""Tables, findings and the plot of the devices benchmark (``benchmarks/devices.py``)."""

import math
from pathlib import Path
from typing import Any

from benchmarks.collectives import _COLLECTIVES
from benchmarks.devices import CLEAN, VARIANTS

__all__ = ["markdown", "plot"]


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
