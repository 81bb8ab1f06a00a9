"""Held-out metrics shared by the experiments: corpus BLEU (sacrebleu), BLEU by length (both
together: translation), BLEU-1..4 against several references (captioning)."""

import itertools
import math
from collections.abc import Sequence

import sacrebleu

__all__ = ["bleu_by_length", "caption_bleu", "corpus_bleu", "perplexity", "translation_bleu"]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (Papineni et al. 2002) in sacrebleu's standard 13a tokenization, 0-100."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references must pair up, got {len(hypotheses)} and {len(references)}"
        )
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def caption_bleu(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4
) -> dict[str, float]:
    """BLEU-1 .. BLEU-``max_order`` of captions, each against all of its references, 0-100.

    BLEU-n is corpus BLEU with n-grams up to n (geometric mean of the 1..n-gram precisions
    times the brevity penalty), the numbers of Xu et al. 2015, Table 1. ``references[i]``
    holds every reference caption of image ``i``; their number may vary from image to image.
    (sacrebleu's 13a tokenization: the coco-caption toolkit's PTB tokenizer differs slightly.)
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references must pair up, got {len(hypotheses)} and {len(references)}"
        )
    if any(len(refs) == 0 for refs in references):
        raise ValueError("references: expected at least one reference caption per hypothesis")
    if not hypotheses:
        raise ValueError("hypotheses: expected at least one caption")
    # sacrebleu reads references as streams (the k-th reference of every image); a missing
    # k-th reference is None.
    streams = [
        [refs[k] if k < len(refs) else None for refs in references]
        for k in range(max(len(refs) for refs in references))
    ]
    return {
        f"bleu{n}": float(
            # sacrebleu documents None for a missing reference, but annotates refs as
            # Sequence[Sequence[str]].
            sacrebleu.BLEU(max_ngram_order=n)
            .corpus_score(list(hypotheses), streams)  # type: ignore[arg-type]
            .score
        )
        for n in range(1, max_order + 1)
    }


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


def translation_bleu(
    sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str]
) -> dict[str, float]:
    """``{"bleu": corpus BLEU, "bleu_len_10-19": BLEU of the sources of 10-19 words, ...}``:
    a translation's scores (Bahdanau et al. 2014, Table 1 and Figure 2)."""
    by_length = bleu_by_length(sources, hypotheses, references)
    return {
        "bleu": corpus_bleu(hypotheses, references),
        **{f"bleu_len_{bucket}": bleu for bucket, bleu in by_length.items()},
    }


def perplexity(mean_nats: float) -> float:
    """exp of the mean negative log-likelihood per token (in nats)."""
    return math.exp(mean_nats)
