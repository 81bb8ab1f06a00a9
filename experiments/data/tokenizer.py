"""SentencePiece subword tokenizers: trained once on a training split, cached, reused.

Every model in the zoo shares the same special ids, so batches, losses and decoders can rely on
them without asking the tokenizer:

    PAD_ID = 0   padding; never predicted, masked out of losses
    UNK_ID = 1   a character never seen in training
    BOS_ID = 2   start of a target sequence (the decoder's first input)
    EOS_ID = 3   end of a sequence

A trained model is cached as ``{cache_dir}/{name}.{model_type}{vocab_size}.{digest}.model``,
where the digest covers every training option: change an option and a new model is trained
instead of a stale one being reused. The data version is the caller's part of the key
(``cache_dir`` lives inside the prepared dataset's versioned directory).
"""

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tqdm import tqdm

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
SPECIAL_IDS = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)

# Sentences handed to the trainer at most; SentencePiece's quality saturates long before the
# tens of millions of sentences of WMT, and its memory does not.
DEFAULT_MAX_SENTENCES = 1_000_000


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A loaded SentencePiece model; ids only, no special tokens added by ``encode``."""

    processor: spm.SentencePieceProcessor
    path: Path | None = None  # where it is cached, for reports

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (may be below the size asked for: see ``train``)."""
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.processor.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first EOS, with PAD and BOS dropped (model outputs as is)."""
        kept = []
        for token in ids:
            token = int(token)
            if token == EOS_ID:
                break
            if token not in (PAD_ID, BOS_ID):
                kept.append(token)
        return self.processor.decode(kept)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One readable label per id up to and including the first EOS, PAD skipped (for the
        axes of an attention heatmap, whose rows and columns are exactly these tokens)."""
        labels = []
        for token in ids:
            token = int(token)
            if token != PAD_ID:
                labels.append(self.processor.id_to_piece(token))
            if token == EOS_ID:
                break
        return labels


def trainer_options(*, vocab_size: int, model_type: str) -> dict[str, object]:
    """Every SentencePiece option that shapes the model (the cache key is their digest)."""
    if vocab_size <= len(SPECIAL_IDS):
        raise ValueError(f"vocab_size: expected more than {len(SPECIAL_IDS)}, got {vocab_size}")
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type: expected 'bpe' or 'unigram', got {model_type!r}")
    return {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "pad_id": PAD_ID,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        # Latin-script corpora have few characters; keeping all of them avoids <unk> in
        # references (names like "Achâb").
        "character_coverage": 1.0,
        # A soft limit: a small corpus may not support the size asked for (the Bible's Spanish
        # side yields ~21.7k unigram pieces when 30k are asked), and a smaller vocabulary is
        # better than a failed run. Read `Tokenizer.vocab_size` for the real size.
        "hard_vocab_limit": False,
        "normalization_rule_name": "nmt_nfkc",
        "input_sentence_size": DEFAULT_MAX_SENTENCES,
        "shuffle_input_sentence": True,
        "num_threads": max(1, min(4, os.cpu_count() or 1)),
    }


def cache_path(cache_dir: Path, name: str, options: dict[str, object]) -> Path:
    """Where the model trained with ``options`` on the texts called ``name`` is cached."""
    keyed = {k: v for k, v in options.items() if k != "num_threads"}  # no effect on the model
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"{name}.{options['model_type']}{options['vocab_size']}.{digest}.model"


def train(texts: Iterable[str], options: dict[str, Any], *, total: int | None = None) -> bytes:
    """Train a SentencePiece model on ``texts``; returns the serialized model."""
    model = io.BytesIO()
    progress = tqdm(texts, total=total, desc="training sentencepiece", unit=" sentences")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(progress), model_writer=model, minloglevel=2, **options
    )
    progress.close()
    return model.getvalue()


def load_or_train(
    texts: Callable[[], Iterable[str]],
    *,
    cache_dir: str | Path,
    name: str,
    vocab_size: int,
    model_type: str = "bpe",
    total: int | None = None,
) -> Tokenizer:
    """The cached tokenizer for ``name`` if there is one, else train it on ``texts()`` and cache.

    Args:
      texts: called only when training is needed; yields the training sentences.
      cache_dir: directory of cached models (created if missing).
      name: what the texts are, e.g. "en", "es" or "en+es" for a shared vocabulary.
      vocab_size: pieces asked for, specials included (a soft limit, see ``trainer_options``).
      model_type: "bpe" (default: trains in under a second on 30k sentences, as in the
        Transformer paper) or "unigram" (SentencePiece's default, ~20x slower to train).
      total: number of sentences, for the progress bar only.
    """
    options = trainer_options(vocab_size=vocab_size, model_type=model_type)
    path = cache_path(Path(cache_dir), name, options)
    if path.exists():
        return Tokenizer(spm.SentencePieceProcessor(model_file=str(path)), path)
    model = train(texts(), options, total=total)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never loads a half-written model.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
        file.write(model)
    os.replace(file.name, path)
    return Tokenizer(spm.SentencePieceProcessor(model_proto=model), path)
