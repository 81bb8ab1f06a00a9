"""Attention pictures: alignment heatmaps, head grids, image overlays, one translation's
attention, and a CLI that redraws a run's plots.

    python -m experiments.visualize RUN_DIR [--best]

loads the run's saved config and its latest (or best) checkpoint and redraws the plots the
run makes at the end of training into ``RUN_DIR/plots``.
"""

import argparse
import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "Aligned",
    "aligned",
    "alignment_heatmap",
    "head_grid",
    "image_overlay",
    "main",
    "translation_attention",
]


def alignment_heatmap(
    weights: np.ndarray,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    path: pathlib.Path,
    title: str = "",
) -> pathlib.Path:
    """Draw ``weights`` ``[T, S]`` as in Bahdanau et al. 2014, Figure 3 (white = 1, black = 0).

    Source tokens label the columns (top), target tokens the rows.
    """
    weights = np.asarray(weights)
    if weights.shape != (len(target_tokens), len(source_tokens)):
        raise ValueError(
            f"weights must be [T, S] = [{len(target_tokens)}, {len(source_tokens)}] for the "
            f"given tokens, got shape {weights.shape}"
        )
    size = (max(4.0, 0.35 * len(source_tokens) + 1.5), max(3.0, 0.35 * len(target_tokens) + 1.5))
    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    ax.imshow(weights, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=90)
    ax.set_yticks(range(len(target_tokens)), target_tokens)
    ax.xaxis.tick_top()
    if title:
        ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def head_grid(
    weights: np.ndarray,
    query_tokens: Sequence[str],
    key_tokens: Sequence[str],
    path: pathlib.Path,
    title: str = "",
    *,
    first_layer: int = 0,
    highlight: int | None = None,
) -> pathlib.Path:
    """Draw per-layer, per-head weights ``[layers, N, T, S]`` as a grid of heatmaps.

    One row per layer, one column per head (Vaswani et al. 2017, Figures 3-5 show single
    heads of this grid); query tokens label the rows of each map, key tokens the columns.
    Rows are titled from layer ``first_layer`` on (for a slice of a deeper model's layers).
    ``highlight`` outlines one query's row in every map: where that token looks.
    """
    weights = np.asarray(weights)
    if weights.ndim != 4 or weights.shape[2:] != (len(query_tokens), len(key_tokens)):
        raise ValueError(
            f"weights must be [layers, N, T, S] with T, S = {len(query_tokens)}, "
            f"{len(key_tokens)} for the given tokens, got shape {weights.shape}"
        )
    layers, heads = weights.shape[:2]
    cell = max(1.6, 0.12 * max(len(query_tokens), len(key_tokens)))
    fig, axes = plt.subplots(
        layers,
        heads,
        figsize=(cell * heads + 1, cell * layers + 1),
        squeeze=False,
        constrained_layout=True,
    )
    small = len(key_tokens) <= 24
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            ax.imshow(weights[layer, head], cmap="viridis", vmin=0.0, aspect="auto")
            ax.set_xticks(range(len(key_tokens)) if small else [])
            ax.set_yticks(range(len(query_tokens)) if small else [])
            if small and layer == layers - 1:
                ax.set_xticklabels(key_tokens, rotation=90, fontsize=6)
            if small and head == 0:
                ax.set_yticklabels(query_tokens, fontsize=6)
            # Tokens label the outer maps only; inner ones would otherwise show tick numbers.
            ax.tick_params(labelbottom=layer == layers - 1, labelleft=head == 0)
            ax.set_title(f"layer {first_layer + layer} head {head}", fontsize=7)
            if highlight is not None:
                ax.add_patch(
                    matplotlib.patches.Rectangle(
                        (-0.5, highlight - 0.5),
                        len(key_tokens),
                        1,
                        fill=False,
                        edgecolor="red",
                        linewidth=1.2,
                    )
                )
    if title:
        fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def image_overlay(
    image: np.ndarray,
    words: Sequence[str],
    maps: np.ndarray,
    path: pathlib.Path,
    *,
    boxes: np.ndarray | None = None,
    title: str = "",
    columns: int = 6,
) -> pathlib.Path:
    """The image, then one panel per word with its attention map over the image.

    Xu et al. 2015, Figures 2-3. Each map ``[gh, gw]`` is stretched over the whole image
    (cell ``(i, j)`` covers rows ``[i H/gh, (i+1) H/gh)``, the geometry of
    ``experiments.attention_correctness``) and upsampled bilinearly for display, on a colour
    scale from 0 to its own maximum (given in the panel's title).

    Args:
      image: ``[H, W]`` or ``[H, W, C]`` (C = 1 or 3), values in [0, 1].
      words: the generated words, one per map.
      maps: ``[T, gh, gw]`` non-negative attention weights, ``T = len(words)``.
      path: the PNG to write.
      boxes: optional ``[T, 4]`` ``(top, left, bottom, right)`` in pixels (bottom/right
        exclusive): the box each word names, outlined; rows of -1 for words naming none.
      title: above the figure, e.g. the whole caption.
      columns: panels per row.
    """
    image, maps = np.asarray(image, dtype=np.float32), np.asarray(maps)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"image must be [H, W], [H, W, 1] or [H, W, 3], got shape {image.shape}")
    if maps.ndim != 3 or len(maps) != len(words):
        raise ValueError(
            f"maps must be [T, gh, gw] with T = {len(words)} (one per word), got shape {maps.shape}"
        )
    if boxes is not None and np.shape(boxes) != (len(words), 4):
        raise ValueError(
            f"boxes must be [T, 4] with T = {len(words)} (one per word), got shape "
            f"{np.shape(boxes)}"
        )
    height, width = image.shape[:2]
    # Pixel r covers [r, r + 1), as in the boxes and the attention cells.
    extent = (0.0, float(width), float(height), 0.0)
    panels = 1 + len(words)
    columns = max(1, min(columns, panels))
    rows = -(-panels // columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(1.8 * columns, 1.9 * rows + 0.4),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image, cmap="gray", vmin=0.0, vmax=1.0, extent=extent)
    for k, word in enumerate(words):
        ax = axes.flat[k + 1]
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, extent=extent)
        peak = float(maps[k].max())
        ax.imshow(
            maps[k],
            cmap="inferno",
            vmin=0.0,
            vmax=peak if peak > 0 else 1.0,
            alpha=0.6,
            extent=extent,
            interpolation="bilinear",
        )
        if boxes is not None and boxes[k][0] >= 0:
            top, left, bottom, right = (float(v) for v in boxes[k])
            ax.add_patch(
                matplotlib.patches.Rectangle(
                    (left, top), right - left, bottom - top, fill=False, edgecolor="lime"
                )
            )
        ax.set_title(f"{word} ({peak:.2f})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@dataclasses.dataclass(frozen=True)
class Aligned:
    """A translation and its attention while teacher-forced, cut to its pieces."""

    source: str
    hypothesis: str
    source_pieces: list[str]
    target_pieces: list[str]
    # [T, S] for RNNsearch; for the Transformer per-layer lists of [N, *, *] under its keys
    # ("encoder_self", "decoder_self", "cross": Transformer.__call__'s).
    weights: Any


def aligned(
    source: str,
    hypothesis: str,
    source_pieces: Sequence[str],
    target_pieces: Sequence[str],
    weights: Any,
) -> Aligned:
    """An :class:`Aligned` from the model's weights of one sentence, padded to the model's
    lengths: ``[T', S']``, or the Transformer's per-layer ``[N, *, *]`` (``T' >= T``...)."""
    T, S = len(target_pieces), len(source_pieces)
    if isinstance(weights, dict):
        shapes = {"encoder_self": (S, S), "decoder_self": (T, T), "cross": (T, S)}
        weights = {
            key: [np.asarray(w[:, : shapes[key][0], : shapes[key][1]]) for w in layers]
            for key, layers in weights.items()
        }
    else:
        weights = np.asarray(weights[:T, :S])
    return Aligned(source, hypothesis, list(source_pieces), list(target_pieces), weights)


def translation_attention(sentence: Aligned, path: pathlib.Path) -> pathlib.Path:
    """A translation's alignment as :func:`alignment_heatmap` (Bahdanau et al. 2014, Fig. 3),
    or a Transformer's cross-attention, every layer and head, as :func:`head_grid`."""
    source, target = sentence.source_pieces, sentence.target_pieces
    title = f"{sentence.source}\n-> {sentence.hypothesis}"
    if isinstance(sentence.weights, dict):
        return head_grid(np.stack(sentence.weights["cross"]), target, source, path, title)
    return alignment_heatmap(sentence.weights, source, target, path, title=title)


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
    # Imported here so that importing the drawing helpers stays light.
    from experiments import runner

    parser = argparse.ArgumentParser(prog="python -m experiments.visualize", description=__doc__)
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--best", action="store_true", help="use the best checkpoint")
    args = parser.parse_args(argv)
    try:
        loaded = runner.load_run(args.run_dir, best=args.best)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    paths = loaded.setup.visualize(loaded.model, args.run_dir / "plots")
    for path in paths:
        print(f"plot (step {loaded.step}): {path}")
    return paths


if __name__ == "__main__":
    main()
