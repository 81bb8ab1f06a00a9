"""Put your own input through a trained run and draw where the model looked.

    python -m experiments.attend RUN_DIR --input TEXT_OR_IMAGE [--out FILE.png] [--best]
                                 [--beam_size W] [--query WORD_OR_INDEX] [--length N]

* ``translate`` runs: the beam-search translation of TEXT, and its alignment (RNNsearch,
  Bahdanau et al. 2014 Fig. 3) or every layer's and head's cross-attention (Transformer).
  RNNencdec has no attention: it translates and draws nothing.
* ``caption`` runs: IMAGE (PNG or JPEG, any size, grey or colour) prepared as the run's
  training images were, its caption, and one attention map per word (Xu et al. 2015,
  Figs. 2-3).
* ``lm`` runs: the continuation of the prompt TEXT, and every layer's and head's
  self-attention over the prompt with one query token outlined (``--query``: a word of the
  prompt or a token index; default the last token).

Input the model cannot represent goes through the tokenizer's unknown symbol (the output says
how many); input longer than the model takes is cut, with a warning saying where.
"""

import argparse
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from experiments import runner
from experiments import visualize as visualize_lib
from experiments.data.tokenizer import UNK_ID

__all__ = ["attend", "main"]


def _say_unknown(count: int, what: str) -> None:
    if count:
        print(f"note: {count} {what} outside the model's vocabulary read as <unk>")


def translate(loaded: runner.Run, text: str, out: pathlib.Path) -> str:
    """Print and return the translation of ``text``; draw its attention into ``out``."""
    held_out, config = loaded.setup.held_out, loaded.config
    data, width = held_out.data, config.data.max_length
    ids = data.source_tokenizer.encode(text)
    _say_unknown(sum(i == UNK_ID for i in ids), "source pieces")
    if len(ids) + 1 > width:  # + the end token
        kept = data.source_pieces(ids[: width - 1])
        print(f"warning: the source is cut to {width - 1} pieces, after {''.join(kept[-3:])!r}")
    (hypothesis,) = held_out.translate_texts(loaded.model, [text])
    print(hypothesis)
    if getattr(config.model, "attention", True) is False:
        print("RNNencdec has no attention (one fixed summary of the source): nothing to draw")
        return hypothesis
    held_out.draw(loaded.model, [text], [hypothesis], [out])
    print(f"plot: {out}")
    return hypothesis


def caption(loaded: runner.Run, image_path: str, out: pathlib.Path) -> str:
    """Print and return the caption of the image at ``image_path``; draw its attention."""
    from experiments.data.captioning import decode_image

    held_out = loaded.setup.held_out
    data = held_out.data
    path = pathlib.Path(image_path)
    try:
        encoded = path.read_bytes()
        image = decode_image(encoded, size=data.image_size, channels=data.channels)
    except OSError as error:  # missing, unreadable, or not an image PIL can open
        raise ValueError(f"cannot read the image {path}: {error}") from None
    # A caption of padding: generation needs none, the reference-attention pass reads it.
    dummy = np.zeros((1, data.max_length + 1), np.int32)
    batch = {"image": image[None], "caption": dummy}
    (text,) = held_out.draw(loaded.model, batch, [out])
    print(text)
    print(f"plot: {out}")
    return text


def continue_prompt(
    loaded: runner.Run, text: str, out: pathlib.Path, query: str | None, length: int
) -> str:
    """Print and return the continuation of ``text``; draw the prompt's self-attention."""
    from experiments import sample
    from experiments.tasks.lm import self_attention

    data, config = loaded.setup.held_out.data, loaded.config
    ids = np.asarray(data.encode(text), np.int32)
    if ids.size == 0:
        raise ValueError("--input must hold at least one token")
    _say_unknown(int((ids == UNK_ID).sum()), "characters or pieces")
    context = config.data.context_length
    if ids.size > context:
        print(f"warning: the prompt is cut to its last {context} tokens (the trained context)")
        ids = ids[-context:]
    tokens = sample.continue_prompt(
        loaded.model,
        ids,
        window=context,
        length=length,
        method="sample",  # greedy decoding of a small character model loops
        temperature=0.8,
        top_k=None,
        beam_size=1,
        seed=0,
    )
    continuation = data.decode([t for t in tokens.tolist() if t != 0])
    print(text + continuation)
    pieces = data.pieces(ids)
    row = _query_row(pieces, query)
    title = f"{text!r}: where {pieces[row]!r} (token {row}) looks"
    visualize_lib.head_grid(
        self_attention(loaded.model, ids), pieces, pieces, out, title, highlight=row
    )
    print(f"plot: {out}")
    return continuation


def _query_row(pieces: Sequence[str], query: str | None) -> int:
    """The prompt token ``query`` names: an index (negative from the end), or the token that
    ends the last occurrence of the word ``query`` in the prompt; the last token by default."""
    if query is None:
        return len(pieces) - 1
    try:
        index = int(query)
    except ValueError:
        ends = np.cumsum([len(p) for p in pieces])  # where each token's text ends
        # The labels show spaces as a visible mark ("␣", sentencepiece's "▁"): read them back.
        text = "".join(pieces).replace("\u2423", " ").replace("\u2581", " ")
        found = text.rfind(query)
        if found < 0 or not query:
            raise ValueError(f"--query {query!r} is not in the prompt") from None
        return int(np.searchsorted(ends, found + len(query)))
    if not -len(pieces) <= index < len(pieces):
        raise ValueError(f"--query {index} is outside the prompt's {len(pieces)} tokens")
    return index % len(pieces)


def attend(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.attend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--input", required=True, help="a sentence, an image file, a prompt")
    parser.add_argument("--out", type=pathlib.Path, help="the PNG (default RUN_DIR/attend.png)")
    parser.add_argument("--best", action="store_true", help="use the best checkpoint")
    parser.add_argument("--beam_size", type=int, help="beam width (default: the run's)")
    parser.add_argument("--query", help="lm: the prompt token to outline (word or index)")
    parser.add_argument("--length", type=int, default=100, help="lm: tokens to continue")
    args = parser.parse_args(argv)
    if args.beam_size is not None and args.beam_size < 1:
        raise ValueError(f"--beam_size must be >= 1, got {args.beam_size}")
    beam = [] if args.beam_size is None else [f"eval.beam_size={args.beam_size}"]
    loaded = runner.load_run(args.run_dir, best=args.best, overrides=beam)
    out = args.out or args.run_dir / "attend.png"
    if loaded.experiment == "translate":
        return translate(loaded, args.input, out)
    if loaded.experiment == "caption":
        return caption(loaded, args.input, out)
    return continue_prompt(loaded, args.input, out, args.query, args.length)


def main(argv: Sequence[str] | None = None) -> str:
    from experiments.errors import USER_ERRORS

    try:
        return attend(argv)
    except (ValueError, *USER_ERRORS) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
