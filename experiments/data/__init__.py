"""Datasets for the experiments: TFDS builders, tokenizers and grain pipelines.

Each task has one entry point (``translation.make_translation_data``,
``captioning.make_caption_data``, ``language_model.make_lm_data``) built from generic
pieces: ``prepare`` (a TFDS dataset ready as array_record, or a fast, clear failure; its
command is ``python -m experiments.data NAME --data_dir DIR``; every failure is a
``DataError`` whose message says what to do, corrupt prepared files included),
``tokenizer`` (SentencePiece, trained once and cached), ``pipeline`` and ``batching`` (grain
stream of padded, length-bucketed batches with checkpointable state).
"""

from experiments.data.captioning import CAPTION_DATASETS, CaptionData, make_caption_data
from experiments.data.language_model import LM_DATASETS, LanguageModelData, make_lm_data
from experiments.data.prepare import DatasetNotPreparedError
from experiments.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from experiments.data.translation import (
    TRANSLATION_DATASETS,
    TranslationData,
    make_translation_data,
)
from experiments.errors import DataError

__all__ = [
    "BOS_ID",
    "CAPTION_DATASETS",
    "EOS_ID",
    "LM_DATASETS",
    "PAD_ID",
    "TRANSLATION_DATASETS",
    "UNK_ID",
    "CaptionData",
    "DataError",
    "DatasetNotPreparedError",
    "LanguageModelData",
    "Tokenizer",
    "TranslationData",
    "make_caption_data",
    "make_lm_data",
    "make_translation_data",
]
