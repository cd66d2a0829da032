"""What an analysis looks at: items with image(s), a question and the boxes of what matters, from three sources.

    shapes split dir  (items.jsonl + images/ + copy.jsonl, `pointcopy shapes data`): boxes = the objects the
                      question's steps select; truth = the ground-truth row (scoring, attributes); record = the
                      item's grounded `copy` trace (teacher forcing)
    v1g file          (.jsonl / .json / .parquet, `data.v1g`): boxes = every region the trace names; record = it
    simple JSONL      one object per line: {"id", "image": path (or "images": [paths]), "question" (or
                      "expression", asked as "Describe <expression>."), "box": [x0, y0, x1, y1] pixels (or
                      "boxes": [[...], ...] or [[image_index, [...]], ...]), optional "answer", optional "trace"}:
                      the paper's RefCOCO-style setting

An item that cannot be analysed (a box outside its image, an unreadable image, a missing field) is an
`ItemError` naming the item and field; `load_items` returns those beside the good items, so a run records them and
goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..images import open_rgb, to_rgb

__all__ = ["AnalysisItem", "ItemError", "load_items", "check_box"]

# a box may overhang its image by this many pixels (rounding of the source's coordinates) and is clamped
BOX_TOLERANCE = 1.0


class ItemError(ValueError):
    """An item that cannot be analysed: `item_id`, `field`, `reason`."""

    def __init__(self, item_id: Any, field: str, reason: str):
        self.item_id, self.field, self.reason = item_id, field, reason
        super().__init__(f"item {item_id!r}: field {field!r}: {reason}")

    def to_dict(self) -> dict:
        return {"id": self.item_id, "field": self.field, "reason": self.reason}


@dataclass
class AnalysisItem:
    """One analysed item. `boxes` are (image index, pixel box in that original image) of what matters."""

    id: str
    question: str
    boxes: list[tuple[int, tuple[float, float, float, float]]]
    image_sources: list[Any]  # paths, encoded bytes or PIL images, one per image
    record: Any = None  # a V1GRecord with the item's grounded trace (teacher forcing on the given trace)
    trace: str | None = None  # a given trace as model text (`<|copy_k|>` pointers allowed), without a record
    answer: str | None = None
    truth: dict | None = None  # shapes world: the ground-truth row (`data.shapes.build.item_row`)
    scorer: Callable[[str, Any], bool | None] | None = field(default=None, repr=False)

    def images(self) -> list:
        """The item's images, decoded, RGB. Raises ItemError (field "image") when one cannot be read."""
        from io import BytesIO

        from PIL import Image

        out = []
        for i, src in enumerate(self.image_sources):
            try:
                if isinstance(src, (str, Path)):
                    out.append(open_rgb(src))
                elif isinstance(src, (bytes, bytearray)):
                    with Image.open(BytesIO(src)) as im:
                        im.load()
                        out.append(to_rgb(im))
                else:
                    out.append(to_rgb(src))
            except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for damaged files
                raise ItemError(self.id, "image", f"image {i}: cannot read {_describe(src)}: "
                                                  f"{type(e).__name__}: {e}") from e
        return out

    def correct(self, text: str, slot_map=None) -> bool | None:
        """Whether a generated trace answers right (None: the item has no answer to check)."""
        return self.scorer(text, slot_map) if self.scorer is not None else None


def _describe(src) -> str:
    return str(src) if isinstance(src, (str, Path)) else type(src).__name__


def check_box(item_id, box, size: tuple[int, int], where: str = "box") -> tuple[float, float, float, float]:
    """A pixel box inside a (width, height) image (clamped within BOX_TOLERANCE), else ItemError."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ItemError(item_id, where, f"expected [x0, y0, x1, y1] pixels, got {box!r}") from None
    w, h = size
    t = BOX_TOLERANCE
    if not (x0 < x1 and y0 < y1):
        raise ItemError(item_id, where, f"{[x0, y0, x1, y1]} is empty (needs x0 < x1 and y0 < y1)")
    if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
        raise ItemError(item_id, where, f"{[x0, y0, x1, y1]} falls outside the {w}x{h} image")
    return max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)


def load_items(source: str | Path, limit: int | None = None) -> tuple[list[AnalysisItem], list[ItemError]]:
    """Items of `source` (see the module docstring) in file order, and the errors of those that cannot be used."""
    path = Path(source)
    if path.is_dir() and (path / "items.jsonl").is_file():
        return _shapes_items(path, limit)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such items file or shapes split directory")
    if path.suffix == ".jsonl" and _is_simple(path):
        return _simple_items(path, limit)
    return _v1g_items(path, limit)


# ---- shapes split -------------------------------------------------------------------------------------------
def _shapes_items(split: Path, limit: int | None):
    from ..data.shapes.build import read_items
    from ..data.v1g import read_v1g
    from ..eval.shapes import score_item

    rows = read_items(split)[: limit or None]
    records = {}
    if (split / "copy.jsonl").is_file():
        records = {r.id: r for r in read_v1g(split / "copy.jsonl").records}
    items, errors = [], []
    for row in rows:
        try:
            scene = row["scene"]
            size = (scene["width"], scene["height"])
            objects = {o["id"]: o for o in scene["objects"]}
            relevant = sorted({i for step in row["steps"] for i in step["objects"]})
            boxes = [(0, check_box(row["id"], objects[i]["box"], size, f"scene.objects[{i}].box")) for i in relevant]
            image = split / "images" / f"{row['id']}.png"
            if not image.is_file():
                raise ItemError(row["id"], "image", f"{image} does not exist")
        except ItemError as e:
            errors.append(e)
            continue
        except (KeyError, TypeError) as e:
            errors.append(ItemError(row.get("id"), str(e), "missing or malformed field in items.jsonl"))
            continue
        items.append(AnalysisItem(row["id"], row["question"], boxes, [image], record=records.get(row["id"]),
                                  answer=str(row["answer"]), truth=row,
                                  scorer=lambda text, slot_map, row=row: score_item(text, row, slot_map)["correct"]))
    return items, errors


# ---- v1g records --------------------------------------------------------------------------------------------
def _v1g_items(path: Path, limit: int | None):
    from ..data.v1g import read_v1g

    result = read_v1g(path, require_object_regions=False)
    errors = [ItemError(b.id if b.id is not None else f"#{b.index}", b.field, b.reason) for b in result.bad]
    items = []
    for rec in result.records[: limit or None]:
        try:
            boxes = [(0, check_box(rec.id, box, rec.image_size, f"regions[{key!r}]"))
                     for key, box in rec.regions.items()]
        except ItemError as e:
            errors.append(e)
            continue
        items.append(AnalysisItem(str(rec.id), rec.question, boxes, [rec.image], record=rec))
    return items, errors


# ---- simple JSONL ---------------------------------------------------------------------------------------------
def _is_simple(path: Path) -> bool:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(row, dict) and "conversations" not in row and (
                    "box" in row or "boxes" in row)
    return False


def _simple_items(path: Path, limit: int | None):
    from PIL import Image

    items, errors = [], []
    with path.open(encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    for n, line in enumerate(lines[: limit or None]):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(ItemError(f"line {n + 1}", "<row>", f"not JSON: {e}"))
            continue
        rid = str(row.get("id", f"line {n + 1}"))
        try:
            paths = row.get("images") or ([row["image"]] if "image" in row else None)
            if not paths:
                raise ItemError(rid, "image", "no image (give \"image\": path or \"images\": [paths])")
            paths = [p if Path(p).is_absolute() else path.parent / p for p in paths]
            sizes = []
            for i, p in enumerate(paths):
                try:
                    with Image.open(p) as im:
                        sizes.append(im.size)
                except Exception as e:
                    raise ItemError(rid, "image", f"image {i}: cannot open {p}: {type(e).__name__}: {e}") from e
            question = row.get("question") or (f"Describe {row['expression']}." if row.get("expression") else None)
            if not question:
                raise ItemError(rid, "question", "no \"question\" or \"expression\"")
            raw = row.get("boxes") if "boxes" in row else [row.get("box")]
            boxes = []
            for j, b in enumerate(raw or []):
                image_index, box = (b[0], b[1]) if isinstance(b, (list, tuple)) and len(b) == 2 else (0, b)
                if not isinstance(image_index, int) or not 0 <= image_index < len(paths):
                    raise ItemError(rid, f"boxes[{j}]", f"image index {image_index!r} but the item has "
                                                        f"{len(paths)} image(s)")
                boxes.append((image_index, check_box(rid, box, sizes[image_index], f"boxes[{j}]")))
            if not boxes:
                raise ItemError(rid, "box", "no box")
        except ItemError as e:
            errors.append(e)
            continue
        answer = row.get("answer")
        items.append(AnalysisItem(rid, question, boxes, paths, trace=row.get("trace"),
                                  answer=None if answer is None else str(answer),
                                  scorer=None if answer is None else _answer_scorer(str(answer))))
    return items, errors


def _answer_scorer(gold: str):
    """Right when the trace's final answer (`Answer: X`, else the last `\\boxed{X}`) equals `gold`, ignoring case,
    surrounding space and a final period."""
    from ..eval.strict import last_boxed

    def norm(s: str) -> str:
        return s.strip().rstrip(".").strip().lower()

    def score(text: str, slot_map=None) -> bool:
        found = [line.split("Answer:", 1)[1] for line in text.splitlines() if "Answer:" in line]
        pred = found[-1] if found else last_boxed(text)
        return pred is not None and norm(pred) == norm(gold)

    return score
