"""Bytes each device sends per step, read from a compiled SPMD program's HLO text.

:func:`parse_collectives` finds every collective in ``compiled.as_text()`` with how often it
runs (loop trip counts) and the bytes one device sends for it; :func:`summarize` totals them;
:func:`project` turns bytes and FLOPs into seconds on real links.
"""

import dataclasses
import math
import re
from typing import Any

__all__ = ["COLLECTIVES", "Collective", "parse_collectives", "project", "summarize"]

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLS = re.compile(
    r"\b(condition|body|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)"
)
_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_BRANCHES = ("branch_computations", "true_computation", "false_computation")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction of a compiled SPMD program (shapes are per device)."""

    op: str  # one of COLLECTIVES
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
    size = 1
    for name, sub in re.findall(r"'(\w+)'(?::\(\d+\)(\d+))?", groups.rsplit("{", 1)[1]):
        size *= int(sub) if sub else sizes[name]
    return size


def _permute_share(attributes: str) -> float:
    """The share of a collective-permute's source-target pairs that leave their device."""
    pairs = re.findall(r"\{(\d+),(\d+)\}", attributes.split("source_target_pairs=", 1)[-1])
    return sum(a != b for a, b in pairs) / len(pairs) if pairs else 1.0


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
            current = line.removeprefix("ENTRY").split()[0].lstrip("%")
            computations[current] = []
            entry = current if line.startswith("ENTRY") else entry
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
            if base in COLLECTIVES and not opcode.endswith("-done"):
                if opcode.endswith("-start") and base in ("all-gather", "collective-permute"):
                    # (operands, outputs, u32[] contexts...): only the outputs are sent.
                    sizes = _array_bytes(re.sub(r"\bu32\[\]", "", result_type))
                    sizes = sizes[len(sizes) // 2 :]
                else:
                    sizes = _array_bytes(result_type)
                attributes = rest.split(")", 1)[-1]
                permute = base == "collective-permute"
                found.append(Collective(
                    base, match.group(1), sum(sizes),
                    group=1 if permute else _group_size(attributes, devices),
                    leaving=_permute_share(attributes) if permute else 1.0,
                    executions=times, trip_count_known=known, in_loop=in_loop,
                    in_conditional=in_cond,
                ))  # fmt: skip
            trip = _TRIP_COUNT.search(rest)
            callees = list(_CALLS.findall(rest))
            for kind, listed in _CALL_LISTS.findall(rest):
                callees += [(kind, c.strip().lstrip("%")) for c in listed.split(",") if c.strip()]
            for kind, callee in callees:
                if kind == "to_apply" and base in COLLECTIVES:
                    continue  # the reduction of an all-reduce: no collectives inside
                loop = opcode == "while" and kind == "body"
                times_here = times * (int(trip.group(1)) if loop and trip else 1)
                known_here = known and not (loop and trip is None)
                visit(callee, times_here, known_here, in_loop or loop, in_cond or kind in _BRANCHES)

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


def project(
    sent_bytes: float, flops: float, devices: int, *, link_gbps: float, device_gflops: float
) -> dict[str, float]:
    """Seconds per step on a real machine: communication at ``link_gbps`` GB/s per device,
    compute of ``flops / devices`` at ``device_gflops``. No latency, no overlap of the two."""
    comm = sent_bytes / (link_gbps * 1e9)
    compute = flops / devices / (device_gflops * 1e9)
    return {"comm_s": comm, "compute_s": compute,
            "comm_over_compute": comm / compute if compute else math.inf}  # fmt: skip
