"""A damaged prepared copy is a DataError naming the data set, the file and how to rebuild it."""

import shutil
import socket

import pytest

from experiments.data.language_model import make_lm_data
from experiments.data.prepare import CheckedSource, open_split, prepare
from experiments.errors import DataError

NAME = "shakespeare_plays"  # the smallest shipped data set: built offline in a fraction of a second
VERSION = f"{NAME}/by_play/1.0.0"
TRAIN_FILE = f"{NAME}-train.array_record-00000-of-00001"


def _blocked(*args, **kwargs):
    raise AssertionError("the offline dataset touched the network")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", _blocked)
        patch.setattr(socket.socket, "connect", _blocked)
        prepare(NAME, data_dir=data_dir)
    return data_dir


@pytest.fixture
def data_dir(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "tfds")
    return tmp_path / "tfds"


def _rebuild_command(data_dir) -> str:
    return f"python -m experiments.data {NAME} --data_dir {data_dir}"


def _truncate(size):
    def cut(path):
        path.write_bytes(path.read_bytes()[:size])

    return cut


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate(1000), "ArrayRecord file should be at least 64KB big"),
        # A whole 64 KiB block opens as an empty file; TFDS would decode None records from it.
        (_truncate(1 << 16), "cannot read its index"),
        (_truncate(300_000), "Corrupted Riegeli/records file"),
        (lambda path: path.unlink(), "the file is missing"),
    ],
    ids=["truncated", "cut-at-64KiB", "cut-in-half", "deleted"],
)
def test_a_damaged_array_record_file_is_named_when_opened(data_dir, damage, why):
    damage(data_dir / VERSION / TRAIN_FILE)
    builder = prepare(NAME, data_dir=data_dir, download=False)
    assert open_split(NAME, builder, "test")[0]["play"]  # the intact splits still open
    with pytest.raises(DataError) as error:
        open_split(NAME, builder, "train")
    message = str(error.value)
    assert f"Dataset {NAME!r} in {data_dir / VERSION} is corrupt" in message
    assert str(data_dir / VERSION / TRAIN_FILE) in message
    assert why in message
    assert _rebuild_command(data_dir) in message


def test_the_entry_point_opens_through_the_check(data_dir):
    _truncate(1000)(data_dir / VERSION / TRAIN_FILE)
    with pytest.raises(DataError, match=rf"(?s){TRAIN_FILE}.*delete that directory"):
        make_lm_data(NAME, data_dir=data_dir, download=False)


def test_a_read_error_later_names_the_file_of_the_record(data_dir):
    builder = prepare(NAME, data_dir=data_dir, download=False)
    source = open_split(NAME, builder, "train[2:]")
    assert isinstance(source, CheckedSource) and len(source) == 6

    class Corrupt:  # what array_record raises for a chunk whose hash does not match
        def __len__(self):
            return 6

        def __getitem__(self, index):
            raise RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch")

        def __getitems__(self, indices):
            raise RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch")

    source.source = Corrupt()
    for read in (lambda: source[3], lambda: source.__getitems__([0, 5])):
        with pytest.raises(
            DataError, match=rf"(?s){TRAIN_FILE} \(RuntimeError: Corrupted.*--data_dir"
        ):
            read()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda path: path.write_text("{not json"), "dataset_info.json cannot be parsed"),
        (
            lambda path: path.write_text(path.read_text()[:500]),
            "dataset_info.json cannot be parsed",
        ),
        (lambda path: path.unlink(), "it lacks dataset_info.json"),
    ],
    ids=["garbage", "truncated", "deleted"],
)
def test_damaged_metadata_names_the_file_and_the_command(data_dir, damage, why):
    damage(data_dir / VERSION / "dataset_info.json")
    with pytest.raises(DataError) as error:
        prepare(NAME, data_dir=data_dir, download=False)
    message = str(error.value)
    assert f"Dataset {NAME!r} in {data_dir / VERSION} is corrupt" in message
    assert why in message
    assert _rebuild_command(data_dir) in message


def test_the_command_reports_a_corrupt_copy(data_dir, capsys):
    from experiments.data.__main__ import main

    (data_dir / VERSION / "dataset_info.json").write_text("{not json")
    assert main([NAME, "--data_dir", str(data_dir)]) == 1
    assert "dataset_info.json cannot be parsed" in capsys.readouterr().err
