"""The shipped Shakespeare corpus: its file, its extraction, and the TFDS builder's two splits."""

import hashlib
import socket

import pytest

from experiments.data import shakespeare_plays
from experiments.data.prepare import prepare
from experiments.data.shakespeare import extract

# The counts and digest documented in experiments/data/shakespeare/README.md.
BY_PLAY = {"train": (8, 1_133_363), "validation": (1, 115_950), "test": (1, 103_367)}
BY_POSITION = {"train": 1_217_412, "validation": 67_634, "test": 67_634}
TOTAL = 1_352_680
FILE_SHA256 = "5c48d054c1947d70d971a1309557bdeb3d1c22669be3474f4784178bc61a10b7"


def _blocked(*args, **kwargs):
    raise AssertionError("the offline dataset touched the network")


@pytest.fixture(scope="module")
def builders(tmp_path_factory):
    """Both configs, built once with the network blocked to prove the build is offline."""
    data_dir = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", _blocked)
        patch.setattr(socket.socket, "connect", _blocked)
        return {
            config: prepare(f"shakespeare_plays/{config}", data_dir=data_dir)
            for config in ("by_play", "by_position")
        }


def _records(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_shipped_file_is_the_documented_one():
    assert hashlib.sha256(shakespeare_plays.PLAYS_FILE.read_bytes()).hexdigest() == FILE_SHA256
    plays = shakespeare_plays.read_plays()
    assert [play["play"] for play in plays] == list(extract.PLAYS)
    assert sum(len(play["text"]) for play in plays) == TOTAL
    for play in plays:
        # Extraction is idempotent and left nothing of the Gutenberg licence behind.
        assert extract.normalize(play["text"]) == play["text"]
        extract.check_clean(play["play"], play["text"])
        assert play["url"].startswith("http://www.gutenberg.org/")


def test_by_play_builds_array_record_and_holds_out_whole_plays(builders):
    builder = builders["by_play"]
    assert list(builder.data_path.glob("*.array_record-*"))
    plays = {}
    for split, (count, characters) in BY_PLAY.items():
        records = _records(builder, split)
        assert (len(records), sum(len(r["text"]) for r in records)) == (count, characters)
        plays[split] = {r["play"].decode() for r in records}
        assert all(shakespeare_plays.split_of(play) == split for play in plays[split])
    assert plays["validation"] == {"julius_caesar"} and plays["test"] == {"macbeth"}
    assert not plays["train"] & (plays["validation"] | plays["test"])
    assert plays["train"] | plays["validation"] | plays["test"] == set(extract.PLAYS)


def test_records_keep_file_order(builders):
    # A split read in order is its plays' text in order (no TFDS shuffling by key).
    expected = [
        p["play"]
        for p in shakespeare_plays.read_plays()
        if p["play"] not in ("julius_caesar", "macbeth")
    ]
    assert [r["play"].decode() for r in _records(builders["by_play"], "train")] == expected


def test_by_position_cuts_the_whole_text_like_tiny_shakespeare(builders):
    whole = "".join(play["text"] for play in shakespeare_plays.read_plays())
    texts = {}
    for split, characters in BY_POSITION.items():
        texts[split] = "".join(r["text"].decode() for r in _records(builders["by_position"], split))
        assert len(texts[split]) == characters
    assert texts["train"] + texts["validation"] + texts["test"] == whole
    # TFDS tiny_shakespeare's cut: int(0.9 n), then the rest halved (nanoGPT: the same 90%).
    assert len(texts["train"]) == int(TOTAL * 0.9)
    assert shakespeare_plays.position_cuts(101) == (90, 95)


def test_pieces_by_position_split_a_straddling_play():
    plays = [
        {"play": "a", "text": "x" * 50},
        {"play": "b", "text": "y" * 47},
        {"play": "c", "text": "z" * 3},
    ]
    pieces = shakespeare_plays.pieces_by_position(plays)
    summary = {split: [(p["play"], len(p["text"])) for p in ps] for split, ps in pieces.items()}
    assert summary == {
        "train": [("a", 50), ("b", 40)],
        "validation": [("b", 5)],
        "test": [("b", 2), ("c", 3)],
    }


def test_normalize():
    text = (
        "TITLE\r\n\r\n\r\n\r\nby  Someone \n  'Doubt thou\t the stars'\n{Kissing her.]\n[Exeunt.}\n"
    )
    assert extract.normalize(text) == (
        "TITLE\n\nby Someone\n'Doubt thou the stars'\n[Kissing her.]\n[Exeunt.]\n"
    )
    # Braces grouping names in a cast list are not stage directions.
    assert extract.normalize("Montague,}Heads of two Houses\n") == "Montague,}Heads of two Houses\n"


def test_check_clean_rejects_boilerplate_and_odd_characters():
    with pytest.raises(ValueError, match="hamlet: Gutenberg boilerplate left at offset 4"):
        extract.check_clean("hamlet", "The Project Gutenberg EBook of Hamlet\n")
    with pytest.raises(ValueError, match=r"unexpected characters \['\\t', 'é'\]"):
        extract.check_clean("hamlet", "caf\u00e9\tbar\n")
