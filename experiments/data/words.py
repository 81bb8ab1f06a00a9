"""Word-level caption vocabularies: one id per word, the zoo's special ids first.

Captions are short sentences over a small vocabulary (the digit scenes' grammar has 19 words;
Xu et al. 2015 keep the 10,000 most frequent words of COCO, sec. 5.1), so a word is the natural
unit: every generated token is a whole word, which the attention metric needs ("is the peak of
the word *seven* inside the seven's box?"). SentencePiece would split rare words into pieces and
gain nothing on a closed vocabulary.

Ids follow ``tokenizer``: PAD_ID = 0, UNK_ID = 1, BOS_ID = 2, EOS_ID = 3, then the words.
``WordVocabulary`` has the same reading API as ``tokenizer.Tokenizer`` (``vocab_size``,
``encode``, ``encode_batch``, ``decode``, ``pieces``), so the runner can treat both alike.
"""

import collections
import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence

from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__all__ = ["SPECIAL_WORDS", "WORD_PATTERN", "WordVocabulary", "build_vocabulary", "split_words"]

# The readable form of each special id, at that id (SentencePiece's names, for the same labels
# on attention plots of either kind of model).
SPECIAL_WORDS = ("<pad>", "<unk>", "<s>", "</s>")
assert tuple(SPECIAL_WORDS.index(w) for w in SPECIAL_WORDS) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)

# A word is a run of letters, digits and apostrophes ("dog's" stays one word); any other
# visible character is a word of its own, so "a dog, running." -> a dog , running .
# (Part of the key of cached vocabularies: a new rule never reuses an old vocabulary.)
WORD_PATTERN = r"[\w']+|[^\w\s]"
_WORD = re.compile(WORD_PATTERN)


def split_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (see ``_WORD``); ``" ".join`` of them is the normal form."""
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class WordVocabulary:
    """A fixed list of words: id ``i`` is ``words[i]``; the first four are ``SPECIAL_WORDS``."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIAL_WORDS)]) != SPECIAL_WORDS:
            raise ValueError(
                f"words: expected to start with {SPECIAL_WORDS}, got {tuple(self.words[:4])}"
            )
        repeated = [w for w, n in collections.Counter(self.words).items() if n > 1]
        if repeated:
            raise ValueError(f"words: expected each word once, got repeats of {repeated[:5]}")

    @classmethod
    def of(cls, words: Iterable[str]) -> "WordVocabulary":
        """``words`` (no specials among them) in their order, after the specials."""
        return cls((*SPECIAL_WORDS, *words))

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def id_of(self, word: str) -> int:
        """The id of ``word``, UNK_ID if it is not in the vocabulary."""
        return self._ids.get(word, UNK_ID)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text`` (``split_words``); no BOS or EOS added."""
        return [self.id_of(word) for word in split_words(text)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Words of ``ids`` up to the first EOS, PAD and BOS dropped, joined by spaces."""
        kept = []
        for token in ids:
            token = int(token)
            if token == EOS_ID:
                break
            if token not in (PAD_ID, BOS_ID):
                kept.append(self.words[token])
        return " ".join(kept)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One label per id up to and including the first EOS, PAD skipped (heatmap axes)."""
        labels = []
        for token in ids:
            token = int(token)
            if token != PAD_ID:
                labels.append(self.words[token])
            if token == EOS_ID:
                break
        return labels


def build_vocabulary(texts: Iterable[str], *, max_size: int, min_count: int = 1) -> WordVocabulary:
    """The most frequent words of ``texts`` (``split_words``), at most ``max_size`` ids in all.

    Ties in frequency are broken alphabetically, so the same texts always give the same ids.
    Words seen fewer than ``min_count`` times are left out (they read as UNK).
    """
    if max_size <= len(SPECIAL_WORDS):
        raise ValueError(f"max_size: expected more than {len(SPECIAL_WORDS)}, got {max_size}")
    if min_count < 1:
        raise ValueError(f"min_count: expected a positive count, got {min_count}")
    counts = collections.Counter(word for text in texts for word in split_words(text))
    ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return WordVocabulary.of(ranked[: max_size - len(SPECIAL_WORDS)])
