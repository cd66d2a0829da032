"""The v1g pipeline's input: text-only reasoning traces, one JSONL record a line, read with per-record errors.

    {"id": "chart-17", "image": "images/chart-17.png", "question": "...", "reasoning": "...", "answer": "42",
     "objects": [{"description": "the red bar for 2019", "box": [x0, y0, x1, y1]}]}

* ``id`` (str or int, unique), ``image`` (a path; relative paths are relative to the file's folder) or ``images``
  (a list: v1g records hold one image, so the pipeline drops records with more), ``question`` and ``reasoning``
  (non-empty strings) are required; ``answer`` is optional (shown to the decomposer so it keeps it).
* ``objects`` (optional) are ground-truth boxes in pixels of the image, never used to build boxes: the report
  scores the grounder's boxes against them (IoU), matched to a decomposed object by its description.
* everything else is kept as ``meta`` and carried to the pipeline's per-stage files.

A bad record (a line that is not JSON, a missing or empty field, a missing or unreadable image, an id seen before)
becomes an :class:`InputError` in its place; a run records it and goes on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["SourceRecord", "InputError", "read_inputs", "shapes_inputs", "write_inputs"]

_KNOWN = ("id", "image", "images", "question", "reasoning", "answer", "objects")


@dataclass
class SourceRecord:
    """One text-only trace to ground. ``objects``: optional ground truth [{"description", "box"}]."""

    id: str
    images: list[str]
    question: str
    reasoning: str
    answer: str | None = None
    objects: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    index: int = 0  # position among the file's records (the order every output keeps)

    def gt_box(self, description: str) -> tuple[float, float, float, float] | None:
        """The ground-truth box of the object with this description, if exactly one has it."""
        hits = [o["box"] for o in self.objects if _norm(o.get("description", "")) == _norm(description)]
        return tuple(float(v) for v in hits[0]) if len(hits) == 1 else None


class InputError(ValueError):
    """A record that cannot enter the pipeline: ``record_id``, ``field``, ``reason`` (and its ``index``)."""

    def __init__(self, record_id: Any, field_: str, reason: str, index: int = 0):
        self.record_id, self.field, self.reason, self.index = str(record_id), field_, reason, index
        super().__init__(f"record {self.record_id!r}: field {field_!r}: {reason}")


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def _text(row: dict, name: str, rid: str, index: int, required: bool = True) -> str | None:
    value = row.get(name)
    if value is None and not required:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "answer":
        return str(value)
    if not isinstance(value, str) or (required and not value.strip()):
        what = "missing" if value is None else "empty" if isinstance(value, str) else f"a {type(value).__name__}"
        raise InputError(rid, name, f"must be a non-empty string, got {what}", index)
    return value


def _image_ok(path: Path, rid: str, index: int) -> None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(rid, "image", f"no such file: {path}", index)
    try:
        with Image.open(path) as im:  # header only: cheap, and catches a file that is not an image
            im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InputError(rid, "image", f"unreadable image {path}: {e}", index) from None


def _record(row: Any, base: Path, index: int, check_images: bool) -> SourceRecord:
    if not isinstance(row, dict):
        raise InputError(f"#{index}", "<row>", f"a record must be a JSON object, got {type(row).__name__}", index)
    rid = row.get("id")
    if rid is None or isinstance(rid, (bool, dict, list)) or not str(rid).strip():
        raise InputError(f"#{index}", "id", "missing or not a string/int", index)
    rid = str(rid)
    images = row.get("images", [row["image"]] if "image" in row else None)
    if isinstance(images, str):
        images = [images]
    if not images or not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise InputError(rid, "image", "needs 'image' (a path) or 'images' (a list of paths)", index)
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in images]
    if check_images:
        for p in paths:
            _image_ok(p, rid, index)
    objects = row.get("objects") or []
    if not isinstance(objects, list) or not all(
            isinstance(o, dict) and isinstance(o.get("description"), str) and isinstance(o.get("box"), list)
            and len(o["box"]) == 4 for o in objects):
        raise InputError(rid, "objects", "ground truth must be a list of {'description': str, 'box': [4 numbers]}",
                         index)
    return SourceRecord(rid, [str(p) for p in paths], _text(row, "question", rid, index),
                        _text(row, "reasoning", rid, index), _text(row, "answer", rid, index, required=False),
                        objects, {k: v for k, v in row.items() if k not in _KNOWN}, index)


def read_inputs(path: str | Path, *, check_images: bool = True) -> list[SourceRecord | InputError]:
    """Every record of a JSONL file, in order; a bad one is an :class:`InputError` in its place. A later record
    with an id seen before is an error (the first keeps the id)."""
    path = Path(path)
    out: list[SourceRecord | InputError] = []
    first: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        index = 0
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"line{lineno}", "<line>", f"line {lineno} is not JSON: {e}", index) from None
                rec = _record(row, path.parent, index, check_images)
                if rec.id in first:
                    raise InputError(rec.id, "id", f"duplicate id (first used by record #{first[rec.id]})", index)
                first[rec.id] = index
                out.append(rec)
            except InputError as e:
                out.append(e)
            index += 1
    return out


def shapes_inputs(split: str | Path, limit: int | None = None) -> Iterable[dict]:
    """Pipeline input rows of a shapes split (`pointcopy shapes data`): the question, its *text-only* reasoning
    (``data.shapes.traces.text_only``: no detect calls, no regions, no boxes) and the answer; the objects'
    boxes ride along only as ground truth for the report's IoU. Image paths are absolute."""
    from ..data.shapes.build import read_items
    from ..data.shapes.scene import Scene
    from ..data.shapes.traces import describe, text_only

    split = Path(split).resolve()
    traces = {}
    with (split / "copy.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            traces[row["id"]] = row["conversations"][1]["value"]
    for row in read_items(split)[:limit]:
        scene = Scene.from_dict(row["scene"])
        yield {"id": row["id"], "image": str(split / "images" / f"{row['id']}.png"), "question": row["question"],
               "reasoning": text_only(traces[row["id"]], scene), "answer": row["answer"],
               "objects": [{"description": describe(o), "box": list(o.box)} for o in scene.objects]}


def write_inputs(rows: Iterable[dict], path: str | Path) -> int:
    """Write input rows as JSONL (image paths made relative to the file's folder when they lie below it)."""
    from ..files import dumps, write_atomic

    path = Path(path)
    lines = []
    for row in rows:
        row = dict(row)
        p = Path(row["image"]).resolve()
        try:
            row["image"] = os.path.relpath(p, path.parent.resolve()) if p.is_relative_to(path.parent.resolve()) \
                else str(p)
        except ValueError:
            row["image"] = str(p)
        lines.append(dumps(row))
    write_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)
