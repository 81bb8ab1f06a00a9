"""Tokenizers of running text for language models: characters, or SentencePiece BPE by line.

Both keep the zoo's special ids (``tokenizer.PAD_ID``, ``UNK_ID``, ``BOS_ID``, ``EOS_ID`` =
0..3), so a loss can mask ``PAD_ID`` whichever tokenizer made the batch:

    CharTokenizer   4.. = the characters of the vocabulary, in code-point order; a character
                    outside it is UNK. EOS and BOS do not occur in a character stream (a
                    newline is a character like any other); PAD pads short evaluation windows.
    LineTokenizer   SentencePiece pieces of each line, EOS after every line but the last of
                    the text: SentencePiece reads a newline as a space, so a line break needs a
                    token of its own, and EOS already means "end of a sentence" (lm1b's lines
                    are sentences).

``encode`` and ``decode`` are inverse on text whose characters are all in the vocabulary (for
``LineTokenizer``: whose lines have no leading, trailing or repeated spaces, which SentencePiece
drops, and are unchanged by NFKC normalization), as the shipped Shakespeare is.

A character vocabulary is a JSON list of characters, cached next to the data
(``load_or_build_characters``), so a run sampled later decodes with the ids it was trained on.
"""

import collections
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_IDS, UNK_ID, Tokenizer

FIRST_CHARACTER_ID = len(SPECIAL_IDS)
# What an unknown id decodes to (SentencePiece's choice too).
UNKNOWN_TEXT = "\u2047"  # ⁇
# Heatmap labels for characters that would otherwise be invisible or break a label.
_LABELS = {"\n": "\\n", " ": "\u2423", "\t": "\\t"}  # ␣ for a space


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """One id per character of ``characters``; ids 0..3 are the shared specials."""

    characters: str  # the vocabulary in code-point order: characters[i] has id 4 + i

    def __post_init__(self) -> None:
        if list(self.characters) != sorted(set(self.characters)):
            raise ValueError("characters: expected distinct characters in code-point order")

    @property
    def vocab_size(self) -> int:
        """Number of ids, the 4 specials included."""
        return FIRST_CHARACTER_ID + len(self.characters)

    @property
    def key(self) -> str:
        """Names what this tokenizer makes of a text (for caching token streams)."""
        digest = hashlib.sha256(self.characters.encode("utf-8")).hexdigest()[:10]
        return f"char{self.vocab_size}.{digest}"

    @functools.cached_property
    def _sorted_codes(self) -> np.ndarray:
        return _code_points(self.characters)

    @functools.cached_property
    def _texts(self) -> tuple[str, ...]:
        specials = {PAD_ID: "", UNK_ID: UNKNOWN_TEXT, BOS_ID: "", EOS_ID: ""}
        return (*(specials[i] for i in SPECIAL_IDS), *self.characters)

    def encode(self, text: str) -> np.ndarray:
        """``[len(text)]`` int32 ids; characters outside the vocabulary give UNK."""
        codes, known = _code_points(text), self._sorted_codes
        if not len(known):
            return np.full(len(codes), UNK_ID, dtype=np.int32)
        # A binary search per character: vectorized, and fast enough for lm1b's 4 GB of text.
        where = np.minimum(np.searchsorted(known, codes), len(known) - 1)
        found = known[where] == codes
        return np.where(found, where + FIRST_CHARACTER_ID, UNK_ID).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first EOS, PAD and BOS dropped, UNK as "⁇"."""
        texts = self._texts
        out = []
        for token in ids:
            token = int(token)
            if token == EOS_ID:
                break
            if not 0 <= token < len(texts):
                raise ValueError(f"ids: expected ids below {len(texts)}, got {token}")
            out.append(texts[token])
        return "".join(out)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One readable label per id, PAD skipped (axes of an attention heatmap)."""
        labels = []
        for token in map(int, ids):
            if token == PAD_ID:
                continue
            if token >= FIRST_CHARACTER_ID:
                character = self.characters[token - FIRST_CHARACTER_ID]
                labels.append(_LABELS.get(character, character))
            else:
                labels.append({UNK_ID: UNKNOWN_TEXT, BOS_ID: "<s>", EOS_ID: "</s>"}[token])
        return labels


def build_characters(texts: Iterable[str], *, vocab_size: int | None = None) -> CharTokenizer:
    """The characters of ``texts``: all of them, or the ``vocab_size - 4`` most frequent.

    Frequency ties are broken by code point, so the vocabulary depends only on the texts.
    """
    if vocab_size is not None and vocab_size <= FIRST_CHARACTER_ID:
        raise ValueError(f"vocab_size: expected more than {FIRST_CHARACTER_ID}, got {vocab_size}")
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(text)
    kept = sorted(counts, key=lambda character: (-counts[character], character))
    if vocab_size is not None:
        kept = kept[: vocab_size - FIRST_CHARACTER_ID]
    return CharTokenizer("".join(sorted(kept)))


def load_or_build_characters(
    texts: Callable[[], Iterable[str]], *, cache_dir: str | Path, vocab_size: int | None = None
) -> CharTokenizer:
    """The cached character vocabulary if there is one, else build it from ``texts()`` and cache.

    Args:
      texts: called only when building; yields the training text.
      cache_dir: directory of cached vocabularies (created if missing); the caller keys the
        data version by choosing it (inside the prepared dataset's versioned directory).
      vocab_size: ids wanted, specials included; None keeps every character of the texts.
    """
    path = Path(cache_dir) / f"characters.{'all' if vocab_size is None else vocab_size}.json"
    if path.exists():
        return CharTokenizer("".join(json.loads(path.read_text(encoding="utf-8"))))
    tokenizer = build_characters(texts(), vocab_size=vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never loads a half-written vocabulary.
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8"
    ) as file:
        json.dump(list(tokenizer.characters), file, ensure_ascii=True, indent=0)
    os.replace(file.name, path)
    return tokenizer


@dataclasses.dataclass(frozen=True)
class LineTokenizer:
    """A SentencePiece model applied line by line, with EOS for each line break."""

    sentencepiece: Tokenizer

    @property
    def vocab_size(self) -> int:
        return self.sentencepiece.vocab_size

    @property
    def key(self) -> str:
        """Names what this tokenizer makes of a text (the cached model's file name)."""
        if self.sentencepiece.path is None:
            raise ValueError("key: the SentencePiece model has no cache path to name it by")
        return self.sentencepiece.path.stem

    def encode(self, text: str) -> np.ndarray:
        """Ids of each line, EOS between lines (a text ending in a newline ends with EOS)."""
        ids: list[int] = []
        for number, line in enumerate(self.sentencepiece.encode_batch(text.split("\n"))):
            if number:
                ids.append(EOS_ID)
            ids.extend(line)
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: each EOS is a line break; PAD and BOS are dropped."""
        lines: list[list[int]] = [[]]
        for token in map(int, ids):
            if token == EOS_ID:
                lines.append([])
            elif token not in (PAD_ID, BOS_ID):
                lines[-1].append(token)
        return "\n".join(self.sentencepiece.decode(line) for line in lines)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One readable label per id, PAD skipped, EOS shown as a line break."""
        processor = self.sentencepiece.processor
        return [
            "\\n" if token == EOS_ID else processor.id_to_piece(token)
            for token in map(int, ids)
            if token != PAD_ID
        ]
