"""Held-out metrics shared by the experiments: corpus BLEU (sacrebleu), BLEU by length."""

import itertools
import math
from collections.abc import Sequence

import sacrebleu

__all__ = ["bleu_by_length", "corpus_bleu", "perplexity"]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (Papineni et al. 2002) in sacrebleu's standard 13a tokenization, 0-100."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references must pair up, got {len(hypotheses)} and {len(references)}"
        )
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def bleu_by_length(
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    edges: Sequence[int] = (10, 20, 30, 40, 50),
) -> dict[str, float]:
    """BLEU per source-length bucket (words), as in Bahdanau et al. 2014, Figure 2.

    Buckets are ``[0, e1)``, ``[e1, e2)``, ..., ``[e_last, inf)``; keys like ``"10-19"``.
    Empty buckets are left out.
    """
    bounds = [0, *edges, math.inf]
    result = {}
    for low, high in itertools.pairwise(bounds):
        picked = [i for i, source in enumerate(sources) if low <= len(source.split()) < high]
        if picked:
            name = f"{low}-{high - 1}" if high != math.inf else f"{low}+"
            result[name] = corpus_bleu(
                [hypotheses[i] for i in picked], [references[i] for i in picked]
            )
    return result


def perplexity(mean_nats: float) -> float:
    """exp of the mean negative log-likelihood per token (in nats)."""
    return math.exp(mean_nats)
