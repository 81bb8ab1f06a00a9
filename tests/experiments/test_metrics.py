"""Metric records of a resumed run: each step once in metrics.jsonl, TensorBoard told to hide the
steps redone."""

import json
import pathlib
import struct

from tensorboardX.proto import event_pb2

from experiments.metrics import MetricWriter


def _events(path: pathlib.Path) -> list[event_pb2.Event]:
    """The events of a TensorBoard file: TFRecords of (length, its CRC, data, its CRC)."""
    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
        at += 12 + length + 4
    return events


def test_a_resumed_writer_drops_the_records_of_the_steps_it_redoes(tmp_path):
    first = MetricWriter(tmp_path, start_step=0)
    for step in range(1, 5):
        first.write(step, "train", {"loss": 1.0 / step})
    first.write(4, "eval", {"bleu": 0.25})
    first.write(4, "test", {"bleu": 0.2})  # a run of 4 steps finished here, and went on
    first.write(5, "train", {"loss": 0.2})
    first.close()
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 6, "split": "tr')  # the line a SIGKILL cut short

    resumed = MetricWriter(tmp_path, start_step=4)  # from the checkpoint of step 4
    resumed.write(5, "train", {"loss": 0.19})
    resumed.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [
        (1, "train"),
        (2, "train"),
        (3, "train"),
        (4, "train"),
        (4, "eval"),
        (5, "train"),
    ]
    assert records[-1]["loss"] == 0.19
    assert not list(tmp_path.glob("*.tmp"))
    (later,) = (tmp_path / "tensorboard").glob("*.from-step-4")
    start = [e for e in _events(later) if e.HasField("session_log")]
    assert [(e.step, e.session_log.status) for e in start] == [(5, event_pb2.SessionLog.START)]
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2  # the first one kept
