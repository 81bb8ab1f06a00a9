import socket
import threading
import time

import pytest

from experiments.data import prepare as prepare_lib
from experiments.data.prepare import DatasetNotPreparedError, host_reachable, prepare
from experiments.data.translation import make_translation_data


@pytest.fixture
def offline(monkeypatch):
    """No name resolves and no connection opens, as on a machine without network.

    Tests never reach the network; with this, the code under test cannot either.
    """

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "offline (blocked by the test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)


def test_missing_real_dataset_fails_fast_and_says_how_to_prepare_it(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(DatasetNotPreparedError) as error:
        make_translation_data("wmt14_translate/fr-en", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "'wmt14_translate/fr-en' is not prepared" in message
    assert str(tmp_path) in message
    assert "www.statmt.org is not reachable" in message
    assert "python -m experiments.data wmt14_translate/fr-en --data_dir DIR" in message
    assert "tfds build wmt14_translate/fr-en --file_format=array_record" in message
    assert "manual_dir" in message


def test_download_false_fails_without_probing(tmp_path, monkeypatch):
    def probe(*args, **kwargs):
        raise AssertionError("probed the network although download=False")

    monkeypatch.setattr(prepare_lib, "host_reachable", probe)
    with pytest.raises(DatasetNotPreparedError, match="and download=False"):
        prepare("wmt14_translate/de-en", data_dir=tmp_path, download=False)


def test_unknown_names_list_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"name: unknown dataset 'mnist'; expected one of \["):
        prepare("mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"name: expected one of \['bible_en_es', "):
        make_translation_data("wmt14_translate/hi-en", data_dir=tmp_path)


def test_host_reachable_on_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert host_reachable("127.0.0.1", port, timeout_s=2.0)
    # The port is closed now: refused at once, not after the timeout.
    start = time.monotonic()
    assert not host_reachable("127.0.0.1", port, timeout_s=5.0)
    assert time.monotonic() - start < 2


def test_host_reachable_is_false_when_resolution_fails(offline):
    assert not host_reachable("www.statmt.org", 80, timeout_s=1.0)


def test_command_reports_errors_and_exits_nonzero(tmp_path, offline, capsys):
    from experiments.data.__main__ import main

    assert main(["wmt14_translate/fr-en", "--data_dir", str(tmp_path)]) == 1
    assert "is not prepared" in capsys.readouterr().err
    assert main(["mnist"]) == 1
    assert "unknown dataset 'mnist'" in capsys.readouterr().err


@pytest.fixture
def no_probe(monkeypatch):
    """Fail if the download host is probed: the case must fail before any network wait."""

    def probe(*args, **kwargs):
        raise AssertionError("probed the network")

    monkeypatch.setattr(prepare_lib, "host_reachable", probe)


def test_missing_manual_dir_fails_at_once_and_says_what_it_is_for(tmp_path, offline, no_probe):
    # TFDS would go on to download, retrying for minutes offline (~205 s here).
    with pytest.raises(DatasetNotPreparedError) as error:
        make_translation_data(
            "wmt14_translate/fr-en", data_dir=tmp_path, manual_dir=tmp_path / "nowhere"
        )
    message = str(error.value)
    assert f"manual_dir={tmp_path / 'nowhere'} does not exist" in message
    assert "reads nothing from a manual_dir (TFDS downloads every file of it)" in message
    assert "python -m experiments.data wmt14_translate/fr-en --data_dir DIR" in message
    with pytest.raises(
        DatasetNotPreparedError, match=r"It should hold the raw download: input.txt"
    ):
        prepare("tiny_shakespeare", data_dir=tmp_path, manual_dir=tmp_path / "nowhere")
    assert not list(tmp_path.glob("*/*/*"))  # nothing built or downloaded


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("wmt14_translate/de-en", r"manual_dir=.* does not replace its downloads"),
        ("tiny_shakespeare", r"manual_dir=.* lacks input.txt"),
    ],
)
def test_manual_dir_without_the_downloads_still_checks_the_network(tmp_path, offline, name, reason):
    (tmp_path / "manual").mkdir()
    with pytest.raises(
        DatasetNotPreparedError, match=rf"{reason}, and its download host .* is not"
    ):
        prepare(name, data_dir=tmp_path / "data", manual_dir=tmp_path / "manual")


def test_a_hanging_name_lookup_gives_up_after_the_probe(tmp_path, monkeypatch):
    """Without DNS, a lookup can hang for minutes; the probe waits only its timeout."""
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "no answer (blocked by the test)")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    try:
        with pytest.raises(DatasetNotPreparedError, match=r"www\.statmt\.org is not reachable"):
            prepare("wmt14_translate/fr-en", data_dir=tmp_path, probe_timeout_s=0.5)
    finally:
        release.set()
