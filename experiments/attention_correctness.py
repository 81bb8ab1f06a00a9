"""Attention correctness: does a captioner look at the object it is naming?

For every generated word that names an object with a ground-truth bounding box, compare the
word's attention map over the annotation grid with the box:

``peak_in_box``
    Is the attention peak inside the box? The peak is the argmax cell (the first in row-major
    order on ties), placed at the cell's centre in image coordinates. The paper's figures
    upsample the map (Xu et al. 2015, sec. 5.4); a bilinear upsampling would not move the
    peak, since a bilinear interpolant takes its maximum at a sample point (a cell centre),
    so the cell centre is that argmax without the cost of the upsampling. A Gaussian blur
    would move it, but that is a display choice, not the model's.
``mass_in_box``
    The share of attention inside the box: Liu, Mao, Sha & Yuille 2017 ("Attention
    Correctness in Neural Image Captioning", arXiv:1605.09553) call this *attention
    correctness*. Each cell spreads its weight evenly over its area (the nearest-neighbour
    upsampled map), so the share is exact, whatever the box.
``chance``
    Box area / image area: the hit rate of a peak at a uniformly random point, and the
    ``mass_in_box`` of uniform attention.
``chance_cells``
    The share of cell centres inside the box: the hit rate of a uniformly random *cell*, the
    fair baseline of ``peak_in_box`` on a coarse grid (it tends to ``chance`` as cells shrink).

Geometry: the ``gh x gw`` cells tile the ``H x W`` image uniformly (the encoder's grid is the
image downsampled by a whole factor); cell ``(i, j)`` covers rows ``[i H/gh, (i+1) H/gh)`` and
columns ``[j W/gw, (j+1) W/gw)``. Pixel ``(r, c)`` covers ``[r, r+1) x [c, c+1)``, so a box
``(top, left, bottom, right)`` in pixels, bottom and right exclusive, is the half-open
rectangle ``[top, bottom) x [left, right)``: pixel rows ``top .. bottom - 1``. (TFDS boxes are
``(ymin, xmin, ymax, xmax)`` in [0, 1]: multiply by ``(H, W, H, W)``.) Boxes are clipped to the
image.

Shapes: ``maps [..., gh, gw]`` (a model's weights ``[T, L]`` reshaped to ``[T, gh, gw]``, cells
row-major) and ``boxes [..., 4]`` with the same leading axes (or broadcastable), one box per
map. Pure NumPy functions; jax arrays are accepted.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "AttentionCorrectness",
    "attention_correctness",
    "caption_metrics",
    "concatenate",
    "peak_locations",
    "word_attention",
]


class AttentionCorrectness(NamedTuple):
    """Per-word results, each of the maps' leading shape ``[...]``."""

    peak_in_box: np.ndarray  # bool: the attention peak lies inside the box
    mass_in_box: np.ndarray  # float64 in [0, 1]: share of attention inside the box
    chance: np.ndarray  # float64: box area / image area
    chance_cells: np.ndarray  # float64: share of the gh * gw cell centres inside the box

    def rates(self) -> dict[str, float]:
        """Means over all words: the numbers to report for a split (NaN if there are none)."""
        return {
            name: float(np.mean(value)) if np.size(value) else float("nan")
            for name, value in self._asdict().items()
        }


def peak_locations(maps: Any, image_size: tuple[int, int]) -> np.ndarray:
    """The centre of each map's argmax cell in image coordinates: ``[..., 2]`` as ``(y, x)``."""
    maps = _check_maps(maps)
    height, width = _check_image_size(image_size)
    gh, gw = maps.shape[-2:]
    flat = maps.reshape(*maps.shape[:-2], gh * gw)
    row, col = np.divmod(np.argmax(flat, axis=-1), gw)
    return np.stack([(row + 0.5) * height / gh, (col + 0.5) * width / gw], axis=-1)


def attention_correctness(
    maps: Any, boxes: Any, image_size: tuple[int, int]
) -> AttentionCorrectness:
    """Compare attention maps ``[..., gh, gw]`` with boxes ``[..., 4]`` on an image.

    Args:
      maps: non-negative attention weights over the grid, one map per word.
      boxes: ``(top, left, bottom, right)`` in pixels, bottom/right exclusive, one per map.
      image_size: ``(H, W)`` in pixels of the image the maps were computed from.
    """
    maps = _check_maps(maps)
    height, width = _check_image_size(image_size)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [..., 4] (top, left, bottom, right), got {boxes.shape}")
    try:
        lead = np.broadcast_shapes(maps.shape[:-2], boxes.shape[:-1])
    except ValueError:
        raise ValueError(
            f"maps [..., gh, gw] and boxes [..., 4] must share leading axes, got "
            f"{maps.shape} and {boxes.shape}"
        ) from None
    gh, gw = maps.shape[-2:]
    top, bottom = np.clip(boxes[..., 0], 0, height), np.clip(boxes[..., 2], 0, height)
    left, right = np.clip(boxes[..., 1], 0, width), np.clip(boxes[..., 3], 0, width)
    if np.any(bottom < top) or np.any(right < left):
        raise ValueError("boxes must have top <= bottom and left <= right")

    y, x = np.moveaxis(peak_locations(maps, image_size), -1, 0)
    peak_in_box = (top <= y) & (y < bottom) & (left <= x) & (x < right)

    # Share of each cell row / column inside the box, [..., gh] and [..., gw].
    rows = _overlap(top, bottom, height, gh)
    cols = _overlap(left, right, width, gw)
    inside = np.einsum("...ij,...i,...j->...", maps, rows, cols)
    total = maps.sum(axis=(-2, -1))
    mass_in_box = np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)

    chance = (bottom - top) * (right - left) / (height * width)
    centre_rows = _centres_inside(top, bottom, height, gh)
    centre_cols = _centres_inside(left, right, width, gw)
    chance_cells = centre_rows * centre_cols / (gh * gw)
    return AttentionCorrectness(
        *(np.broadcast_to(a, lead) for a in (peak_in_box, mass_in_box, chance, chance_cells))
    )


def word_attention(
    weights: np.ndarray,
    word_boxes: np.ndarray,
    boxes: np.ndarray,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    *,
    lag: int = 0,
) -> AttentionCorrectness:
    """Attention correctness of every generated word that names a box, one result per word.

    ``lag=1`` grades the attention of the step before the word instead (for the digit
    scenes, the step that emits its article "a" / "the"): a decoder can look at the object
    while emitting the word before its name and carry what it saw in its LSTM state.

    Args:
      weights: ``[B, T, L]``, step t's attention (the step that emits token t), L = gh * gw.
      word_boxes: int ``[B, T]``, the box token t names (``CaptionData.word_boxes``), or -1.
      boxes: int ``[B, M, 4]``, ``(top, left, bottom, right)`` in pixels of each image.
      grid: ``(gh, gw)`` of the annotation grid.
      image_size: ``(H, W)`` of the images.
    """
    weights, word_boxes, boxes = np.asarray(weights), np.asarray(word_boxes), np.asarray(boxes)
    if weights.shape[:2] != word_boxes.shape or weights.shape[2] != grid[0] * grid[1]:
        raise ValueError(
            f"weights must be [B, T, gh * gw] with [B, T] = {word_boxes.shape} (word_boxes) and "
            f"(gh, gw) = {grid}, got shape {weights.shape}"
        )
    if not 0 <= lag < weights.shape[1]:
        raise ValueError(f"lag must be in [0, {weights.shape[1]}) steps, got {lag}")
    row, step = np.nonzero(word_boxes >= 0)
    row, step = row[step >= lag], step[step >= lag]
    maps = weights[row, step - lag].reshape(len(row), *grid)
    return attention_correctness(maps, boxes[row, word_boxes[row, step]], image_size)


def concatenate(
    results: list[AttentionCorrectness],
) -> AttentionCorrectness:
    """The results of several batches as one."""
    return AttentionCorrectness(*(np.concatenate(parts) for parts in zip(*results, strict=True)))


def caption_metrics(
    batches: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    name_boxes: Callable[[np.ndarray, np.ndarray], np.ndarray],
    grid: tuple[int, int],
    image_size: tuple[int, int],
) -> dict[str, float]:
    """A split's attention metrics, as the caption task reports them: the rates of every
    beam-search word that names a box (``attention_*``, and how many words), the peak-in-box
    rate of the step before each of them, and that of each reference word (teacher-forced).

    Args:
      batches: each with ``boxes [B, M, 4]``, their digit ``labels [B, M]`` and the
        reference's ``word_boxes [B, T+1]`` (BOS first).
      outputs: each with the ``beam`` caption ``[B, T]``, its attention ``generated`` (while
        re-reading it) and the attention ``reference`` (while teacher-forcing the reference),
        ``[B, T, gh * gw]``.
      name_boxes: ``(ids [B, T], labels [B, M]) -> [B, T]``, the box each word names (or -1):
        ``CaptionData.word_boxes``.
    """
    graded: dict[str, list[AttentionCorrectness]] = {"generated": [], "previous": [],
                                                     "reference": []}  # fmt: skip
    for batch, out in zip(batches, outputs, strict=True):
        words = name_boxes(out["beam"], batch["labels"])
        for kind, weights, word_boxes, lag in [
            ("generated", out["generated"], words, 0),
            ("previous", out["generated"], words, 1),
            ("reference", out["reference"], batch["word_boxes"][:, 1:], 0),
        ]:
            result = word_attention(weights, word_boxes, batch["boxes"], grid, image_size, lag=lag)
            graded[kind].append(result)
    generated, previous, reference = (concatenate(graded[k]) for k in graded)
    metrics = {f"attention_{k}": v for k, v in generated.rates().items()}
    metrics["attention_words"] = float(generated.peak_in_box.size)
    metrics["attention_previous_step_peak_in_box"] = previous.rates()["peak_in_box"]
    metrics["reference_peak_in_box"] = reference.rates()["peak_in_box"]
    return metrics


def _overlap(start: np.ndarray, stop: np.ndarray, size: int, cells: int) -> np.ndarray:
    """Fraction of each of ``cells`` equal intervals of ``[0, size)`` inside ``[start, stop)``."""
    edges = np.arange(cells + 1) * (size / cells)
    low = np.maximum(edges[:-1], start[..., None])
    high = np.minimum(edges[1:], stop[..., None])
    return np.maximum(high - low, 0.0) / (size / cells)


def _centres_inside(start: np.ndarray, stop: np.ndarray, size: int, cells: int) -> np.ndarray:
    centres = (np.arange(cells) + 0.5) * (size / cells)
    return ((start[..., None] <= centres) & (centres < stop[..., None])).sum(axis=-1)


def _check_maps(maps: Any) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim < 2 or 0 in maps.shape[-2:] or not np.issubdtype(maps.dtype, np.floating):
        raise ValueError(
            f"maps must be float [..., gh, gw] with gh, gw >= 1, got {maps.dtype} {maps.shape}"
        )
    return maps.astype(np.float64)


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if len(image_size) != 2 or not all(
        isinstance(n, int | np.integer) and n > 0 for n in image_size
    ):
        raise ValueError(f"image_size must be (H, W), two positive ints, got {image_size}")
    return int(image_size[0]), int(image_size[1])
