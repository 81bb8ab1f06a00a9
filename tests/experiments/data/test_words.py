import pytest

from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from experiments.data.words import (
    SPECIAL_WORDS,
    WordVocabulary,
    build_vocabulary,
    split_words,
)


def test_split_words_lowercases_and_separates_punctuation():
    assert split_words("A dog's ball, red.") == ["a", "dog's", "ball", ",", "red", "."]
    assert split_words("an eight , a one") == ["an", "eight", ",", "a", "one"]
    assert split_words("  ") == []


def test_ids_follow_the_shared_special_ids():
    vocabulary = WordVocabulary.of(["a", "cat"])
    assert vocabulary.words[:4] == SPECIAL_WORDS
    assert [vocabulary.id_of(w) for w in SPECIAL_WORDS] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]
    assert vocabulary.vocab_size == 6
    assert vocabulary.encode("A cat, a dog") == [4, 5, UNK_ID, 4, UNK_ID]
    assert "cat" in vocabulary and "dog" not in vocabulary


def test_decode_stops_at_eos_and_drops_pad_and_bos():
    vocabulary = WordVocabulary.of(["a", "cat"])
    assert vocabulary.decode([BOS_ID, 4, UNK_ID, 5, EOS_ID, 4, PAD_ID]) == "a <unk> cat"
    assert vocabulary.decode([4, 5]) == "a cat"
    # Heatmap labels keep BOS and EOS (the rows and columns of the weights), not PAD.
    assert vocabulary.pieces([BOS_ID, 4, PAD_ID, 5, EOS_ID, 4]) == ["<s>", "a", "cat", "</s>"]


def test_build_vocabulary_ranks_by_count_then_alphabet():
    texts = ["b a c", "c b", "c d", "e"]
    # c: 3, b: 2, then a, d, e tie at 1: alphabetical among them.
    assert build_vocabulary(texts, max_size=6).words[4:] == ("c", "b")
    assert build_vocabulary(texts, max_size=8).words[4:] == ("c", "b", "a", "d")
    assert build_vocabulary(texts, max_size=20).words[4:] == ("c", "b", "a", "d", "e")
    assert build_vocabulary(texts, max_size=20, min_count=2).words[4:] == ("c", "b")


def test_bad_vocabularies_name_the_argument():
    with pytest.raises(ValueError, match=r"words: expected to start with \('<pad>'"):
        WordVocabulary(("a", "b"))
    with pytest.raises(ValueError, match=r"words: expected each word once, got repeats of \['a'\]"):
        WordVocabulary.of(["a", "b", "a"])
    with pytest.raises(ValueError, match="max_size: expected more than 4, got 4"):
        build_vocabulary(["a"], max_size=4)
    with pytest.raises(ValueError, match="min_count: expected a positive count, got 0"):
        build_vocabulary(["a"], max_size=9, min_count=0)
