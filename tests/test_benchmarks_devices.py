"""The devices measurement: its HLO byte counter on a hand-written program with a known
answer, its tables and plot from rows with known yardsticks, and (slow) real cases on 2
emulated devices, in one process and in two joined by jax.distributed."""

import pytest

from benchmarks import collectives, devices

# One device's program on 4 devices. f32[8,16] is 512 bytes. Expected bytes sent:
#   all-reduce of (f32[8,16], s32[]) over 4:        2 * 3/4 * 516   =  774
#   all-gather to f32[16,16] in groups of 2:        1/2 * 1024      =  512
#   reduce-scatter to f32[2,16] over mesh axis of 4: 3/4 * (128 * 4) =  384
#   all-to-all of f32[8,16] over all ({}) 4:         3/4 * 512       =  384
#   collective-permute in a loop run 3 times:        3 * 512         = 1536
#   all-reduce of bf16[100] in pairs, loop of unknown trip count (once): 2 * 1/2 * 200 = 200
#   collective-permute-start, 2 of 4 pairs leave their device: 512 * 2/4 = 256
#   all-reduce in a conditional branch (counted as if taken): 2 * 3/4 * 512 = 768
HLO = """\
HloModule jit_step, num_partitions=4

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%ring_body (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=1
  %hop = f32[8,16]{1,0} collective-permute(%x), channel_id=1, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  ROOT %t = (s32[], f32[8,16]{1,0}) tuple(%i, %hop)
}

%ring_cond (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%open_body (q: (s32[], bf16[100])) -> (s32[], bf16[100]) {
  %q = (s32[], bf16[100]{0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %y = bf16[100]{0} get-tuple-element(%q), index=1
  %pairs = bf16[100]{0} all-reduce(%y), channel_id=2, replica_groups={{0,1},{2,3}}, to_apply=%add
  ROOT %u = (s32[], bf16[100]{0}) tuple(%j, %pairs)
}

%open_cond (q: (s32[], bf16[100])) -> pred[] {
  %q = (s32[], bf16[100]{0}) parameter(0)
  ROOT %go = pred[] constant(true)
}

%taken (x: f32[8,16]) -> f32[8,16] {
  %x = f32[8,16]{1,0} parameter(0)
  ROOT %branch_sum = f32[8,16]{1,0} all-reduce(%x), channel_id=3, replica_groups={{0,1,2,3}}, to_apply=%add
}

%not_taken (x: f32[8,16]) -> f32[8,16] {
  ROOT %x = f32[8,16]{1,0} parameter(0)
}

ENTRY %main (x: f32[8,16], y: bf16[100], c: s32[], flag: pred[]) -> f32[8,16] {
  %x = f32[8,16]{1,0} parameter(0)
  %y = bf16[100]{0} parameter(1)
  %c = s32[] parameter(2)
  %flag = pred[] parameter(3)
  %both = (f32[8,16]{1,0}, s32[]) all-reduce(%x, %c), channel_id=4, replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add
  %gathered = f32[16,16]{1,0} all-gather(%x), channel_id=5, replica_groups=[2,2]<=[4], dimensions={0}
  %scattered = f32[2,16]{1,0} reduce-scatter(%x), channel_id=6, replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_0'}, dimensions={0}, to_apply=%add
  %swapped = f32[8,16]{1,0} all-to-all(%x), channel_id=7, replica_groups={}, dimensions={0}
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,16]{1,0}) tuple(%zero, %x)
  %ring = (s32[], f32[8,16]{1,0}) while(%init), condition=%ring_cond, body=%ring_body, backend_config={"known_trip_count":{"n":"3"}}
  %init2 = (s32[], bf16[100]{0}) tuple(%zero, %y)
  %open = (s32[], bf16[100]{0}) while(%init2), condition=%open_cond, body=%open_body
  %start = (f32[8,16]{1,0}, f32[8,16]{1,0}, u32[], u32[]) collective-permute-start(%x), channel_id=8, source_target_pairs={{0,0},{1,1},{2,3},{3,2}}
  %done = f32[8,16]{1,0} collective-permute-done(%start)
  ROOT %branch = f32[8,16]{1,0} conditional(%flag, %x, %done), true_computation=%taken, false_computation=%not_taken
}
"""


def test_hlo_byte_counter_on_a_hand_written_program():
    found = {c.name: c for c in collectives.parse_collectives(HLO, devices=4)}
    assert set(found) == {
        "both",
        "gathered",
        "scattered",
        "swapped",
        "hop",
        "pairs",
        "start",
        "branch_sum",
    }
    want = {
        "both": 774,
        "gathered": 512,
        "scattered": 384,
        "swapped": 384,
        "hop": 512,
        "pairs": 200,
        "start": 256,
        "branch_sum": 768,
    }
    assert {n: c.sent_bytes for n, c in found.items()} == pytest.approx(want)
    assert [found[n].group for n in ("both", "gathered", "scattered", "swapped", "pairs")] == [
        4,
        2,
        4,
        4,
        2,
    ]
    assert found["hop"].executions == 3 and found["hop"].in_loop
    assert found["pairs"].executions == 1 and not found["pairs"].trip_count_known
    assert found["branch_sum"].in_conditional and not found["both"].in_conditional

    summary = collectives.summarize(list(found.values()))
    assert summary["sent_bytes"] == pytest.approx(774 + 512 + 384 + 384 + 3 * 512 + 200 + 256 + 768)
    assert summary["launches"] == 10  # 8 instructions, the ring's hop 3 times
    assert summary["in_loops_bytes"] == pytest.approx(3 * 512 + 200)
    assert summary["unknown_trip_counts"] == 1 and summary["in_conditionals"] == 1
    assert summary["by_op"]["collective-permute"]["launches"] == 4


def test_hlo_byte_counter_needs_an_entry_and_known_types():
    with pytest.raises(ValueError, match="ENTRY"):
        collectives.parse_collectives("%f (x: f32[]) -> f32[] {\n}\n", devices=2)
    odd = HLO.replace("bf16[100]{0} all-reduce", "q7[100]{0} all-reduce")
    with pytest.raises(ValueError, match="q7"):
        collectives.parse_collectives(odd, devices=4)


def test_projection():
    p = collectives.project(2e9, 8e12, 4, link_gbps=100.0, device_gflops=1000.0)
    assert p["comm_s"] == pytest.approx(0.02) and p["compute_s"] == pytest.approx(2.0)
    assert p["comm_over_compute"] == pytest.approx(0.01)


def _row(variant, P, sent, median_s, processes=1, **extra):
    case = {"link_gbps": 100.0, "cross_host_gbps": 25.0, "device_gflops": [50.0, "measured"]}
    by_op = {"all-reduce": {"instructions": 1, "launches": 2, "sent_bytes": sent}}
    timing = {"median_s": median_s, "samples": 3, "clean_samples": 3, "mean_contention": 0.0}
    collectives_ = {"sent_bytes": sent, "launches": 2, "by_op": by_op, "in_loops_bytes": 0,
                    "unknown_trip_counts": 0, "in_conditionals": 0}  # fmt: skip
    return {"devices": P, "processes": processes, "variant": variant, "batch": 4, "context": 8,
            "compile_s": 1.0, "first_loss": 4.0, "flops": 8e9, "collectives": collectives_,
            **timing, **extra, "case": case}  # fmt: skip


def test_tables_and_plot_read_the_yardsticks_from_the_rows():
    rows = [
        _row("dp/replicate", 1, 0.0, 0.2),
        _row("dp/replicate", 2, 2e6, 0.1, ring_allreduce_of_gradients_bytes=1e6),
        _row("dp/replicate", 4, 3e6, 0.4, processes=2, ring_allreduce_of_gradients_bytes=1.5e6),
        {"devices": 8, "processes": 1, "variant": "all", "error": "killed (out of memory?)"},
    ]
    text = "\n".join(line for table in devices.TABLES for line in table.markdown(rows))
    # sent / the gradient all-reduce, step time / the 1-device step's (the slower process's)
    assert (
        "| 2 | dp/replicate | 4 x 8 | 100.0 | 1.0 | 4.0000 | 1.91 | 2 | 0.95 | 2.000x | 0.50x |"
        in text
    )
    assert (
        "| 4 (2 proc.) | dp/replicate |" in text and "| 8 | all | killed (out of memory?) |" in text
    )
    # 2e6 bytes at 100 GB/s = 0.020 ms; 8e9 FLOPs / 2 devices at 50 GFLOP/s = 80 ms
    assert "| 2 | dp/replicate | 100 / 25 | 0.020 / 0.080 | 80.00 | 50 (measured) |" in text
    points = [p for row in rows for p in devices.PLOTS[0].points(row)]
    assert ("MiB each device sends per step (compiled HLO)", "2(P-1)/P x gradients", 2,
            pytest.approx(1e6 / 2**20)) in points  # fmt: skip
    assert not any(p[2] == 1 and "MiB" in p[0] for p in points)  # nothing sent: off a log axis


def _case(devices_, processes, variants):
    return {"name": "test", "in_process": True, "preset": "smoke", "batch": 16, "sp_batch": 1,
            "context": 16, "repeats": 1, "budget_s": 5.0, "timeout_s": 300, "link_gbps": 100.0,
            "cross_host_gbps": 25.0, "device_gflops": [50.0, "--device-gflops"],
            "devices": devices_, "processes": processes, "variants": variants}  # fmt: skip


@pytest.mark.slow
def test_two_emulated_devices_send_the_gradient_all_reduce():
    """One worker process with 2 emulated devices (the smoke LM), data and sequence parallel."""
    measured = devices.measure(_case(2, 1, ["dp/replicate", "sp/zigzag"]))
    assert isinstance(measured, list), measured  # one row per variant, not a failed case
    rows = {r["variant"]: r for r in measured}
    dp, sp = rows["dp/replicate"], rows["sp/zigzag"]
    for r in (dp, sp):
        assert "error" not in r and r["devices"] == 2 and r["local_devices"] == 2
        assert "--xla_force_host_platform_device_count=2" in r["xla_flags"]
        assert r["median_s"] > 0 and r["samples"] >= 1 and r["compile_s"] > 0 and r["flops"] > 0
        assert r["gradient_bytes"] == 4 * r["parameters"]
    assert dp["tokens"] == 16 * 16 and sp["tokens"] == 16
    # Plain data parallelism: the all-reduce of every float32 gradient, 2 (P - 1) / P x its
    # bytes. Not exactly: XLA sends only the position-table rows the context reaches, and the
    # tied embedding's two gradients (input lookup, output projection) separately, plus a few
    # scalars (loss, token count).
    analytic = 2 * (2 - 1) / 2 * dp["gradient_bytes"]
    assert dp["ring_allreduce_of_gradients_bytes"] == pytest.approx(analytic)
    assert 0.8 * analytic <= dp["collectives"]["sent_bytes"] <= 1.25 * analytic
    assert set(dp["collectives"]["by_op"]) == {"all-reduce"}
    # The ring passes K/V blocks around: collective-permutes, close to the ring's own count.
    permutes = sp["collectives"]["by_op"]["collective-permute"]["sent_bytes"]
    assert 0.5 * sp["ring_kv_bytes"] <= permutes <= 1.5 * sp["ring_kv_bytes"]


@pytest.mark.slow
def test_two_processes_join_and_report_the_slower_one():
    measured = devices.measure(_case(2, 2, ["dp/replicate"]))
    assert isinstance(measured, list), measured
    (row,) = measured
    assert "error" not in row and row["devices"] == 2 and row["local_devices"] == 1
    assert len(row["per_process"]) == 2
    assert row["median_s"] == max(p["median_s"] for p in row["per_process"])
    assert row["per_process"][0]["first_loss"] == pytest.approx(row["per_process"][1]["first_loss"])
