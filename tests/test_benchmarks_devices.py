"""The device benchmark: its HLO byte counter on a hand-written program with a known answer,
and one data-parallel case on 2 emulated devices through the real CLI."""

import json
import subprocess
import sys

import pytest

from benchmarks import collectives

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


@pytest.mark.slow
def test_two_device_data_parallel_case_sends_the_gradient_all_reduce(tmp_path):
    """The real CLI, one worker process with 2 emulated devices (the smoke LM)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.devices",
        "--preset=smoke",
        "--devices=2",
        "--variants=dp/replicate",
        "--processes=0",
        "--device-gflops=50",
        "--repeats=1",
        "--budget-s=5",
        f"--out={tmp_path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert run["devices"] == 2 and run["processes"] == 1 and "error" not in run
    assert "--xla_force_host_platform_device_count=2" in run["xla_flags"]
    r = run["variants"]["dp/replicate"]
    assert r["median_s"] > 0 and r["samples"] >= 1 and r["compile_s"] > 0
    assert r["flops"] > 0 and r["tokens"] == 16 * 16 and r["parameters"] > 0
    assert r["gradient_bytes"] == 4 * r["parameters"]
    # Plain data parallelism: the all-reduce of every float32 gradient, 2 (P - 1) / P x its
    # bytes. Not exactly: XLA sends only the position-table rows the context reaches (16 of
    # 32 here), and the tied embedding's two gradients (input lookup, output projection)
    # separately, plus a few scalars (loss, token count).
    analytic = 2 * (2 - 1) / 2 * r["gradient_bytes"]
    assert r["ring_allreduce_of_gradients_bytes"] == pytest.approx(analytic)
    sent = r["collectives"]["sent_bytes"]
    assert 0.8 * analytic <= sent <= 1.25 * analytic
    assert set(r["collectives"]["by_op"]) == {"all-reduce"}
    assert r["projection"]["link"]["comm_s"] == pytest.approx(sent / 100e9)
    assert r["projection"]["link"]["compute_s"] == pytest.approx(r["flops"] / 2 / 50e9)
    table = (tmp_path / "results.md").read_text()
    assert "emulated" in table and "| 2 | dp/replicate |" in table
    assert (tmp_path / "devices.png").stat().st_size > 0
