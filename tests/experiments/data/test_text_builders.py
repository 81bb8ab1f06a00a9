"""tiny_shakespeare and lm1b without TensorFlow or network: clear failures, manual files, and
the download path through a server on loopback."""

import dataclasses
import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time

import pytest
import tensorflow_datasets as tfds

from experiments.data import prepare as prepare_lib
from experiments.data import shakespeare_plays, text_builders
from experiments.data.language_model import make_lm_data
from experiments.data.prepare import DatasetNotPreparedError

# Stand-in for char-rnn's input.txt: the start of Hamlet (the real file is a download).
TINY_TEXT = shakespeare_plays.read_plays()[0]["text"][:20_011]
LM1B_SHARDS = {
    "training-monolingual.tokenized.shuffled/news.en-00001-of-00100": "The cat sat .\nIt rained .\n",
    "training-monolingual.tokenized.shuffled/news.en-00002-of-00100": "Prices rose 5 % .\n",
    "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050": "The rat sat .\n",
    "README": "not a shard\n",
}


@pytest.fixture
def offline(monkeypatch):
    """No name resolves and no connection opens, as on a machine without network."""

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "offline (blocked by the test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)


@pytest.fixture
def tiny_input(tmp_path, monkeypatch):
    """A manual_dir holding an input.txt, whose digest the builder is told to expect."""
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "input.txt").write_text(TINY_TEXT, encoding="utf-8")
    digest = hashlib.sha256(TINY_TEXT.encode()).hexdigest()
    monkeypatch.setattr(text_builders.TinyShakespeare, "SHA256", digest)
    return manual


@pytest.mark.parametrize(
    ("name", "host"),
    [("tiny_shakespeare", "raw.githubusercontent.com"), ("lm1b", "www.statmt.org")],
)
def test_missing_real_dataset_fails_fast_and_says_how_to_prepare_it(tmp_path, offline, name, host):
    start = time.monotonic()
    with pytest.raises(DatasetNotPreparedError) as error:
        make_lm_data(name, data_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert f"Dataset {name!r} is not prepared in data_dir={tmp_path}" in message
    assert f"{host} is not reachable" in message
    assert f"python -m experiments.data {name} --data_dir DIR" in message
    assert "manual_dir" in message


def test_tiny_shakespeare_from_manual_dir_matches_tfds_and_nanogpt(tmp_path, tiny_input, offline):
    data = make_lm_data(
        "tiny_shakespeare", data_dir=tmp_path / "data", manual_dir=tiny_input, context_length=13
    )
    n = len(TINY_TEXT)
    # TFDS's 90/5/5 cut; nanoGPT's validation split is the last 10%: "validation+test".
    assert data.decode(data.streams["train"]) == TINY_TEXT[: int(n * 0.9)]
    assert data.decode(data.stream("validation+test")) == TINY_TEXT[int(n * 0.9) :]
    # TFDS's own registered builder reads what the TensorFlow-free one wrote.
    source = tfds.data_source(
        "tiny_shakespeare", split="test", data_dir=tmp_path / "data", download=False
    )
    assert source[0]["text"].decode() == TINY_TEXT[int(n * 0.9) + (n - int(n * 0.9)) // 2 :]


def test_a_wrong_manual_file_is_refused(tmp_path, offline):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "input.txt").write_text("not Shakespeare\n")
    with pytest.raises(ValueError, match=r"input.txt: SHA-256 [0-9a-f]{64}, expected 86c4e6aa"):
        prepare_lib.prepare("tiny_shakespeare", data_dir=tmp_path / "data", manual_dir=manual)


def test_lm1b_from_manual_dir_one_sentence_per_record(tmp_path, monkeypatch, offline):
    manual = tmp_path / "manual"
    manual.mkdir()
    archive = manual / text_builders.Lm1b.FILE_NAME
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in LM1B_SHARDS.items():
            info = tarfile.TarInfo(f"{text_builders.Lm1b._TOP}/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    monkeypatch.setattr(text_builders.Lm1b, "SHA256", text_builders.sha256_of(archive))
    data = make_lm_data("lm1b", data_dir=tmp_path / "data", manual_dir=manual, context_length=5)
    builder = prepare_lib.prepare("lm1b", data_dir=tmp_path / "data")
    train = builder.as_data_source(split="train")
    assert sorted(train[i]["text"].decode() for i in range(len(train))) == [
        "It rained .",
        "Prices rose 5 % .",
        "The cat sat .",
    ]
    assert data.eval_splits == ("test",)
    assert data.decode(data.streams["test"]) == "The rat sat .\n"
    with pytest.raises(ValueError, match=r"split: expected one of \['test'\]"):
        data.eval_batches(split="validation")
    assert data.decode(data.eval_windows("test")[0]) == "The ra"  # context 5, plus the last target


def test_download_needs_no_tensorflow(tmp_path, tiny_input, monkeypatch):
    """The real download path, served from loopback: TFDS downloads, our builder reads."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tiny_input))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.server_address[1]
        monkeypatch.setattr(
            text_builders.TinyShakespeare, "URL", f"http://127.0.0.1:{port}/input.txt"
        )
        loopback = dataclasses.replace(
            prepare_lib.KNOWN_BUILDERS["tiny_shakespeare"],
            download_host="127.0.0.1",
            download_port=port,
        )
        monkeypatch.setitem(prepare_lib.KNOWN_BUILDERS, "tiny_shakespeare", loopback)
        try:
            builder = prepare_lib.prepare("tiny_shakespeare", data_dir=tmp_path / "data")
        finally:
            server.shutdown()
    assert (
        builder.as_data_source(split="train")[0]["text"].decode()
        == TINY_TEXT[: int(len(TINY_TEXT) * 0.9)]
    )


def test_real_builders_take_no_config(tmp_path):
    with pytest.raises(
        ValueError, match="name: expected no config or version for this dataset, got 'lm1b/x'"
    ):
        prepare_lib.prepare("lm1b/x", data_dir=tmp_path)
