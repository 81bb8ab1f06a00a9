"""The README gallery, redrawn from trained models on the offline data.

    python -m experiments.figures [--runs DIR] [--out DIR] [--bench-results DIR]

For each of three runs (RNNsearch and the Transformer translating English -> Spanish, Show,
Attend and Tell captioning digit scenes, all ``tiny`` presets) in ``<runs>/<name>``: train it
through the shared runner if it has not reached its config's ``train.steps`` (exactly
``python -m experiments.run ... --workdir <runs>/<name>``, with ``--resume`` once started),
load its best checkpoint and draw from held-out (test split) examples:

- ``nmt_alignment.png``: RNNsearch's alignment of a test sentence whose translation puts an
  English adjective after its noun (Bahdanau et al. 2014, Figure 3, shows the same for
  French).
- ``caption_attention.png``: the first test scene, one panel per generated word with its
  attention over the image (Xu et al. 2015, Figures 2-3).
- ``transformer_self_attention.png`` / ``transformer_cross_attention.png``: every head of one
  encoder self-attention layer and of one decoder cross-attention layer for one test sentence
  (Vaswani et al. 2017, Figures 3-5 show single heads).
- ``kernels_time.png`` / ``kernels_memory.png``: the kernel benchmark's time and peak memory
  against sequence length (``benchmarks/kernels.py``'s own plots of a ``results.json``).
"""

import argparse
import dataclasses
import json
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

from experiments import config as config_lib
from experiments import run, runner, tasks, visualize
from experiments.visualize import Aligned

__all__ = [
    "ADJECTIVES",
    "RUNS",
    "Candidate",
    "FigureRun",
    "Reordering",
    "caption_attention",
    "compact",
    "crossings",
    "ensure_trained",
    "is_adjective_noun",
    "kernel_plots",
    "load",
    "main",
    "nmt_alignment",
    "pick",
    "transformer_heads",
    "translate_test_sentences",
    "word_alignment",
    "word_text",
    "words",
]

# SentencePiece marks the first piece of every word with U+2581.
WORD_START = "\u2581"

# English words that, read before a noun, Spanish usually puts after it ("agua viva",
# "espíritu santo"; "Dios mío" in address). No part-of-speech tagger is available offline,
# so this short list stands in for one when choosing the sentence to draw.
ADJECTIVES = frozenset(
    """my thy our your holy living dead good evil wicked righteous unclean clean pure strong
    mighty wise foolish poor rich new old young golden precious sharp strange broken open
    unknown sure true faithful deep dark high whole burnt fat loud bitter sweet""".split()  # noqa: SIM905
)


# Source pieces (EOS included) of the test sentences scanned for the translation pictures:
# short enough that every row and column of a heatmap keeps a legible label.
SHORT_SENTENCE = 24


@dataclasses.dataclass(frozen=True)
class FigureRun:
    name: str  # directory under --runs
    experiment: str  # experiments.run's EXPERIMENT
    model: str  # its --model
    preset: str  # its --preset when the run is new


RUNS = (
    FigureRun("rnnsearch", "translate", "rnnsearch", "tiny"),
    FigureRun("caption", "caption", "sat", "tiny"),
    FigureRun("transformer", "translate", "transformer", "tiny"),
)


# --------------------------------------------------------------------------------------
# Choosing a sentence whose translation reorders adjective and noun.


def words(pieces: Sequence[str]) -> list[range]:
    """Group subword pieces into words: a word starts at a piece marked with U+2581 or at any
    piece that is not a letter run (punctuation, ``</s>``), and takes the unmarked letter
    pieces after it."""
    starts = [
        i
        for i, piece in enumerate(pieces)
        if i == 0 or piece.startswith(WORD_START) or not piece.isalpha()
    ]
    return [range(a, b) for a, b in zip(starts, [*starts[1:], len(pieces)], strict=True)]


def word_text(pieces: Sequence[str], word: range) -> str:
    return "".join(pieces[i] for i in word).lstrip(WORD_START)


def word_alignment(
    weights: np.ndarray, source_words: Sequence[range], target_words: Sequence[range]
) -> np.ndarray:
    """Piece weights ``[T, S]`` -> word weights ``[target words, source words]``: the
    attention a target word's pieces give a source word's pieces, summed over the source
    pieces and averaged over the target pieces (rows still sum to at most 1)."""
    weights = np.asarray(weights)
    if weights.shape != (sum(map(len, target_words)), sum(map(len, source_words))):
        raise ValueError(
            f"weights must be [T, S] = [{sum(map(len, target_words))}, "
            f"{sum(map(len, source_words))}] for the given words, got shape {weights.shape}"
        )
    columns = np.stack([weights[:, w].sum(axis=1) for w in source_words], axis=1)
    return np.stack([columns[w].mean(axis=0) for w in target_words])


@dataclasses.dataclass(frozen=True)
class Reordering:
    """Adjacent source words ``a b`` whose translations come out as ``b' .. a'``."""

    source: int  # index of the first source word (a); the second is source + 1
    target: tuple[int, int]  # target words aligned to b and to a, in output order
    confidence: float  # the smaller of the two alignment weights


def crossings(alignment: np.ndarray, *, max_gap: int = 1) -> list[Reordering]:
    """Every crossing of the argmax alignment of two adjacent source words.

    A crossing: source words ``s`` and ``s + 1`` and target words ``t1 < t2`` at most
    ``max_gap`` apart with ``t1`` and ``s + 1`` each other's strongest link, and ``t2`` and
    ``s`` too. Asking both directions to agree (the intersection of the two argmax
    alignments, as in Och and Ney 2003) drops the links a soft alignment smears onto
    neighbouring words.
    """
    alignment = np.asarray(alignment)
    if alignment.ndim != 2:
        raise ValueError(f"alignment must be [target words, source words], got {alignment.shape}")
    if 0 in alignment.shape:
        return []
    best_source = alignment.argmax(axis=1)  # per target word
    best_target = alignment.argmax(axis=0)  # per source word
    found = []
    for s in range(alignment.shape[1] - 1):
        t1, t2 = int(best_target[s + 1]), int(best_target[s])
        if 0 < t2 - t1 <= max_gap and best_source[t1] == s + 1 and best_source[t2] == s:
            confidence = float(min(alignment[t1, s + 1], alignment[t2, s]))
            found.append(Reordering(s, (t1, t2), confidence))
    return found


def is_adjective_noun(
    reordering: Reordering, source_words: Sequence[str], target_words: Sequence[str]
) -> bool:
    """Whether a crossing reads as adjective + noun -> noun .. adjective: the first source
    word in ADJECTIVES, the second a word, and both target words of three letters or more
    (which leaves out the articles and prepositions a soft alignment often swaps)."""
    s, (t1, t2) = reordering.source, reordering.target
    return (
        source_words[s].lower() in ADJECTIVES
        and source_words[s + 1].isalpha()
        and all(target_words[t].isalpha() and len(target_words[t]) >= 3 for t in (t1, t2))
    )


@dataclasses.dataclass(frozen=True)
class Candidate:
    index: int  # of the sentence among those scanned
    reordering: Reordering
    length: int  # source + target pieces: shorter sentences draw more legibly


def pick(candidates: Sequence[Candidate]) -> Candidate | None:
    """The most confident crossing; ties go to the shorter, then the earlier sentence."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c.reordering.confidence, -c.length, -c.index))


def _choose(sentences: Sequence[Aligned], alignments: Sequence[np.ndarray]) -> tuple[int, str]:
    """(index, what it shows) of the sentence to draw: the best adjective-noun crossing if
    there is one, else the best crossing of any two words, else the first sentence."""
    adjective, other = [], []
    for i, (sentence, alignment) in enumerate(zip(sentences, alignments, strict=True)):
        source_words = words(sentence.source_pieces)
        target_words = words(sentence.target_pieces)
        source_text = [word_text(sentence.source_pieces, w) for w in source_words]
        target_text = [word_text(sentence.target_pieces, w) for w in target_words]
        length = len(sentence.source_pieces) + len(sentence.target_pieces)
        for r in crossings(word_alignment(alignment, source_words, target_words)):
            linked = [source_text[r.source], source_text[r.source + 1]]
            linked += [target_text[t] for t in r.target]
            if is_adjective_noun(r, source_text, target_text):
                adjective.append(Candidate(i, r, length))
            elif all(text.isalpha() for text in linked):
                other.append(Candidate(i, r, length))
    chosen, kind = pick(adjective), "adjective-noun reordering"
    if chosen is None:
        chosen, kind = pick(other), "reordering"
    if chosen is None:
        print("figures: no reordering among the scanned sentences; drawing the first one")
        return 0, ""
    sentence = sentences[chosen.index]
    s, (t1, t2) = chosen.reordering.source, chosen.reordering.target
    source_words, target_words = words(sentence.source_pieces), words(sentence.target_pieces)
    before = " ".join(word_text(sentence.source_pieces, source_words[k]) for k in (s, s + 1))
    after = " ".join(word_text(sentence.target_pieces, target_words[k]) for k in range(t1, t2 + 1))
    print(
        f"figures: {len(adjective)} adjective-noun and {len(other)} other crossings among "
        f"{len(sentences)} test sentences; drawing {before!r} -> {after!r}"
    )
    return chosen.index, f"{kind}: {before} -> {after}"


# --------------------------------------------------------------------------------------
# Runs: train if unfinished, then load the best checkpoint.


def _latest_step(workdir: pathlib.Path) -> int | None:
    # Orbax names finished checkpoints by their step; unfinished ones carry a suffix.
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=None)


def ensure_trained(figure_run: FigureRun, workdir: pathlib.Path, overrides: Sequence[str]) -> None:
    """Train ``workdir`` to its config's ``train.steps`` through ``experiments.run`` unless it
    is there; a new run starts from the figure's preset with ``overrides``."""
    task = tasks.load(figure_run.experiment)
    saved = workdir / "config.json"
    if saved.exists():
        recorded = json.loads(saved.read_text())
        found = (recorded.get("experiment"), recorded.get("model_name"))
        if found != (figure_run.experiment, figure_run.model):
            raise SystemExit(
                f"error: {workdir} holds a {found[0]}/{found[1]} run, but the "
                f"{figure_run.name!r} figures need {figure_run.experiment}/{figure_run.model}; "
                "move it away or pass another --runs"
            )
        steps = config_lib.load(task.Config, saved).train.steps
        argv = [figure_run.experiment, "--workdir", str(workdir), "--resume"]
    else:
        config = task.presets(figure_run.model)[figure_run.preset]
        steps = config_lib.apply_overrides(config, list(overrides)).train.steps
        argv = [figure_run.experiment, "--model", figure_run.model, "--preset", figure_run.preset]
        argv += ["--workdir", str(workdir)]
        argv += [item for override in overrides for item in ("--set", override)]
    latest = _latest_step(workdir)
    if latest is not None and latest >= steps:
        print(f"figures: {figure_run.name}: {workdir} finished ({latest} of {steps} steps)")
        return
    print(f"figures: {figure_run.name}: training {workdir} to {steps} steps: {' '.join(argv)}")
    run.main(argv)


def load(workdir: pathlib.Path) -> tuple[Any, nnx.Module, int]:
    """(the task's setup, its model with the best checkpoint's parameters, that step)."""
    loaded = runner.load_run(workdir, best=True)
    return loaded.setup, loaded.model, loaded.step


def translate_test_sentences(
    setup: Any, model: nnx.Module, *, limit: int | None, max_tokens: int
) -> list[Aligned]:
    """Decode test sentences of at most ``max_tokens`` source pieces (of the first ``limit``)
    as the task does (beam search), and take the attention over each translation."""
    held_out = setup.held_out
    data, width = held_out.data, held_out.config.data.max_length
    sources, _ = data.eval_pairs(limit, split="test")
    ids = data.encode_sources(sources, width)
    sources = [s for s, row in zip(sources, ids, strict=True) if (row != 0).sum() <= max_tokens]
    hypotheses = held_out.translate_texts(model, sources)
    size = held_out.config.train.batch_size  # the attention compiles for this batch (or less)
    return [
        sentence
        for start in range(0, len(sources), size)
        for sentence in held_out.attention(
            model, sources[start : start + size], hypotheses[start : start + size]
        )
    ]


def nmt_alignment(sentences: Sequence[Aligned], path: pathlib.Path) -> pathlib.Path:
    index, shows = _choose(sentences, [s.weights for s in sentences])
    sentence = sentences[index]
    title = f"{sentence.source}\n-> {sentence.hypothesis}" + (f"\n{shows}" if shows else "")
    return visualize.alignment_heatmap(
        sentence.weights, sentence.source_pieces, sentence.target_pieces, path, title=title
    )


def transformer_heads(
    sentences: Sequence[Aligned],
    out: pathlib.Path,
    *,
    encoder_layer: int,
    cross_layer: int,
) -> list[pathlib.Path]:
    """One sentence (chosen as for RNNsearch, on the heads' mean cross-attention of
    ``cross_layer``): every head of encoder self-attention layer ``encoder_layer`` and of
    decoder cross-attention layer ``cross_layer``."""
    alignments = [s.weights["cross"][cross_layer].mean(axis=0) for s in sentences]
    index, shows = _choose(sentences, alignments)
    sentence = sentences[index]
    layers = len(sentence.weights["cross"])
    encoder_layer, cross_layer = encoder_layer % layers, cross_layer % layers
    title = f"{sentence.source}\n-> {sentence.hypothesis}"
    source, target = sentence.source_pieces, sentence.target_pieces
    return [
        visualize.head_grid(
            sentence.weights["encoder_self"][encoder_layer][None],
            source,
            source,
            out / "transformer_self_attention.png",
            f"encoder self-attention, layer {encoder_layer}\n{sentence.source}",
            first_layer=encoder_layer,
        ),
        visualize.head_grid(
            sentence.weights["cross"][cross_layer][None],
            target,
            source,
            out / "transformer_cross_attention.png",
            f"decoder cross-attention, layer {cross_layer}\n{title}"
            + (f"\n{shows} (mean of the heads)" if shows else ""),
            first_layer=cross_layer,
        ),
    ]


# --------------------------------------------------------------------------------------
# Captioning and kernel pictures, and the command.


def caption_attention(setup: Any, model: nnx.Module, path: pathlib.Path) -> pathlib.Path:
    """The task's own overlay of its first test scene (one is enough, and the overlays are the
    heaviest pictures of the gallery)."""
    with tempfile.TemporaryDirectory() as tmp:
        drawn = setup.visualize(model, pathlib.Path(tmp))
        if not drawn:
            raise RuntimeError("the caption task drew no test image")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(drawn[0], path)
    return path


def kernel_plots(results_dir: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
    from benchmarks import kernels

    results_path = results_dir / "results.json"
    if not results_path.exists():
        raise SystemExit(
            f"error: no benchmark results at {results_path}; run `python -m benchmarks.kernels "
            "--mode targets` or pass --bench-results DIR"
        )
    out.mkdir(parents=True, exist_ok=True)
    rows, paths = json.loads(results_path.read_text())["rows"], []
    for plot in kernels.PLOTS:
        named = dataclasses.replace(plot, file=f"kernels_{plot.file}")
        if named.draw(rows, out, "attention, B=1 N=8 H=64, float32"):
            paths.append(out / named.file)
    return paths


def compact(path: pathlib.Path) -> pathlib.Path:
    """Rewrite a PNG with a 256-colour palette: the pictures are flat colour maps, and the
    palette keeps them a few times smaller in the repository."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.figures",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=pathlib.Path, default=pathlib.Path("runs/figures"))
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/figures"))
    parser.add_argument(
        "--bench-results",
        type=pathlib.Path,
        default=pathlib.Path("benchmarks/results/kernels/targets"),
        help="directory of the kernel benchmark's results.json",
    )
    parser.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="scan only the first N test sentences for the translation pictures (default all)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for runs started from scratch (e.g. data.data_dir=...)",
    )
    parser.add_argument("--preset", default=None, help="preset of new runs (default: tiny)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
    args = parse_args(argv)
    written: list[pathlib.Path] = []

    def wrote(paths: list[pathlib.Path]) -> None:
        for path in paths:
            compact(path)
            print(f"figures: wrote {path} ({path.stat().st_size // 1024} KiB)")
        written.extend(paths)

    for figure_run in RUNS:
        if args.preset:
            figure_run = dataclasses.replace(figure_run, preset=args.preset)
        workdir = args.runs / figure_run.name
        ensure_trained(figure_run, workdir, args.overrides)
        setup, model, step = load(workdir)
        print(f"figures: {figure_run.name}: loaded the best checkpoint (step {step}) of {workdir}")
        if figure_run.experiment == "caption":
            wrote([caption_attention(setup, model, args.out / "caption_attention.png")])
            continue
        sentences = translate_test_sentences(
            setup, model, limit=args.sentences, max_tokens=SHORT_SENTENCE
        )
        if figure_run.model == "transformer":
            wrote(transformer_heads(sentences, args.out, encoder_layer=0, cross_layer=-1))
        else:
            wrote([nmt_alignment(sentences, args.out / "nmt_alignment.png")])
    wrote(kernel_plots(args.bench_results, args.out))
    return written


if __name__ == "__main__":
    main()
