"""`GroundedAnswer`: a generated trace made inspectable — which regions were copied, where, and the answer.

    decoded text (pointers as <|copy_k|>) --trace.parse_lenient--> regions in text order
    slot k --SlotMap (the sample's vision layout, from the processor)--> (image i, row, col) --> pixel box in the
    original image; a region's box = union of *all* its copied cells on its image

Model text can be cut off or malformed; parsing is lenient and every problem is kept in `problems`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import trace
from .layout import SlotMap

ANSWER_RE = re.compile(r"Answer:\s*([^\n<]+)")


@dataclass
class GroundedRegion:
    """One `<region>` occurrence: the object it belongs to, the detect query around it, what it copied."""

    obj_id: int | None
    query: str | None
    slots: tuple[int, ...]
    cells: list[tuple[int, int, int]]  # (image, row, col) per valid slot
    image: int | None  # image of the first cell
    box: tuple[float, float, float, float] | None  # union of all copied cells on `image`, original-image pixels
    box_text: tuple[float, float, float, float] | None  # the normalised box the model wrote
    invalid_slots: tuple[int, ...] = ()  # slots beyond the sample's image tokens
    cell_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # per cell, original px


@dataclass
class GroundedAnswer:
    text: str
    regions: list[GroundedRegion]
    answer: str | None
    problems: list[str] = field(default_factory=list)
    slot_map: SlotMap = field(default_factory=SlotMap.empty)  # the layout every slot was located on

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
    def from_text(cls, text: str, slot_map: SlotMap) -> "GroundedAnswer":
        """Parse `text` and locate its pointers on `slot_map`, the layout of the sample's images
        (`Generation.slot_map`, `PointCopyProcessor.slot_map`); boxes are in its original-image pixels."""
        if not isinstance(slot_map, SlotMap):
            raise TypeError(f"slot_map must be a SlotMap (Generation.slot_map / processor.slot_map), "
                            f"got {type(slot_map).__name__}")
        parsed = trace.parse_lenient(text)
        declared = {o.obj_id: o.query for o in parsed.objects}

        def make(obj_id, query, region) -> GroundedRegion:
            valid = [s for s in region.copy_ids if s in slot_map]
            invalid = tuple(s for s in region.copy_ids if s not in slot_map)
            cells = [slot_map.locate(s) for s in valid]
            cell_boxes = [slot_map.slot_box(s) for s in valid]
            box = image = None
            if cells:
                image = cells[0][0]
                box = slot_map.union_box([s for s, (i, _, _) in zip(valid, cells) if i == image])
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
        return cls(text, regions, answers[-1].strip() if answers else None, [str(p) for p in parsed.problems],
                   slot_map)
