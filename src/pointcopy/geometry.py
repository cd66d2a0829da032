"""Image geometry for point-and-copy: resizing, merged-patch cells, boxes, masks, IoU.

Conventions used throughout (and by the processor / model code that builds on this module):

* Sizes are given the PIL way, ``image_size = (width, height)``; :func:`smart_resize` keeps the Qwen
  signature ``(height, width) -> (height, width)`` so it can be compared with transformers directly.
* Boxes are ``(x0, y0, x1, y1)`` in pixels of a stated image, ``x`` to the right, ``y`` down, half-open
  in the sense that a box ``[0, 28)`` covers exactly the first cell column.
* A **cell** is one post-merger LLM image token: a ``cell x cell`` square (28 px for Qwen2.5-VL: ViT patch 14,
  spatial merge 2) of the ``smart_resize``d image. Cell ``k = row * grid.cols + col`` (row-major, the merger's
  output order); this ``k`` is the copy slot index of ``<|copy_k|>`` for a single-image sample.

These are the primitives of one image's grid. The per-sample mapping (slot ``k`` over all images -> image, row,
col -> pixel box, box -> slots, tokens per image) is :class:`pointcopy.layout.SlotMap`, built from the backbone's
own patch and merge sizes; use it rather than these functions wherever a processor or a generation is at hand.
The ``PATCH_SIZE`` / ``MERGE_SIZE`` defaults below are Qwen2.5-VL's.

Pure Python (numpy only for masks, imported lazily); no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

PATCH_SIZE = 14
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28 px per merged cell
MIN_PIXELS = 4 * 28 * 28  # Qwen2.5-VL preprocessor / official trainer
MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200
OFFICIAL_MAX_SIDE = 672  # official trainer's longer-side cap (dataset.py max_image_size)

Box = tuple[float, float, float, float]


def _check_size(height: float, width: float) -> None:
    if not (height > 0 and width > 0):
        raise ValueError(f"image height and width must be positive, got height={height}, width={width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}"
        )


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2-VL/2.5-VL resize target, identical to transformers' ``qwen2_vl.image_processing_qwen2_vl.smart_resize``.

    Args:
        height, width: original size in pixels (> 0, aspect ratio <= 200).
        factor: both outputs are multiples of it (patch 14 x merge 2 = 28).
        min_pixels, max_pixels: bounds on ``h * w`` of the result.
    Returns:
        ``(resized_height, resized_width)``.

    Note the transformers rounding: no ``max(factor, ·)`` clamp after the first rounding (a side rounding to 0
    falls through to the ``min_pixels`` branch), but a clamp in the ``max_pixels`` branch. qwen-vl-utils and the
    official ``dataset.py`` do the opposite; see :func:`smart_resize_vl_utils`.
    """
    _check_size(height, width)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_vl_utils(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """The qwen-vl-utils variant of :func:`smart_resize`, as copied into the official trainer's ``dataset.py``.

    Differs from transformers only for very thin images: the first rounding is clamped to ``>= factor``
    (so a 10 x 672 image stays 28 x 672 here but becomes 28 x 476 in transformers) and the ``max_pixels``
    branch is not clamped. Used by :func:`official_train_size` to reproduce the official training sizes.
    """
    _check_size(height, width)
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class MergedGrid:
    """The grid of LLM image tokens (merged cells) of one image.

    Attributes:
        rows, cols: number of merged cells vertically / horizontally (``grid_h // merge``, ``grid_w // merge``).
        patch_size, merge_size: ViT patch side in px and spatial merge; one cell is ``patch_size * merge_size`` px.
    """

    rows: int
    cols: int
    patch_size: int = PATCH_SIZE
    merge_size: int = MERGE_SIZE

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f"MergedGrid needs positive rows/cols, got rows={self.rows}, cols={self.cols}")

    @property
    def cell(self) -> int:
        """Cell side in pixels of the resized image (28 for Qwen2.5-VL)."""
        return self.patch_size * self.merge_size

    @property
    def resized_size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels of the resized image the grid tiles."""
        return self.cols * self.cell, self.rows * self.cell

    @property
    def num_cells(self) -> int:
        """Number of LLM image tokens (copy slots) of this image."""
        return self.rows * self.cols

    @classmethod
    def for_image(
        cls,
        image_size: tuple[int, int],
        *,
        patch_size: int = PATCH_SIZE,
        merge_size: int = MERGE_SIZE,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
    ) -> "MergedGrid":
        """Grid the Qwen image processor produces for an image of ``image_size = (width, height)``."""
        width, height = image_size
        factor = patch_size * merge_size
        rh, rw = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return cls(rh // factor, rw // factor, patch_size, merge_size)

    @classmethod
    def from_thw(cls, thw: Sequence[int], *, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE) -> "MergedGrid":
        """Grid from one row of ``image_grid_thw`` (``t, h, w`` in ViT patches, before merging)."""
        t, h, w = (int(v) for v in thw)
        if t != 1:
            raise ValueError(f"image_grid_thw with t={t}: only still images (t == 1) are supported")
        if h % merge_size or w % merge_size:
            raise ValueError(f"image_grid_thw h={h}, w={w} not divisible by merge_size={merge_size}")
        return cls(h // merge_size, w // merge_size, patch_size, merge_size)

    def cell_box(self, k: int) -> tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)`` of cell ``k`` in the resized image."""
        row, col = self.row_col(k)
        c = self.cell
        return col * c, row * c, (col + 1) * c, (row + 1) * c

    def row_col(self, k: int) -> tuple[int, int]:
        """``(row, col)`` of cell ``k``; raises ``IndexError`` when ``k`` is not a cell of this grid."""
        if not 0 <= k < self.num_cells:
            raise IndexError(f"cell {k} out of range for a {self.rows}x{self.cols} grid ({self.num_cells} cells)")
        return divmod(k, self.cols)


def _resolve_grid(image_size: tuple[int, int], grid: MergedGrid | None) -> MergedGrid:
    return grid if grid is not None else MergedGrid.for_image(image_size)


def box_to_cell_rect(
    box: Sequence[float], image_size: tuple[int, int], grid: MergedGrid | None = None, *, exact: bool = False
) -> tuple[int, int, int, int]:
    """Half-open cell rectangle ``(col0, row0, col1, row1)`` covering ``box`` (the official rule, PAPER §3).

    The box (pixels of an image of ``image_size = (width, height)``) is rescaled to the resized image, clipped
    to it, divided by the cell size; then ``floor`` of the top-left and ``ceil`` of the bottom-right. The
    arithmetic follows the official ``get_bbox_patch_pointers`` operation by operation (scale, clip, divide by
    patch then by merge) so that float ties round the same way. ``grid`` defaults to ``MergedGrid.for_image``.
    An empty result has ``col0 >= col1`` or ``row0 >= row1``.

    Float artefact of the official rule (kept by default for bit compatibility with official sequences):
    ``x / w * resized_w`` is not exact, so a box edge on a cell boundary can land one ulp past it and gain a
    whole extra row/column — e.g. ``y1 = 252`` in a 308-px-high image that is its own resized size gives
    ``252 / 308 * 308 = 252.00000000000003`` and one more row. This happens for about 1 in 28 integer
    coordinates once images are pre-resized to multiples of 28, as the official trainer does.
    ``exact=True`` does the same computation in rational arithmetic (``fractions.Fraction``) instead.
    """
    grid = _resolve_grid(image_size, grid)
    width, height = image_size
    rw, rh = grid.resized_size
    if exact:
        return _box_to_cell_rect_exact(box, image_size, grid)
    x0, y0, x1, y1 = (float(v) for v in box)
    sx0 = max(x0 / width * rw, 0)
    sy0 = max(y0 / height * rh, 0)
    sx1 = min(x1 / width * rw, rw)
    sy1 = min(y1 / height * rh, rh)
    p, m = grid.patch_size, grid.merge_size
    return (
        math.floor(sx0 / p / m),
        math.floor(sy0 / p / m),
        math.ceil(sx1 / p / m),
        math.ceil(sy1 / p / m),
    )


def _box_to_cell_rect_exact(
    box: Sequence[float], image_size: tuple[int, int], grid: MergedGrid
) -> tuple[int, int, int, int]:
    from fractions import Fraction

    width, height = (Fraction(v) for v in image_size)
    rw, rh = (Fraction(v) for v in grid.resized_size)
    x0, y0, x1, y1 = (Fraction(v) for v in box)  # floats convert exactly
    c = grid.cell
    return (
        math.floor(max(x0 / width * rw, 0) / c),
        math.floor(max(y0 / height * rh, 0) / c),
        math.ceil(min(x1 / width * rw, rw) / c),
        math.ceil(min(y1 / height * rh, rh) / c),
    )


def box_to_cells(
    box: Sequence[float], image_size: tuple[int, int], grid: MergedGrid | None = None, *, exact: bool = False
) -> list[int]:
    """Copy slots ``k`` of every merged cell overlapping ``box``, row by row (official order).

    Args:
        box: ``(x0, y0, x1, y1)`` in pixels of the image of ``image_size``.
        image_size: ``(width, height)`` of the image the box refers to.
        grid: its merged grid (default: the Qwen processor's grid for ``image_size``).
        exact: rational instead of the official float arithmetic (see :func:`box_to_cell_rect`).
    Returns:
        ``[row * grid.cols + col for row in rows for col in cols]``; empty for a box outside the image or a
        zero-width box lying on a cell boundary.
    """
    grid = _resolve_grid(image_size, grid)
    c0, r0, c1, r1 = box_to_cell_rect(box, image_size, grid, exact=exact)
    # A box entirely left of / above the image gives negative ceil values: clamp so nothing wraps around.
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, grid.cols), min(r1, grid.rows)
    return [r * grid.cols + c for r in range(r0, r1) for c in range(c0, c1)]


def cells_to_box(
    cells: Iterable[int], grid: MergedGrid, image_size: tuple[int, int] | None = None
) -> tuple[float, float, float, float] | None:
    """Bounding box of the union of ``cells`` (min/max box, as the official demo draws it).

    Returns pixels of the resized image (ints) or, when ``image_size = (width, height)`` of the original image
    is given, of the original image (floats, scaled by ``width / resized_width``). ``None`` for no cells.
    Raises ``IndexError`` for a cell outside the grid.
    """
    boxes = [grid.cell_box(int(k)) for k in cells]
    if not boxes:
        return None
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    if image_size is None:
        return x0, y0, x1, y1
    width, height = image_size
    rw, rh = grid.resized_size
    sx, sy = width / rw, height / rh
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def _support_matrix(n_in: int, n_out: int):
    """Boolean ``(n_out, n_in)``: input pixel ``i`` has positive antialiased-bilinear weight for output ``o``.

    Antialiased bilinear (PIL, and torch with ``antialias=True``) is a triangle filter of half-width
    ``s = max(n_in / n_out, 1)`` input pixels centred at ``(o + 0.5) * n_in / n_out``; pixel ``i`` contributes iff
    ``|(i + 0.5) - centre| < s``. Multiplying by ``2 * n_out`` makes the test exact integer arithmetic.
    """
    import numpy as np

    i = np.arange(n_in, dtype=np.int64)[None, :]
    o = np.arange(n_out, dtype=np.int64)[:, None]
    return np.abs((2 * i + 1) * n_out - (2 * o + 1) * n_in) < 2 * max(n_in, n_out)


def mask_to_cells(mask, grid: MergedGrid) -> list[int]:
    """Copy slots of every cell where the mask, bilinearly resized to the grid, is nonzero (row-major).

    Args:
        mask: 2-D array-like ``(H, W)`` (rows first, any resolution covering the whole image); nonzero = inside.
        grid: merged grid of the image.
    Returns:
        Row-major cell indices.

    The official code takes ``nonzero()`` of ``F.interpolate(mask, (rows, cols), mode="bilinear",
    antialias=True)`` in float32. At the edge of the filter support that value is rounding noise (~1e-8 where
    the exact value is 0, or exactly 0 where it is ~1e-16), so torch and PIL disagree on a few percent of random
    masks. We decide "nonzero" exactly instead: a cell is taken iff some nonzero mask pixel lies strictly inside
    its bilinear filter support (both axes). This equals the official result wherever torch's value is not
    rounding noise (tested: disagreements only where torch gives < 1e-5).
    """
    import numpy as np

    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array (H, W), got shape {m.shape}")
    inside = (m != 0).astype(np.int64)  # a mask is a set; negative values must not cancel positive ones
    rows_sup = _support_matrix(m.shape[0], grid.rows).astype(np.int64)
    cols_sup = _support_matrix(m.shape[1], grid.cols).astype(np.int64)
    hits = rows_sup @ inside @ cols_sup.T  # (rows, cols): count of contributing nonzero pixels
    rr, cc = np.nonzero(hits > 0)
    return [int(r) * grid.cols + int(c) for r, c in zip(rr, cc)]


def box_area(box: Sequence[float]) -> float:
    """Area of ``(x0, y0, x1, y1)``; 0 for an empty or inverted box."""
    x0, y0, x1, y1 = box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes in the same coordinates; 0.0 when the union is empty."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def normalize_box(box: Sequence[float], image_size: tuple[int, int]) -> Box:
    """``(x0/w, y0/h, x1/w, y1/h)`` — the official ``normalize_bbox`` before formatting (no clipping)."""
    width, height = image_size
    x0, y0, x1, y1 = box
    return x0 / width, y0 / height, x1 / width, y1 / height


def official_train_size(
    image_size: tuple[int, int], max_side: int = OFFICIAL_MAX_SIDE, fixed: int | None = None
) -> tuple[int, int]:
    """Image size the official trainer feeds the processor (``V1GDataset.resize_image``).

    If a side exceeds ``max_side``: scale by ``min(max_side / w, max_side / h)``, truncate to int, then
    qwen-vl-utils ``smart_resize``; otherwise keep the size (the processor's own smart_resize happens later).
    ``fixed`` reproduces ``fix_image_size`` (square ``fixed x fixed``). Returns ``(width, height)``.
    """
    if fixed is not None:
        return fixed, fixed
    width, height = image_size
    if width > max_side or height > max_side:
        scale = min(max_side / width, max_side / height)
        width, height = int(width * scale), int(height * scale)
        height, width = smart_resize_vl_utils(height, width)
    return width, height


def rescale_box(box: Sequence[float], old_size: tuple[int, int], new_size: tuple[int, int]) -> list[int]:
    """Official trainer box rescale: floor of the top-left, ceil of the bottom-right (``resize_bbox``).

    ``old_size``/``new_size`` are ``(width, height)``. The result always contains the scaled box.
    """
    x0, y0, x1, y1 = box
    return [
        math.floor(x0 * new_size[0] / old_size[0]),
        math.floor(y0 * new_size[1] / old_size[1]),
        math.ceil(x1 * new_size[0] / old_size[0]),
        math.ceil(y1 * new_size[1] / old_size[1]),
    ]
