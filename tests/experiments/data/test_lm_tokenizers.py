import json

import numpy as np
import pytest

from experiments.data.lm_tokenizers import (
    CharTokenizer,
    LineTokenizer,
    build_characters,
    load_or_build_characters,
)
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, load_or_train

TEXT = "ROMEO.\nBut soft, what light through yonder window breaks?\n\nJULIET.\nAy me!\n"


def test_character_ids_follow_code_points_after_the_specials():
    tokenizer = build_characters([TEXT])
    assert tokenizer.characters == "".join(sorted(set(TEXT)))
    assert tokenizer.vocab_size == 4 + len(set(TEXT))
    ids = tokenizer.encode("\n !")
    assert ids.dtype == np.int32 and list(ids) == [4, 5, 6]  # "\n" < " " < "!"
    assert not {PAD_ID, UNK_ID, BOS_ID, EOS_ID} & set(tokenizer.encode(TEXT).tolist())


def test_character_round_trip_and_unknowns():
    tokenizer = build_characters([TEXT])
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    ids = tokenizer.encode("Ay, Zounds q!")  # no Z or q in TEXT
    assert np.flatnonzero(ids == UNK_ID).tolist() == [4, 11]
    assert tokenizer.decode(ids) == "Ay, \u2047ounds \u2047!"
    # PAD and BOS vanish; EOS ends the text.
    assert (
        tokenizer.decode([PAD_ID, BOS_ID, *tokenizer.encode("Ay"), EOS_ID, *tokenizer.encode("me")])
        == "Ay"
    )
    assert tokenizer.pieces([*tokenizer.encode("A \n"), PAD_ID, EOS_ID]) == [
        "A",
        "\u2423",
        "\\n",
        "</s>",
    ]
    with pytest.raises(
        ValueError, match=f"ids: expected ids below {tokenizer.vocab_size}, got 999"
    ):
        tokenizer.decode([999])


def test_vocab_size_keeps_the_most_frequent_characters():
    tokenizer = build_characters(["aaaa bbb cc d", "e"], vocab_size=4 + 3)
    assert tokenizer.characters == " ab"  # space (3), a (4), b (3) beat c (2); ties by code point
    with pytest.raises(ValueError, match="vocab_size: expected more than 4, got 4"):
        build_characters(["a"], vocab_size=4)
    with pytest.raises(
        ValueError, match="characters: expected distinct characters in code-point order"
    ):
        CharTokenizer("ba")


def test_character_vocabulary_is_cached(tmp_path):
    calls = []

    def texts():
        calls.append(1)
        return [TEXT]

    first = load_or_build_characters(texts, cache_dir=tmp_path)
    second = load_or_build_characters(texts, cache_dir=tmp_path)
    assert first == second and len(calls) == 1
    assert json.loads((tmp_path / "characters.all.json").read_text()) == list(first.characters)
    capped = load_or_build_characters(texts, cache_dir=tmp_path, vocab_size=9)
    assert capped.vocab_size == 9 and len(calls) == 2
    assert first.key != capped.key


def test_line_tokenizer_marks_line_breaks_with_eos(tmp_path):
    lines = [line for line in TEXT.split("\n") if line] * 20
    sentencepiece = load_or_train(
        lambda: iter(lines), cache_dir=tmp_path, name="text", vocab_size=60
    )
    tokenizer = LineTokenizer(sentencepiece)
    ids = tokenizer.encode(TEXT)
    assert ids.dtype == np.int32 and ids[-1] == EOS_ID
    assert (ids == EOS_ID).sum() == TEXT.count("\n")
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.decode([PAD_ID, *ids[:3], BOS_ID]) == tokenizer.decode(ids[:3])
    assert tokenizer.pieces(tokenizer.encode("Ay\n"))[-1] == "\\n"
    assert tokenizer.key == sentencepiece.path.stem and tokenizer.vocab_size == 60
