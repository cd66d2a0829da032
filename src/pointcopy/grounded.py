"""`GroundedAnswer`: a generated trace made inspectable — which regions were copied, where, and the answer.

    decoded text (pointers as <|copy_k|>) --trace.parse_lenient--> regions in text order
    slot k --> (image i, row, col) on image i's merged grid --> pixel box in the original image

Model text can be cut off or malformed; parsing is lenient and every problem is kept in `problems`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import geometry, trace
from .geometry import MergedGrid

ANSWER_RE = re.compile(r"Answer:\s*([^\n<]+)")


@dataclass
class GroundedRegion:
    """One `<region>` occurrence: the object it belongs to, the detect query around it, what it copied."""

    obj_id: int | None
    query: str | None
    slots: tuple[int, ...]
    cells: list[tuple[int, int, int]]  # (image, row, col) per valid slot
    image: int | None  # image of the first cell
    box: tuple[float, float, float, float] | None  # union of the copied cells, original-image pixels
    box_text: tuple[float, float, float, float] | None  # the normalised box the model wrote
    invalid_slots: tuple[int, ...] = ()  # slots beyond the sample's image tokens
    cell_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # per cell, original px


@dataclass
class GroundedAnswer:
    text: str
    regions: list[GroundedRegion]
    answer: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def objects(self) -> list[GroundedRegion]:
        """First region of every object id (plus regions without an object), in text order."""
        seen, out = set(), []
        for r in self.regions:
            if r.obj_id is None or r.obj_id not in seen:
                out.append(r)
                seen.add(r.obj_id)
        return out

    @classmethod
    def from_text(cls, text: str, grids: list[MergedGrid], image_sizes: list[tuple[int, int]]) -> "GroundedAnswer":
        """`grids[i]` / `image_sizes[i]` (width, height) describe the sample's images in order."""
        if len(grids) != len(image_sizes):
            raise ValueError(f"{len(grids)} grids but {len(image_sizes)} image sizes")
        parsed = trace.parse_lenient(text)
        declared = {o.obj_id: o.query for o in parsed.objects}
        offsets, total = [], 0
        for g in grids:
            offsets.append(total)
            total += g.num_cells

        def locate(slot: int):
            for i in range(len(grids) - 1, -1, -1):
                if slot >= offsets[i]:
                    k = slot - offsets[i]
                    return (i, *grids[i].row_col(k)) if k < grids[i].num_cells else None
            return None

        def make(obj_id, query, region) -> GroundedRegion:
            located = [(s, locate(s)) for s in region.copy_ids]
            cells = [c for _, c in located if c is not None]
            invalid = tuple(s for s, c in located if c is None)
            box = image = None
            cell_boxes = [geometry.cells_to_box([r * grids[i].cols + c], grids[i], image_sizes[i]) for i, r, c in cells]
            if cells:
                image = cells[0][0]
                same = [r * grids[image].cols + c for i, r, c in cells if i == image]
                box = geometry.cells_to_box(same, grids[image], image_sizes[image])
            return GroundedRegion(obj_id, query, region.copy_ids, cells, image, box, region.box, invalid, cell_boxes)

        regions: list[GroundedRegion] = []
        nodes = parsed.nodes
        for idx, node in enumerate(nodes):
            if isinstance(node, trace.Detect):
                for entry in node.objects:
                    if entry.region is not None:
                        obj = entry.ref.obj_id if entry.ref is not None else None
                        regions.append(make(obj, node.query, entry.region))
            elif isinstance(node, trace.Region):
                prev = nodes[idx - 1] if idx else None
                obj = prev.obj_id if isinstance(prev, trace.ObjectRef) else None
                regions.append(make(obj, declared.get(obj), node))
        answers = ANSWER_RE.findall(text)
        return cls(text, regions, answers[-1].strip() if answers else None, [str(p) for p in parsed.problems])
