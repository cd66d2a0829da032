"""The vision layout of one sample (`SlotMap`): copy slot ``k`` <-> (image, row, col) <-> pixel box.

A pointer ``<|copy_k|>`` points at the sample's ``k``-th LLM image token, counted over all its images in order
(DESIGN.md, "pointer ids are virtual"). Which image token that is, where it lies in the picture and which tokens
a box covers are facts of the *backbone's* vision layout; this module is their one home, and collate, inference,
the grounded-answer parser, the demo and the metrics use a :class:`SlotMap` instead of recomputing them.

The layout implemented here is the Qwen2-VL family's (Qwen2-VL, Qwen2.5-VL, and Qwen3-VL with its own sizes):

    image (width, height) --smart_resize(factor = patch * merge)--> rows x cols merged cells of patch*merge px
    slots of image i:  offsets[i] + row * cols + col   (row-major: the vision merger's output order)
    box -> slots:      the official ``get_bbox_patch_pointers`` rule (``geometry.box_to_cells``)

The patch and merge sizes are never defaulted here: they come from the backbone (the processor's own image
processor, see ``PointCopyProcessor.slot_map``; the model config for token counts). Data defined without a
processor at hand (the official v1g records, the shapes world) states its layout with ``**QWEN2_5_VL``.

Pure Python (numpy only for masks, imported lazily); no torch.
"""

from __future__ import annotations

import bisect
import operator
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

from . import geometry
from .geometry import Box, MergedGrid

__all__ = ["QWEN2_5_VL", "SlotMap", "tokens_per_image"]

# Qwen2.5-VL's vision geometry (ViT patch 14 px, 2x2 spatial merge): the layout the official v1 data and the
# shapes world are written for. Spelled out at every use (``SlotMap.for_images(sizes, **QWEN2_5_VL)``) so that a
# second backbone finds each place that assumes it.
QWEN2_5_VL = {"patch_size": geometry.PATCH_SIZE, "merge_size": geometry.MERGE_SIZE}


def _rows(image_grid_thw) -> list[list[int]]:
    rows = image_grid_thw.tolist() if hasattr(image_grid_thw, "tolist") else image_grid_thw
    return [[int(v) for v in row] for row in rows]


def tokens_per_image(image_grid_thw, *, merge_size: int) -> list[int]:
    """LLM image tokens of each image: ``image_grid_thw`` (n_images, 3) rows ``(t, h, w)`` in ViT patches ->
    ``[(h // merge) * (w // merge), ...]``. Raises ``ValueError`` for a video grid (``t != 1``) or a side not
    divisible by ``merge_size``. The model adapter uses this (it sees grids, not image sizes)."""
    return [MergedGrid.from_thw(row, patch_size=1, merge_size=merge_size).num_cells for row in _rows(image_grid_thw)]


@dataclass(frozen=True)
class SlotMap:
    """Where every copy slot of one sample lies: its images' merged-cell grids and original sizes.

    Attributes:
        grids: ``grids[i]`` is image ``i``'s grid of merged cells (rows, cols, patch and merge size).
        image_sizes: ``image_sizes[i] = (width, height)`` of image ``i`` *as given to the processor* (the
            "original" image; the vision tower sees it smart-resized to ``grids[i].resized_size``). Every pixel
            box a SlotMap takes or returns is in these coordinates.

    Slots are numbered ``0 .. num_slots - 1`` over all images in order; image ``i`` owns
    ``range(offsets[i], offsets[i] + tokens_per_image[i])``, row-major within the image.
    Build one with :meth:`from_grid_thw` (from the processor's output) or :meth:`for_images` (from sizes alone).
    """

    grids: tuple[MergedGrid, ...]
    image_sizes: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "grids", tuple(self.grids))
        object.__setattr__(self, "image_sizes", tuple((int(w), int(h)) for w, h in self.image_sizes))
        if len(self.grids) != len(self.image_sizes):
            raise ValueError(f"SlotMap: {len(self.grids)} grids but {len(self.image_sizes)} image sizes")
        for i, (w, h) in enumerate(self.image_sizes):
            if w <= 0 or h <= 0:
                raise ValueError(f"SlotMap: image {i} has size {w}x{h}; width and height must be positive")

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_grid_thw(cls, image_grid_thw, image_sizes: Sequence[tuple[int, int]], *, patch_size: int,
                      merge_size: int) -> "SlotMap":
        """The layout of one sample from the image processor's output.

        Args:
            image_grid_thw: the sample's rows of ``image_grid_thw`` (tensor or nested list, shape (n_images, 3):
                ``t, h, w`` in ViT patches before merging).
            image_sizes: ``(width, height)`` of each image as given to the image processor.
            patch_size, merge_size: the image processor's ViT patch side (px) and spatial merge.
        """
        rows = _rows(image_grid_thw)
        grids = tuple(MergedGrid.from_thw(r, patch_size=patch_size, merge_size=merge_size) for r in rows)
        return cls(grids, tuple(image_sizes))

    @classmethod
    def for_images(cls, image_sizes: Sequence[tuple[int, int]], *, patch_size: int, merge_size: int,
                   min_pixels: int = geometry.MIN_PIXELS, max_pixels: int = geometry.MAX_PIXELS) -> "SlotMap":
        """The layout the Qwen image processor gives images of ``image_sizes = [(width, height), ...]``
        (``smart_resize`` with ``factor = patch_size * merge_size`` and the pixel bounds)."""
        grids = tuple(MergedGrid.for_image(s, patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels,
                                           max_pixels=max_pixels) for s in image_sizes)
        return cls(grids, tuple(image_sizes))

    @classmethod
    def empty(cls) -> "SlotMap":
        """A sample without images (no slots)."""
        return cls((), ())

    # ---- counts ----------------------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self.grids)

    @cached_property
    def tokens_per_image(self) -> tuple[int, ...]:
        """LLM image tokens (= slots) of each image."""
        return tuple(g.num_cells for g in self.grids)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """First slot of each image: ``offsets[i] = sum(tokens_per_image[:i])``."""
        out, total = [], 0
        for n in self.tokens_per_image:
            out.append(total)
            total += n
        return tuple(out)

    @property
    def num_slots(self) -> int:
        """Number of copy slots of the sample (all its image tokens)."""
        return sum(self.tokens_per_image)

    def __len__(self) -> int:
        return self.num_slots

    def __contains__(self, slot: object) -> bool:
        try:
            return 0 <= operator.index(slot) < self.num_slots
        except TypeError:
            return False

    def image_slots(self, image: int) -> range:
        """The slots of image ``image``."""
        self._check_image(image)
        return range(self.offsets[image], self.offsets[image] + self.tokens_per_image[image])

    # ---- slot -> place ---------------------------------------------------------------------------------------
    def locate(self, slot: int) -> tuple[int, int, int]:
        """``(image, row, col)`` of ``slot``; ``IndexError`` if the sample has no such slot."""
        if slot not in self:
            raise IndexError(f"slot {slot} out of range: the sample has {self.num_slots} image tokens "
                             f"(tokens per image {list(self.tokens_per_image)})")
        slot = operator.index(slot)
        image = bisect.bisect_right(self.offsets, slot) - 1  # every image has >= 1 cell: offsets increase
        row, col = self.grids[image].row_col(slot - self.offsets[image])
        return image, row, col

    def slot(self, image: int, row: int, col: int) -> int:
        """Inverse of :meth:`locate`; ``IndexError`` for a cell outside image ``image``'s grid."""
        self._check_image(image)
        g = self.grids[image]
        if not (0 <= row < g.rows and 0 <= col < g.cols):
            raise IndexError(f"cell (row {row}, col {col}) outside image {image}'s {g.rows}x{g.cols} grid")
        return self.offsets[image] + row * g.cols + col

    def slot_box(self, slot: int) -> Box:
        """Pixel box ``(x0, y0, x1, y1)`` of ``slot``'s cell in its original image (floats)."""
        image, row, col = self.locate(slot)
        g = self.grids[image]
        return geometry.cells_to_box([row * g.cols + col], g, self.image_sizes[image])

    def union_box(self, slots: Iterable[int]) -> Box | None:
        """Bounding box of the union of *all* ``slots`` (the box an object's copied cells outline), in pixels of
        their original image; ``None`` for no slots. ``ValueError`` if the slots lie on different images,
        ``IndexError`` for a slot the sample does not have."""
        located = [self.locate(int(s)) for s in slots]
        if not located:
            return None
        images = sorted({i for i, _, _ in located})
        if len(images) > 1:
            raise ValueError(f"slots lie on images {images}; a box is in one image's pixels")
        image = images[0]
        g = self.grids[image]
        return geometry.cells_to_box([r * g.cols + c for _, r, c in located], g, self.image_sizes[image])

    # ---- place -> slots --------------------------------------------------------------------------------------
    def box_to_slots(self, box: Sequence[float], image: int = 0, *, exact: bool = False) -> list[int]:
        """Slots of every cell of image ``image`` that ``box`` (original pixels of that image) overlaps, row by
        row: the official Qwen2.5-VL rule (``geometry.box_to_cells``, float arithmetic unless ``exact``) plus
        the image's offset. Empty for a box outside the image or a zero-width box on a cell boundary."""
        self._check_image(image)
        cells = geometry.box_to_cells(box, self.image_sizes[image], self.grids[image], exact=exact)
        return [self.offsets[image] + k for k in cells]

    def _check_image(self, image: int) -> None:
        if not 0 <= image < self.num_images:
            raise IndexError(f"image {image} out of range: the sample has {self.num_images} images")
