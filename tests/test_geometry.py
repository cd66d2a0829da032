"""Tests for pointcopy.geometry: smart_resize vs transformers, box/mask -> cells, cells -> box, IoU."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointcopy import geometry as g
from pointcopy.geometry import MergedGrid

# ---------------------------------------------------------------- smart_resize


def _sizes(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = [(1, 1), (13, 13), (14, 14), (27, 29), (28, 28), (10, 1000), (1000, 10), (5, 999), (56, 56 * 200)]
    out += [(3000, 4000), (16384 * 28, 28), (8000, 9000), (20000, 20000), (672, 672), (500, 375)]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.5:
            h, w = rng.randint(1, 2000), rng.randint(1, 2000)
        elif kind < 0.8:
            h, w = rng.randint(1, 30000), rng.randint(1, 30000)
        else:
            h = rng.randint(1, 100)
            w = h * rng.randint(1, 199) + rng.randint(0, h - 1)
        if max(h, w) / min(h, w) <= 200:
            out.append((h, w))
    return [s for s in out if max(s) / min(s) <= 200]


def test_smart_resize_equals_transformers_on_many_sizes():
    # The PIL module holds the same function and imports without torchvision (not installable here).
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as tf_smart_resize

    sizes = _sizes(3000)
    for h, w in sizes:
        for mn, mx in [(g.MIN_PIXELS, g.MAX_PIXELS), (56 * 56, 14 * 14 * 4 * 1280), (256 * 28 * 28, 1280 * 28 * 28)]:
            assert g.smart_resize(h, w, 28, mn, mx) == tf_smart_resize(h, w, factor=28, min_pixels=mn, max_pixels=mx), (h, w, mn, mx)


def test_smart_resize_properties_and_errors():
    for h, w in _sizes(500, seed=1):
        rh, rw = g.smart_resize(h, w)
        assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
        assert g.MIN_PIXELS <= rh * rw <= g.MAX_PIXELS
    with pytest.raises(ValueError, match="aspect ratio"):
        g.smart_resize(1, 201)
    with pytest.raises(ValueError, match="positive"):
        g.smart_resize(0, 10)


def test_vl_utils_variant_differs_for_thin_images_only():
    # Official dataset.py clamps the first rounding to >= 28; transformers falls into the min_pixels branch.
    assert g.smart_resize_vl_utils(10, 672) == (28, 672)
    assert g.smart_resize(10, 672) == (28, 476)
    # On ordinary sizes both agree.
    for h, w in _sizes(300, seed=2):
        if min(h, w) > 14 and h * w <= g.MAX_PIXELS:  # round(14 / 28) == 0 (banker's rounding)
            assert g.smart_resize_vl_utils(h, w) == g.smart_resize(h, w), (h, w)


# ---------------------------------------------------------------- grids


def test_grid_for_image_and_thw():
    grid = MergedGrid.for_image((640, 480))  # (w, h)
    rh, rw = g.smart_resize(480, 640)
    assert (grid.rows, grid.cols) == (rh // 28, rw // 28)
    assert grid.resized_size == (rw, rh)
    assert MergedGrid.from_thw((1, 2 * grid.rows, 2 * grid.cols)) == grid
    with pytest.raises(ValueError):
        MergedGrid.from_thw((2, 4, 4))
    with pytest.raises(IndexError):
        grid.cell_box(grid.num_cells)
    assert grid.cell_box(grid.cols + 1) == (28, 28, 56, 56)


def test_grid_matches_transformers_image_processor():
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil(min_pixels=g.MIN_PIXELS, max_pixels=g.MAX_PIXELS)
    for w, h in [(100, 60), (333, 517), (30, 600)]:
        out = proc(images=[Image.new("RGB", (w, h))], return_tensors="np")
        thw = out["image_grid_thw"][0]
        assert MergedGrid.from_thw(thw) == MergedGrid.for_image((w, h))


# ---------------------------------------------------------------- box -> cells


def test_box_to_cells_official_example_rows():
    # 16-cell-wide grid as in the demo: a box spanning cols 2..13 of rows 3..5 gives contiguous runs per row.
    grid = MergedGrid(10, 16)
    image_size = grid.resized_size  # boxes already in resized pixels
    cells = g.box_to_cells((2 * 28 + 5, 3 * 28 + 1, 13 * 28 + 27, 5 * 28 + 3), image_size, grid)
    assert cells == [r * 16 + c for r in (3, 4, 5) for c in range(2, 14)]
    assert cells[:2] == [50, 51]


def test_box_to_cells_rescales_from_original_image():
    # 1000x500 original -> smart_resize -> 1008 x 504 => 36 x 18 cells.
    grid = MergedGrid.for_image((1000, 500))
    assert (grid.cols, grid.rows) == (36, 18)
    cells = g.box_to_cells((0, 0, 1000, 500), (1000, 500), grid)
    assert cells == list(range(grid.num_cells))
    # Zero-width box on a boundary: no cells; zero-width inside a cell: one column.
    small = MergedGrid(4, 4)
    assert g.box_to_cells((28, 0, 28, 56), (112, 112), small) == []
    assert g.box_to_cells((30, 0, 30, 56), (112, 112), small) == [1, 5]
    # Outside the image: clipped, nothing wraps around.
    assert g.box_to_cells((-50, -50, -10, -10), (112, 112), small) == []
    assert g.box_to_cells((200, 0, 300, 10), (112, 112), small) == []
    assert g.box_to_cells((100, 100, 500, 500), (112, 112), small) == [15]


image_sizes = st.tuples(st.integers(20, 3000), st.integers(20, 3000)).filter(lambda s: max(s) / min(s) <= 50)


@st.composite
def boxes_in_image(draw):
    w, h = draw(image_sizes)
    xs = sorted(draw(st.lists(st.floats(0, w, allow_nan=False), min_size=2, max_size=2)))
    ys = sorted(draw(st.lists(st.floats(0, h, allow_nan=False), min_size=2, max_size=2)))
    if draw(st.booleans()):  # integer pixel boxes, as in v1g
        xs, ys = [math.floor(xs[0]), math.ceil(xs[1])], [math.floor(ys[0]), math.ceil(ys[1])]
    return (w, h), (xs[0], ys[0], xs[1], ys[1])


@settings(max_examples=300, deadline=None)
@given(boxes_in_image())
def test_box_cells_overlap_and_cover(data):
    size, box = data
    grid = MergedGrid.for_image(size)
    cells = g.box_to_cells(box, size, grid)
    rw, rh = grid.resized_size
    sx, sy = rw / size[0], rh / size[1]
    sbox = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)  # box in resized pixels
    eps = 1e-6
    assert len(set(cells)) == len(cells) and cells == sorted(cells)
    for k in cells:  # every cell overlaps the (closed) box
        cx0, cy0, cx1, cy1 = grid.cell_box(k)
        assert cx0 <= sbox[2] + eps and sbox[0] <= cx1 + eps and cy0 <= sbox[3] + eps and sbox[1] <= cy1 + eps
        if sbox[2] - sbox[0] > eps and sbox[3] - sbox[1] > eps:  # positive-area box: positive-area overlap
            assert min(cx1, sbox[2]) - max(cx0, sbox[0]) > -eps and min(cy1, sbox[3]) - max(cy0, sbox[1]) > -eps
    if sbox[2] - sbox[0] > eps and sbox[3] - sbox[1] > eps:
        assert cells, "a positive-area box inside the image must hit a cell"
        # cells' box contains the box, in resized pixels and in original pixels
        cb = g.cells_to_box(cells, grid)
        assert cb[0] <= sbox[0] + eps and cb[1] <= sbox[1] + eps and cb[2] >= sbox[2] - eps and cb[3] >= sbox[3] - eps
        ob = g.cells_to_box(cells, grid, size)
        assert ob[0] <= box[0] + 1e-6 and ob[1] <= box[1] + 1e-6 and ob[2] >= box[2] - 1e-6 and ob[3] >= box[3] - 1e-6
        # minimal: the cells' box is less than one cell larger on every side
        assert sbox[0] - cb[0] < 28 + eps and cb[2] - sbox[2] < 28 + eps
        assert sbox[1] - cb[1] < 28 + eps and cb[3] - sbox[3] < 28 + eps
        # the cells are a full rectangle (row-major, every row the same columns)
        rows = sorted({k // grid.cols for k in cells})
        cols = sorted({k % grid.cols for k in cells})
        assert cells == [r * grid.cols + c for r in rows for c in cols]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_cells_to_box_roundtrip_of_cell_rectangles(rows, cols, data):
    grid = MergedGrid(rows, cols)
    r0 = data.draw(st.integers(0, rows - 1))
    r1 = data.draw(st.integers(r0 + 1, rows))
    c0 = data.draw(st.integers(0, cols - 1))
    c1 = data.draw(st.integers(c0 + 1, cols))
    cells = [r * cols + c for r in range(r0, r1) for c in range(c0, c1)]
    box = g.cells_to_box(cells, grid)
    assert box == (c0 * 28, r0 * 28, c1 * 28, r1 * 28)
    assert g.box_to_cells(box, grid.resized_size, grid, exact=True) == cells


def test_official_float_artefact_adds_a_row_and_exact_mode_does_not():
    grid = MergedGrid(11, 1)
    box = (0, 0, 28, 252)  # exactly rows 0..8
    assert 252 / 308 * 308 > 252  # the float rounding the official rule inherits
    assert g.box_to_cells(box, (28, 308), grid) == list(range(10))
    assert g.box_to_cells(box, (28, 308), grid, exact=True) == list(range(9))


@settings(max_examples=300, deadline=None)
@given(boxes_in_image())
def test_exact_mode_differs_from_official_only_by_boundary_cells(data):
    size, box = data
    grid = MergedGrid.for_image(size)
    a = g.box_to_cell_rect(box, size, grid)
    b = g.box_to_cell_rect(box, size, grid, exact=True)
    assert all(abs(u - v) <= 1 for u, v in zip(a, b))


def test_cells_to_box_empty_and_out_of_range():
    grid = MergedGrid(2, 3)
    assert g.cells_to_box([], grid) is None
    with pytest.raises(IndexError):
        g.cells_to_box([6], grid)
    assert g.cells_to_box([0, 5], grid, image_size=(168, 112)) == (0.0, 0.0, 168.0, 112.0)
    assert g.cells_to_box([4], grid, image_size=(42, 28)) == (14.0, 14.0, 28.0, 28.0)


# ---------------------------------------------------------------- masks


def test_mask_to_cells_simple():
    grid = MergedGrid(4, 4)
    m = np.zeros((112, 112), np.uint8)
    assert g.mask_to_cells(m, grid) == []
    m[:] = 1
    assert g.mask_to_cells(m, grid) == list(range(16))
    m[:] = 0
    m[56:84, 28:56] = 255  # exactly cell (2, 1); the bilinear support (one cell each side, exclusive) keeps it
    cells = g.mask_to_cells(m, grid)
    assert 9 in cells
    assert set(cells) <= {4, 5, 6, 8, 9, 10, 12, 13, 14}
    with pytest.raises(ValueError):
        g.mask_to_cells(np.zeros((3,)), grid)


def test_mask_to_cells_matches_official_torch_interpolation():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    for _ in range(300):
        H, W = (int(v) for v in rng.integers(1, 100, 2))
        gh, gw = (int(v) for v in rng.integers(2, 30, 2))  # torch returns all zeros for an output side of 1
        m = np.zeros((H, W), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
            m[y0 : y0 + int(rng.integers(1, 12)), x0 : x0 + int(rng.integers(1, 12))] = 1
        t = F.interpolate(torch.from_numpy(m)[None, None], (gh, gw), mode="bilinear", antialias=True)[0, 0]
        tv = t.flatten().numpy()
        ref = set(np.nonzero(tv)[0].tolist())
        got = set(g.mask_to_cells(m, MergedGrid(gh, gw)))
        # Every disagreement is float32 rounding noise at the edge of the filter support.
        for k in ref ^ got:
            assert abs(tv[k]) < 1e-5, (H, W, gh, gw, k, tv[k])
        assert {k for k in ref if tv[k] > 1e-5} <= got


# ---------------------------------------------------------------- IoU, official trainer resize


def test_iou():
    assert g.box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert g.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert g.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert g.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


@settings(max_examples=200, deadline=None)
@given(boxes_in_image(), boxes_in_image())
def test_iou_properties(a, b):
    (_, ba), (_, bb) = a, b
    v = g.box_iou(ba, bb)
    assert 0.0 <= v <= 1.0 + 1e-12
    assert v == pytest.approx(g.box_iou(bb, ba))


def test_official_train_size():
    assert g.official_train_size((500, 400)) == (500, 400)  # small images are left to the processor
    assert g.official_train_size((672, 672)) == (672, 672)
    # 1344x1008 -> 672x504 -> vl-utils smart_resize -> (672, 504)
    assert g.official_train_size((1344, 1008)) == (672, 504)
    # 1000x700 -> 672x470 -> round(470/28)=17 -> 476
    assert g.official_train_size((1000, 700)) == (672, 476)
    # thin: 2000x30 -> 672x10 -> vl-utils keeps 28 rows (transformers would give 476x28)
    assert g.official_train_size((2000, 30)) == (672, 28)
    assert g.official_train_size((1000, 700), fixed=448) == (448, 448)
    for w, h in [(s[1], s[0]) for s in _sizes(300, seed=3) if max(s) / min(s) <= 100]:
        tw, th = g.official_train_size((w, h))
        if max(w, h) > 672:
            assert tw % 28 == 0 and th % 28 == 0 and max(tw, th) <= 672 + 14


def test_rescale_box_floor_ceil():
    assert g.rescale_box((10, 10, 20, 20), (100, 100), (50, 50)) == [5, 5, 10, 10]
    assert g.rescale_box((11, 11, 21, 21), (100, 100), (50, 50)) == [5, 5, 11, 11]
    assert g.rescale_box((1, 3, 7, 9), (10, 10), (33, 33)) == [3, 9, 24, 30]
