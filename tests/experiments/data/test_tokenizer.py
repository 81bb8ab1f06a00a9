import pytest

from experiments.data import tokenizer as tokenizer_lib
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, load_or_train

CORPUS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good.",
] * 25


def _train(tmp_path, calls: list[int] | None = None, **kwargs):
    def texts():
        if calls is not None:
            calls.append(1)
        return iter(CORPUS)

    options = {"cache_dir": tmp_path, "name": "en", "vocab_size": 64} | kwargs
    return load_or_train(texts, **options)


def test_special_ids_are_fixed(tmp_path):
    tokenizer = _train(tmp_path)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert tokenizer.pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == ["<unk>", "<s>", "</s>"]
    assert tokenizer.processor.pad_id() == PAD_ID
    assert tokenizer.processor.eos_id() == EOS_ID


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_round_trip(tmp_path, model_type):
    tokenizer = _train(tmp_path, model_type=model_type)
    for sentence in [*CORPUS[:4], "Let there be earth."]:
        assert tokenizer.decode(tokenizer.encode(sentence)) == sentence


def test_decode_stops_at_eos_and_drops_bos_and_pad(tmp_path):
    tokenizer = _train(tmp_path)
    ids = tokenizer.encode("And God said")
    assert tokenizer.decode([BOS_ID, *ids, EOS_ID, *ids, PAD_ID]) == "And God said"
    assert tokenizer.pieces([*ids, EOS_ID, PAD_ID, *ids])[-1] == "</s>"


def test_cached_model_is_reused_without_reading_texts(tmp_path):
    calls: list[int] = []
    first = _train(tmp_path, calls)
    second = _train(tmp_path, calls)
    assert calls == [1]
    assert first.path == second.path and first.path.exists()
    assert list(tmp_path.iterdir()) == [first.path]  # no temporary file left behind
    # Another vocabulary size is another model.
    assert _train(tmp_path, calls, vocab_size=70).path != first.path
    assert calls == [1, 1]


def test_cache_key_changes_with_any_training_option(tmp_path):
    options = tokenizer_lib.trainer_options(vocab_size=64, model_type="bpe")
    changed = options | {"character_coverage": 0.9995}
    path = tokenizer_lib.cache_path(tmp_path, "en", options)
    assert path.name.startswith("en.bpe64.")
    assert tokenizer_lib.cache_path(tmp_path, "en", changed) != path
    assert tokenizer_lib.cache_path(tmp_path, "en", options | {"num_threads": 9}) == path


def test_bad_options_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="vocab_size: expected more than 4, got 4"):
        _train(tmp_path, vocab_size=4)
    with pytest.raises(ValueError, match="model_type: expected 'bpe' or 'unigram', got 'word'"):
        _train(tmp_path, model_type="word")
