"""Attention correctness: peaks and attention mass against boxes, on maps with known answers."""

import numpy as np
import pytest

from experiments.attention_correctness import attention_correctness, peak_locations


def _map(shape, cells):
    """A map with the given weight at each (row, col), zero elsewhere."""
    m = np.zeros(shape)
    for (i, j), w in cells.items():
        m[i, j] = w
    return m


def test_a_hand_made_example():
    # 64 x 64 image, 4 x 4 grid: 16 px cells. Half the attention on cell (1, 2), which covers
    # rows [16, 32) and columns [32, 48) and has its centre at (y, x) = (24, 40); the other
    # half on cell (3, 0).
    m = _map((4, 4), {(1, 2): 0.5, (3, 0): 0.5})
    maps = np.stack([m, m, m])
    boxes = np.array(
        [
            [16, 32, 32, 48],  # exactly cell (1, 2)
            [0, 0, 24, 40],  # ends at the peak: bottom/right are exclusive
            [40, -10, 80, 12],  # sticks out of the image: clipped to [40, 64) x [0, 12)
        ]
    )
    result = attention_correctness(maps, boxes, (64, 64))
    np.testing.assert_array_equal(peak_locations(maps, (64, 64)), [[24, 40]] * 3)
    np.testing.assert_array_equal(result.peak_in_box, [True, False, False])
    # Box 1 holds a quarter of cell (1, 2): rows [16, 24), columns [32, 40). Box 2 holds
    # all the rows ([48, 64)) and 3/4 of the columns ([0, 12)) of cell (3, 0).
    np.testing.assert_allclose(result.mass_in_box, [0.5, 0.5 / 4, 0.5 * 3 / 4])
    np.testing.assert_allclose(result.chance, [256 / 4096, 24 * 40 / 4096, 24 * 12 / 4096])
    # Cell centres lie at 8, 24, 40, 56 on both axes.
    np.testing.assert_allclose(result.chance_cells, [1 / 16, 1 * 2 / 16, 2 * 1 / 16])
    rates = result.rates()
    assert rates["peak_in_box"] == pytest.approx(1 / 3)
    assert rates["chance"] == pytest.approx((256 + 960 + 288) / 3 / 4096)


def test_rectangular_image_and_grid_keep_rows_and_columns_apart():
    # 48 x 80 image (H x W), 3 x 5 grid of 16 px cells; peak at row 2, column 0: (40, 8).
    maps = _map((3, 5), {(2, 0): 0.9, (0, 4): 0.1})
    np.testing.assert_array_equal(peak_locations(maps, (48, 80)), [40, 8])
    hit = attention_correctness(maps, [32, 0, 48, 16], (48, 80))
    transposed = attention_correctness(maps, [0, 32, 16, 48], (48, 80))
    assert hit.peak_in_box and not transposed.peak_in_box
    assert hit.mass_in_box == pytest.approx(0.9) and transposed.mass_in_box == 0
    assert hit.chance == pytest.approx(16 * 16 / (48 * 80))


def test_ties_go_to_the_first_cell_and_maps_need_not_be_normalised():
    maps = np.full((2, 2), 3.0)  # uniform and unnormalised: the peak is cell (0, 0)
    result = attention_correctness(maps, [0, 0, 5, 5], (10, 10))
    assert result.peak_in_box
    assert result.mass_in_box == pytest.approx(0.25) == result.chance


def test_mass_in_box_equals_counting_upsampled_pixels():
    rng = np.random.default_rng(0)
    gh, gw, cell_h, cell_w = 3, 5, 4, 2
    H, W = gh * cell_h, gw * cell_w
    maps = rng.dirichlet(np.ones(gh * gw), size=7).reshape(7, gh, gw)
    tops, lefts = rng.integers(0, H, 7), rng.integers(0, W, 7)
    boxes = np.stack(
        [tops, lefts, tops + rng.integers(1, H, 7), lefts + rng.integers(1, W, 7)], axis=-1
    )
    result = attention_correctness(maps, boxes, (H, W))
    for m, (top, left, bottom, right), mass in zip(maps, boxes, result.mass_in_box, strict=True):
        pixels = np.kron(m, np.ones((cell_h, cell_w))) / (cell_h * cell_w)  # sums to one
        assert mass == pytest.approx(pixels[top:bottom, left:right].sum())


@pytest.mark.parametrize(
    ("maps", "boxes", "size", "message"),
    [
        (
            np.ones(4),
            [0, 0, 1, 1],
            (4, 4),
            r"maps must be float \[..., gh, gw\] with gh, gw >= 1, got float64 \(4,\)",
        ),
        (np.ones((2, 2), int), [0, 0, 1, 1], (4, 4), r"maps must be float .* got int64 \(2, 2\)"),
        (
            np.ones((2, 2)),
            [0, 0, 1],
            (4, 4),
            r"boxes must be \[..., 4\] \(top, left, bottom, right\), got \(3,\)",
        ),
        (
            np.ones((3, 2, 2)),
            np.zeros((2, 4)),
            (4, 4),
            r"maps \[..., gh, gw\] and boxes \[..., 4\] must share leading axes, got \(3, 2, 2\) and \(2, 4\)",
        ),
        (np.ones((2, 2)), [2, 0, 1, 1], (4, 4), r"boxes must have top <= bottom and left <= right"),
        (
            np.ones((2, 2)),
            [0, 0, 1, 1],
            (4, 0),
            r"image_size must be \(H, W\), two positive ints, got \(4, 0\)",
        ),
    ],
)
def test_bad_input_is_named(maps, boxes, size, message):
    with pytest.raises(ValueError, match=message):
        attention_correctness(maps, boxes, size)
