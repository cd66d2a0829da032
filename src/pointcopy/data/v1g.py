"""v1g records (PAPER.md §4.2): read, validate, write, and the official region-key expansion.

Released layout, one record per row::

    id             sample id (int or str; kept as given)
    image          the image: a path (JSON/JSONL, relative to the file), {"bytes": ..., "path": ...}
                   (parquet / HF datasets storage) or a PIL image (a decoded ``datasets.Dataset`` row)
    conversations  exactly two turns [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": trace}]
    regions        JSON *string* {key: [x1, y1, x2, y2]} in pixels of the original image
    image_size     [w, h] of the original image
    num_tokens     optional int (undocumented upstream; a token count used for length grouping)

What validation checks (each error names the record id and the field):

* ``id``, ``image``, ``conversations``, ``regions``, ``image_size`` present and not null; ``num_tokens`` optional,
  a non-negative int if present.
* two turns, roles human then gpt, string values, human value starting with ``"<image>\\n"``, non-empty trace.
* ``image_size`` two positive ints; ``regions`` a JSON object of 4 finite numbers per key, each box not inverted
  (``x1 <= x2`` and ``y1 <= y2``) and inside the image (``0 <= x1``, ``x2 <= w``, same for y). A zero-area box
  (``x1 == x2`` or ``y1 == y2``) is valid if it touches a cell (it gets the cells it touches, as in the official
  box -> cell rule); one lying on a cell boundary touches none and is rejected.
* **clamping** (:func:`clamp_regions`, on by default when reading): like the official box -> cell rule, which
  clips boxes to the image, a box at most ``max(2 px, 1% of the side)`` past an edge (small negative
  coordinates, one pixel past the right edge) is clamped to the image and the record kept; the clamp is noted
  on the record (``V1GRecord.clamped``). A box further out is rejected, naming the record, field and key.
* every region key occurs in the assistant text (the official processor asserts this).
* **object mentions**: every ``<objN>`` tag in the assistant text must be covered by a region, i.e. some region
  key contains the substring ``<objN>`` (``"<obj1>"`` does not match inside ``"<obj10>"``). Tags in prose and in
  ``detect`` calls count alike. Switch off with ``require_object_regions=False`` for data whose keys are not
  built from the ``<objN>`` tags.
* ``check_trace``: after the official expansion the trace parses strictly (balanced quotes/brackets, boxes,
  unique object ids, copy ids within the image's token count).
* ``check_image``: the image exists, its header reads as a known format, and its size equals ``image_size``
  (header only: PIL decodes no pixels, so this is cheap; a file truncated after its header passes and fails
  later, when it is decoded).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pointcopy import geometry
from pointcopy.layout import QWEN2_5_VL, SlotMap
from pointcopy.jsonl import drop_partial_last_line
from pointcopy.trace import Region, TraceSyntaxError, parse, render

__all__ = [
    "IMAGE_PREFIX",
    "V1GError",
    "V1GRecord",
    "BadRecord",
    "ReadResult",
    "record_from_row",
    "validation_errors",
    "validate_record",
    "clamp_regions",
    "image_header_size",
    "iter_v1g",
    "check_row",
    "read_v1g",
    "write_v1g",
    "default_slot_map",
    "expand_regions",
    "training_view",
]

IMAGE_PREFIX = "<image>\n"
REQUIRED_FIELDS = ("id", "image", "conversations", "regions", "image_size")
CLAMP_PX = 2.0  # a box may overshoot an edge by max(CLAMP_PX, CLAMP_FRACTION * side) and is clamped, not rejected
CLAMP_FRACTION = 0.01
_OBJ_TAG = re.compile(r"<obj\d+>")


class V1GError(ValueError):
    """A bad v1g record: ``record_id`` (None if the row has none), ``field`` and ``reason``."""

    def __init__(self, record_id: Any, field: str, reason: str, index: int | None = None):
        self.record_id, self.field, self.reason, self.index = record_id, field, reason, index
        who = f"record {record_id!r}" if record_id is not None else f"record #{index} (no id)"
        super().__init__(f"{who}: field {field!r}: {reason}")


@dataclass
class V1GRecord:
    """One v1g sample, with ``regions`` decoded to a dict and ``image_size = (width, height)``."""

    id: Any
    image: Any  # str | Path (file), bytes (encoded image) or PIL.Image.Image
    conversations: list[dict]
    regions: dict[str, list[float]]
    image_size: tuple[int, int]
    num_tokens: int | None = None
    # boxes clamped to the image when read (one note per box; see clamp_regions); not part of the released layout
    clamped: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def question(self) -> str:
        """The human turn without the ``<image>\\n`` prefix."""
        v = self.conversations[0]["value"]
        return v[len(IMAGE_PREFIX) :] if v.startswith(IMAGE_PREFIX) else v

    @property
    def trace(self) -> str:
        """The assistant turn (grounded trace with region keys, before expansion)."""
        return self.conversations[1]["value"]

    def open_image(self):
        """The image as a (lazily decoded) ``PIL.Image``. Raises ``V1GError`` (field ``image``) if unreadable."""
        from PIL import Image

        src = self.image
        try:
            if isinstance(src, (str, Path)):
                return Image.open(src)
            if isinstance(src, (bytes, bytearray)):
                return Image.open(io.BytesIO(src))
            if isinstance(src, Image.Image):
                return src
        except (OSError, ValueError) as e:  # PIL raises UnidentifiedImageError (an OSError) for junk
            raise V1GError(self.id, "image", f"cannot open image: {e}") from e
        raise V1GError(self.id, "image", f"unsupported image value of type {type(src).__name__}")

    def expanded_trace(self, *, max_side: int | None = geometry.OFFICIAL_MAX_SIDE, keep_key: bool = False) -> str:
        """The assistant text as the official trainer feeds it (see :func:`training_view`, :func:`expand_regions`)
        on the Qwen2.5-VL layout the official data is written for (``default_slot_map``).

        ``max_side=None`` skips the trainer resize and expands against the original image.
        """
        size, regions = training_view(self, max_side=max_side)
        return expand_regions(self.trace, regions, size, keep_key=keep_key)

    def to_row(self, image: Any = None) -> dict:
        """The record in the released layout (``regions`` as a JSON string); ``image`` overrides the image value."""
        row = {
            "id": self.id,
            "image": self.image if image is None else image,
            "conversations": [dict(t) for t in self.conversations],
            "regions": json.dumps(self.regions),
            "image_size": list(self.image_size),
        }
        if self.num_tokens is not None:
            row["num_tokens"] = self.num_tokens
        return row


@dataclass(frozen=True)
class BadRecord:
    """A row that could not be read or failed validation: its position, id (if any), field and reason."""

    index: int
    id: Any
    field: str
    reason: str

    def __str__(self) -> str:
        return f"#{self.index} id={self.id!r} field={self.field!r}: {self.reason}"


@dataclass
class ReadResult:
    """Valid records plus the bad rows (recorded, not raised, by :func:`read_v1g`)."""

    records: list[V1GRecord] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)

    @property
    def clamped_boxes(self) -> int:
        """Boxes clamped to their image while reading (see :func:`clamp_regions`)."""
        return sum(len(r.clamped) for r in self.records)


# ---------------------------------------------------------------- row -> record


def _image_value(value: Any, base_dir: Path | None, rid: Any, index: int | None) -> Any:
    """Normalise the stored image representations to path / bytes / PIL image."""
    if isinstance(value, Mapping):  # HF datasets / parquet Image storage: {"bytes": b"...", "path": "..."}
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
        if not value:
            raise V1GError(rid, "image", "image struct has neither bytes nor path", index)
    if isinstance(value, (str, Path)):
        p = Path(value)
        return p if p.is_absolute() or base_dir is None else base_dir / p
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if hasattr(value, "size") and hasattr(value, "mode"):  # PIL image from a decoded datasets row
        return value
    raise V1GError(rid, "image", f"unsupported image value of type {type(value).__name__}", index)


def record_from_row(row: Mapping[str, Any], *, base_dir: str | Path | None = None, index: int | None = None) -> V1GRecord:
    """Build a record from a row in the released layout; checks presence and types, not semantics.

    Args:
        row: mapping with the released fields (``regions`` a JSON string or an already decoded dict).
        base_dir: directory that relative image paths are relative to (the JSON/JSONL file's directory).
        index: row position, used in errors when the row has no id.
    Raises:
        V1GError naming the record id and field.
    """
    if not isinstance(row, Mapping):
        raise V1GError(None, "<row>", f"row is a {type(row).__name__}, not a mapping", index)
    rid = row.get("id")
    for name in REQUIRED_FIELDS:
        if row.get(name) is None:
            raise V1GError(rid, name, "missing", index)

    conv = row["conversations"]
    if not isinstance(conv, (list, tuple)) or len(conv) != 2:
        n = len(conv) if isinstance(conv, (list, tuple)) else type(conv).__name__
        raise V1GError(rid, "conversations", f"expected exactly two turns, got {n}", index)
    turns = []
    for i, (turn, role) in enumerate(zip(conv, ("human", "gpt"))):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            raise V1GError(rid, f"conversations[{i}]", "turn must be {'from': ..., 'value': str}", index)
        if turn.get("from") != role:
            raise V1GError(rid, f"conversations[{i}].from", f"expected {role!r}, got {turn.get('from')!r}", index)
        turns.append({"from": turn["from"], "value": turn["value"]})

    regions = row["regions"]
    if isinstance(regions, (str, bytes)):
        try:
            regions = json.loads(regions)
        except json.JSONDecodeError as e:
            raise V1GError(rid, "regions", f"not valid JSON: {e}", index) from e
    if not isinstance(regions, Mapping):
        raise V1GError(rid, "regions", f"must decode to an object {{key: box}}, got {type(regions).__name__}", index)
    boxes: dict[str, list[float]] = {}
    for key, box in regions.items():
        ok = isinstance(box, (list, tuple)) and len(box) == 4
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        if not ok:
            raise V1GError(rid, "regions", f"box of {key!r} must be 4 finite numbers [x1, y1, x2, y2], got {box!r}", index)
        boxes[str(key)] = list(box)

    size = row["image_size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise V1GError(rid, "image_size", f"expected [width, height] positive ints, got {size!r}", index)

    num_tokens = row.get("num_tokens")
    if num_tokens is not None and (not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 0):
        raise V1GError(rid, "num_tokens", f"expected a non-negative int, got {num_tokens!r}", index)

    image = _image_value(row["image"], Path(base_dir) if base_dir is not None else None, rid, index)
    return V1GRecord(rid, image, turns, boxes, (size[0], size[1]), num_tokens)


# ---------------------------------------------------------------- validation


def validation_errors(
    rec: V1GRecord,
    *,
    check_image: bool = False,
    check_trace: bool = True,
    require_object_regions: bool = True,
) -> list[V1GError]:
    """Every semantic problem of a record (empty list if valid). See the module docstring for the rules."""
    errs: list[V1GError] = []

    def err(fld: str, reason: str) -> None:
        errs.append(V1GError(rec.id, fld, reason))

    human, trace = rec.conversations[0]["value"], rec.conversations[1]["value"]
    if not human.startswith(IMAGE_PREFIX):
        err("conversations[0].value", f"must start with {IMAGE_PREFIX!r}")
    if not trace.strip():
        err("conversations[1].value", "empty assistant text")

    w, h = rec.image_size
    for key, (x1, y1, x2, y2) in rec.regions.items():
        if x1 > x2 or y1 > y2:
            err("regions", f"box of {key!r} is empty (inverted): {[x1, y1, x2, y2]}")
        elif x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            err("regions", f"box of {key!r} {[x1, y1, x2, y2]} lies outside the {w}x{h} image")
        elif (x1 == x2 or y1 == y2) and not _zero_area_cells(rec.image_size, [x1, y1, x2, y2]):
            note = next((n for n in rec.clamped if n.startswith(f"box of {key!r} ")), None)
            err("regions", f"box of {key!r} {[x1, y1, x2, y2]} has zero area and lies on a cell boundary, "
                           f"so it touches no cell" + (f" (after clamping: {note})" if note else ""))
        if key not in trace:
            err("regions", f"region key {key!r} never occurs in the assistant text")

    if require_object_regions:
        keys = list(rec.regions)
        missing = sorted(
            {t for t in _OBJ_TAG.findall(trace) if not any(t in k for k in keys)}, key=lambda t: int(t[4:-1])
        )
        if missing:
            err("conversations[1].value", f"object tags without a region: {', '.join(missing)}")

    if check_trace and not errs:
        try:
            layout = default_slot_map(rec.image_size)
            parse(expand_regions(trace, rec.regions, rec.image_size, layout), num_image_tokens=layout.num_slots)
        except TraceSyntaxError as e:
            err("conversations[1].value", f"malformed grounded trace after region expansion: {e}")
        except ValueError as e:  # e.g. aspect ratio > 200 in smart_resize
            err("image_size", str(e))

    if check_image:
        try:
            size = image_header_size(rec)
            if tuple(size) != tuple(rec.image_size):
                err("image", f"image is {size[0]}x{size[1]} but image_size says {w}x{h}")
        except V1GError as e:
            errs.append(e)
    return errs


def _zero_area_cells(image_size: tuple[int, int], box: Sequence[float]) -> list[int]:
    try:
        return default_slot_map(image_size).box_to_slots(box)
    except ValueError:  # no grid for this size (aspect ratio); check_trace reports it
        return [0]


def image_header_size(rec: V1GRecord) -> tuple[int, int]:
    """``(width, height)`` of the record's image from its header alone (no pixels decoded; a file opened here is
    closed again). Raises :class:`V1GError` (field ``image``) if the file is missing or not a readable image."""
    img = rec.open_image()
    try:
        return tuple(img.size)
    finally:
        if img is not rec.image:  # opened here (path or bytes): close the file; never close a caller's image
            img.close()


def clamp_regions(
    rec: V1GRecord, *, tolerance_px: float = CLAMP_PX, tolerance_fraction: float = CLAMP_FRACTION
) -> tuple[list[str], list[V1GError]]:
    """Clamp, in place, boxes that overshoot the image by at most ``max(tolerance_px, tolerance_fraction * side)``.

    The official box -> cell rule clips every box to the image, so a box a pixel past the edge or with small
    negative coordinates (rounding in annotation tools) trains fine upstream; it is clamped here too, so its box
    text and its cells agree. Returns ``(notes, errors)``: a note per clamped box (also appended to
    ``rec.clamped``), and an error (field ``regions``) per box further out than the tolerance, left unchanged.
    """
    w, h = rec.image_size
    tol_x, tol_y = max(tolerance_px, tolerance_fraction * w), max(tolerance_px, tolerance_fraction * h)
    notes: list[str] = []
    errors: list[V1GError] = []
    for key, box in rec.regions.items():
        x1, y1, x2, y2 = box
        if x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h:
            continue
        if max(-x1, x2 - w) > tol_x or max(-y1, y2 - h) > tol_y:
            errors.append(V1GError(rec.id, "regions", f"box of {key!r} {list(box)} lies outside the {w}x{h} image "
                                   f"by more than the clamp tolerance ({tolerance_px:g} px or "
                                   f"{tolerance_fraction:.0%} of the side)"))
            continue
        clamped = [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]
        rec.regions[key] = clamped
        notes.append(f"box of {key!r} {list(box)} clamped to {clamped} (image {w}x{h})")
    rec.clamped.extend(notes)
    return notes, errors


def validate_record(rec: V1GRecord, **kwargs: Any) -> V1GRecord:
    """Raise the first :class:`V1GError` of :func:`validation_errors` (kwargs passed on); return ``rec``."""
    errs = validation_errors(rec, **kwargs)
    if errs:
        raise errs[0]
    return rec


# ---------------------------------------------------------------- reading


def _rows(source: Any) -> Iterator[tuple[Mapping, Path | None]]:
    """Rows of a file (``.jsonl``, ``.json``, ``.parquet`` or a directory of parquet files) or an iterable."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.parquet"))
            if not files:
                raise FileNotFoundError(f"no .parquet files in {path}")
            for f in files:
                yield from _rows(f)
            return
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line), path.parent
                    except json.JSONDecodeError as e:
                        yield {"__error__": f"line {lineno}: invalid JSON: {e}"}, path.parent
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
            for row in data:
                yield row, path.parent
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            # Batches keep memory bounded: the full v1g set is ~90 GB of embedded images.
            for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
                for row in batch.to_pylist():
                    yield row, path.parent
        else:
            raise ValueError(f"{path}: unsupported v1g file type {suffix!r} (use .jsonl, .json or .parquet)")
        return
    # datasets.Dataset (rows are dicts; images decoded to PIL) or any iterable of mappings. No datasets import.
    for row in source:
        yield row, None


def iter_v1g(
    source: Any,
    *,
    validate: bool = True,
    check_image: bool = False,
    check_trace: bool = True,
    require_object_regions: bool = True,
    clamp_boxes: bool = True,
) -> Iterator[V1GRecord | BadRecord]:
    """Stream records from ``source``; a bad row yields a :class:`BadRecord` instead of stopping the stream.

    ``source``: path to ``.jsonl`` / ``.json`` / ``.parquet`` (or a directory of parquet shards), a
    ``datasets.Dataset``, or any iterable of row mappings. Exactly one item per row, in row order.
    ``clamp_boxes``: clamp boxes slightly past the image edge (:func:`clamp_regions`; noted in
    ``record.clamped``) instead of rejecting them; boxes further out are bad rows either way.
    """
    for index, (row, base_dir) in enumerate(_rows(source)):
        yield check_row(row, base_dir, index, validate=validate, check_image=check_image, check_trace=check_trace,
                        require_object_regions=require_object_regions, clamp_boxes=clamp_boxes)


def check_row(
    row: Any,
    base_dir: Path | None,
    index: int,
    *,
    validate: bool = True,
    check_image: bool = False,
    check_trace: bool = True,
    require_object_regions: bool = True,
    clamp_boxes: bool = True,
) -> V1GRecord | BadRecord:
    """One row -> its record (boxes clamped, validated) or a :class:`BadRecord`: what :func:`iter_v1g` does per
    row, also used by indexes that read a row again later (``data.index``)."""
    if isinstance(row, Mapping) and "__error__" in row:
        return BadRecord(index, None, "<row>", row["__error__"])
    try:
        rec = record_from_row(row, base_dir=base_dir, index=index)
        if clamp_boxes:
            _, far = clamp_regions(rec)
            if far:
                raise far[0]
        if validate:
            validate_record(
                rec, check_image=check_image, check_trace=check_trace, require_object_regions=require_object_regions
            )
    except V1GError as e:
        return BadRecord(index, e.record_id, e.field, e.reason)
    return rec


def read_v1g(source: Any, *, strict: bool = False, **kwargs: Any) -> ReadResult:
    """Read all records of ``source`` (see :func:`iter_v1g`, kwargs passed on).

    ``strict=False`` (default) records bad rows in ``.bad`` and goes on; ``strict=True`` raises the first as
    :class:`V1GError`.
    """
    out = ReadResult()
    for item in iter_v1g(source, **kwargs):
        if isinstance(item, BadRecord):
            if strict:
                raise V1GError(item.id, item.field, item.reason, item.index)
            out.bad.append(item)
        else:
            out.records.append(item)
    return out


# ---------------------------------------------------------------- writing


def _image_filename(rid: Any) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(rid))
    if safe != str(rid) or not safe.strip("."):
        safe = f"{safe}-{hashlib.sha1(str(rid).encode()).hexdigest()[:8]}"  # keep distinct ids distinct
    return safe + ".png"


def _write_png(rec: V1GRecord, dest: Path) -> None:
    src = rec.image
    if isinstance(src, (bytes, bytearray)) and bytes(src[:8]) == b"\x89PNG\r\n\x1a\n":
        dest.write_bytes(src)  # already PNG: keep the exact bytes
        return
    img = rec.open_image()
    img.save(dest, format="PNG")


def write_v1g(
    records: Iterable[V1GRecord], path: str | Path, *, image_dir: str = "images", resume: bool = False
) -> int:
    """Write records as JSONL in the released layout with images as ``<image_dir>/<id>.png`` next to it.

    Each line is flushed as it is written. ``resume=True`` appends to an existing file and skips ids it already
    holds (so a killed export can be rerun without duplicates). Returns the number of records written now.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / image_dir).mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if resume and path.exists():
        drop_partial_last_line(path)  # a torn line would otherwise swallow the next record
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    done.add(json.dumps(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut off by a kill: the record is written again below
    written = 0
    with path.open("a" if resume else "w", encoding="utf-8") as fh:
        for rec in records:
            if json.dumps(rec.id) in done:
                continue
            rel = f"{image_dir}/{_image_filename(rec.id)}"
            _write_png(rec, path.parent / rel)
            fh.write(json.dumps(rec.to_row(image=rel), ensure_ascii=False) + "\n")
            fh.flush()
            done.add(json.dumps(rec.id))
            written += 1
    return written


# ---------------------------------------------------------------- official expansion


def training_view(
    rec: V1GRecord, *, max_side: int | None = geometry.OFFICIAL_MAX_SIDE, fixed: int | None = None
) -> tuple[tuple[int, int], dict[str, list[float]]]:
    """Image size and boxes as the official trainer uses them (``V1GDataset.__getitem__``).

    The image is resized to :func:`geometry.official_train_size`; only if that changes the size are the boxes
    rescaled (floor top-left, ceil bottom-right). ``max_side=None`` returns the original size and boxes.
    Returns ``((width, height), regions)``.
    """
    if max_side is None and fixed is None:
        return rec.image_size, {k: list(b) for k, b in rec.regions.items()}
    size = geometry.official_train_size(rec.image_size, max_side=max_side or geometry.OFFICIAL_MAX_SIDE, fixed=fixed)
    if size == tuple(rec.image_size):
        return size, {k: list(b) for k, b in rec.regions.items()}
    return size, {k: geometry.rescale_box(b, rec.image_size, size) for k, b in rec.regions.items()}


def default_slot_map(image_size: tuple[int, int]) -> SlotMap:
    """The layout of a one-image record of ``image_size = (width, height)`` when no processor is at hand: the
    Qwen2.5-VL layout (14-px patches, merge 2, default pixel bounds) the official v1 data is written for.
    Training uses the processor's own layout instead (``GroundedCollator``)."""
    return SlotMap.for_images([tuple(image_size)], **QWEN2_5_VL)


def expand_regions(
    text: str,
    regions_px: Mapping[str, Sequence[float]],
    image_size: tuple[int, int],
    slot_map: SlotMap | None = None,
    *,
    image: int = 0,
    keep_key: bool = False,
    exact: bool = False,
    occurrences: str = "all",
    box_text: bool = True,
) -> str:
    """Replace every occurrence of each region key by ``<region>[box]<|copy_k|>...</region>`` (official rule).

    Args:
        text: assistant text containing the region keys.
        regions_px: ``{key: [x1, y1, x2, y2]}`` in pixels of the image of ``image_size``.
        image_size: ``(width, height)`` of *this sample's* image: it normalises the box text (the official
            collator used the last image of the batch, PAPER §9.1); must be ``slot_map.image_sizes[image]``.
        slot_map: the sample's vision layout (``PointCopyProcessor.slot_map``), which maps boxes to slots
            (``SlotMap.box_to_slots``: the official rule, slots of earlier images counted); default
            :func:`default_slot_map` of ``image_size`` (a one-image sample on the Qwen2.5-VL layout).
        image: which image of ``slot_map`` the boxes are in.
        keep_key: write ``key`` + region instead of replacing the key (the ``<objN><region>`` form of outputs).
        exact: rational box -> cell arithmetic instead of the official float rule (see ``geometry``).
        occurrences: ``"all"`` (official: every mention re-copies) or ``"first"`` (only a key's first occurrence
            gets the region; later mentions stay plain keys).
        box_text: write the ``[x0, y0, x1, y1]`` box text before the copies (official
            ``prepend_raw_region_to_text=True``); ``False`` gives ``<region><|copy_k|>...</region>``.
    Returns:
        The expanded text. Raises ``ValueError`` if a key does not occur in ``text``.

    Unlike the official sequential ``str.replace`` per key, all keys are replaced in one left-to-right pass,
    longest key first at each position, so a key that is a substring of another key, or of an already inserted
    region, cannot be replaced twice. For keys that are not substrings of each other the result is identical.
    """
    if occurrences not in ("all", "first"):
        raise ValueError(f"occurrences must be 'all' or 'first', got {occurrences!r}")
    if slot_map is None:
        if image != 0:
            raise ValueError(f"image={image} needs the sample's slot_map (the default layout has one image)")
        slot_map = default_slot_map(image_size)
    elif not 0 <= image < slot_map.num_images or slot_map.image_sizes[image] != tuple(image_size):
        have = slot_map.image_sizes[image] if 0 <= image < slot_map.num_images else "no such image"
        raise ValueError(f"image {image} of the slot map is {have}, but the boxes are in an image of size "
                         f"{tuple(image_size)}")
    rendered: dict[str, str] = {}
    for key, box in regions_px.items():
        if not key:
            raise ValueError("empty region key")
        if key not in text:
            raise ValueError(f"region key {key!r} not found in the text")
        slots = slot_map.box_to_slots(box, image, exact=exact)
        region = Region(geometry.normalize_box(box, image_size) if box_text else None, tuple(slots))
        rendered[key] = (key if keep_key else "") + render([region])
    if not rendered:
        return text
    pattern = re.compile("|".join(re.escape(k) for k in sorted(rendered, key=len, reverse=True)))
    seen: set[str] = set()

    def replace(m: re.Match) -> str:
        key = m.group()
        if occurrences == "first" and key in seen:
            return key
        seen.add(key)
        return rendered[key]

    return pattern.sub(replace, text)
