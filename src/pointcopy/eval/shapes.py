"""Metrics for the shapes world: generated grounded traces scored against ``items.jsonl`` ground truth.

Pure Python (no torch). Inputs: generated assistant texts (pointer tokens decoded to ``<|copy_k|>``, slots of
the sample's single image) keyed by item id, and the sidecar rows of :func:`pointcopy.data.shapes.read_items`.
Generated text is parsed with :func:`pointcopy.trace.parse_lenient`, so broken output is scored, never fatal.

Per item (:func:`score_item`) and aggregated (:func:`aggregate`, :func:`evaluate`):

* answer: the last ``Answer: X`` line, normalised (:func:`normalize_answer`: integers, yes/no, colour / shape /
  size / material words incl. CLEVR-Math synonyms) vs the ground truth. Accuracy overall, per family, per number
  of objects, per trace-length bucket (ground-truth ``copy`` trace length in tiny-tokenizer tokens).
* pointers: precision = pointers (every ``<|copy_k|>`` in the text) whose cell belongs to some object's cells;
  recall = fraction of the union of ground-truth object cells pointed at by the enumeration
  (``detect(query="object", ...)`` entries). Object cells use the official box->cell rule
  (``SlotMap.box_to_slots``).
* regions: for each enumerated ``<objN>`` with copies, IoU of the union box of its copied cells
  (``SlotMap.union_box``) with the best-matching ground-truth object's cell-union box (the box a perfect
  pointer set has: against the raw pixel box even perfect pointing scores ~0.3, since an 18-px object spans
  whole 28-px cells); also the IoU of its box text with the best ground-truth box rounded to the trace's two
  decimals. Ties between ground-truth objects go to the object with the generated id.
* enumeration: object count right (``There are N objects.``) and attribute words right per object.
* steps ("detect-query correctness"): the i-th phrase of the plan line (``Find: <phrase> = <words>; ...``) equal
  to the i-th ground-truth step's phrase, and the step's object set -- the enumerated objects marked ``yes`` in
  mark slot i -- equal to the ground-truth set (for a second subtraction hop: the matches still left). Generated
  object ids are mapped to ground-truth objects by their region (copied cells, else box text, best IoU) and,
  without regions (``nocopy``), by id (traces enumerate in raster order). Also the step's stated count
  (``<phrase>: k.``) against the ground-truth count.

Slots are located on the item's vision layout (a :class:`pointcopy.layout.SlotMap`): the one the model saw
(``Generation.slot_map``) when given, else the Qwen2.5-VL layout the shapes world's traces are built on.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from pointcopy import geometry
from pointcopy.layout import QWEN2_5_VL, SlotMap
from pointcopy.trace import Detect, parse_lenient

__all__ = [
    "normalize_answer",
    "extract_answer",
    "score_item",
    "item_slot_map",
    "object_cells",
    "best_match",
    "aggregate",
    "evaluate",
    "format_markdown",
    "DEFAULT_LENGTH_EDGES",
]

DEFAULT_LENGTH_EDGES = (155, 195, 230)  # copy-variant trace tokens: quartiles ~154 / 196 / 229, max ~340 (3-8 objects)
ENUM_QUERY = "object"  # = pointcopy.data.shapes.traces.ENUM_QUERY (not imported: that module pulls in PIL paths)

_WORDS = {
    # colours
    **{c: c for c in ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")},
    "grey": "gray",
    # shapes (CLEVR-Math synonyms.json) and plurals
    "cube": "cube", "block": "cube", "sphere": "sphere", "ball": "sphere", "cylinder": "cylinder",
    "cubes": "cube", "blocks": "cube", "spheres": "sphere", "balls": "sphere", "cylinders": "cylinder",
    # sizes
    "large": "large", "big": "large", "small": "small", "tiny": "small",
    # materials
    "rubber": "rubber", "matte": "rubber", "metal": "metal", "metallic": "metal", "shiny": "metal",
    # yes / no
    "yes": "yes", "no": "no", "true": "yes", "false": "no",
}
_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_ANSWER_RE = re.compile(r"Answer:[ \t]*([^\n]*)")
_REGION_SPAN = re.compile(r"<region>.*?(?:</region>|$)", re.S)
_PLAN_RE = re.compile(r"^Find: ([^\n]*?)\.?$", re.M)
_MARK_RE = re.compile(r"\b(yes|no)\b")
_OBJ_RE = re.compile(r"<obj(\d+)>")
# An enumeration line: id, attribute words, then the per-step marks after ":" (absent if generation stopped early).
_ENUM_RE = re.compile(r'^detect\(query="object", objects=\["<obj(\d+)>"\]\) ([^\n:]*)(?::([^\n]*))?$', re.M)
_COUNT_RE = re.compile(r"^There (?:are (\d+) objects|is (1) object)\.", re.M)
_MATERIAL_WORD = {"metal": "shiny", "rubber": "matte"}


def normalize_answer(s: str | None) -> str | None:
    """Canonical answer: ``"3"``, ``"yes"``/``"no"``, colour, shape, size or material (synonyms mapped).

    Lower-cases, strips a trailing period, an article and surrounding spaces; ``"3.0"`` and ``"three"`` -> ``"3"``.
    Anything else is returned cleaned but unmapped; ``None``/empty -> ``None``.
    """
    if s is None:
        return None
    t = s.strip().lower().rstrip(".").strip()
    t = re.sub(r"^(a|an|the)\s+", "", t)
    if not t:
        return None
    if re.fullmatch(r"-?\d+(\.0+)?", t):
        return str(int(float(t)))
    return _NUMBER_WORDS.get(t) or _WORDS.get(t, t)


def extract_answer(text: str) -> str | None:
    """Normalised value of the last ``Answer: X`` line of ``text`` (``None`` if there is none)."""
    found = _ANSWER_RE.findall(text)
    return normalize_answer(found[-1]) if found else None


def _describe(o: Mapping[str, Any]) -> str:
    return f"{o['size']} {o['color']} {_MATERIAL_WORD[o['material']]} {o['shape']}"


def item_slot_map(item: Mapping[str, Any]) -> SlotMap:
    """The layout the shapes world builds an item's traces on: its one image on the Qwen2.5-VL layout."""
    scene = item["scene"]
    return SlotMap.for_images([(scene["width"], scene["height"])], **QWEN2_5_VL)


def _gt_geometry(item: Mapping[str, Any], layout: SlotMap):
    """Image size, objects by id, their slots, their slot-union boxes and their box text as pixels."""
    scene = item["scene"]
    size = (scene["width"], scene["height"])
    if layout.num_images != 1 or layout.image_sizes[0] != size:
        raise ValueError(f"item {item.get('id')!r}: the slot map describes images {list(layout.image_sizes)}, "
                         f"not the item's one {size[0]}x{size[1]} image")
    objs = {o["id"]: o for o in scene["objects"]}
    cells = {i: set(layout.box_to_slots(o["box"])) for i, o in objs.items()}
    # What a perfect trace can express: copied cells are cell-quantised and box text has two decimals, so each
    # is compared with the ground truth quantised the same way (a perfect trace then scores IoU 1.0).
    cell_boxes = {i: layout.union_box(c) for i, c in cells.items() if c}
    text_boxes = {i: _denorm(_round_box(geometry.normalize_box(o["box"], size)), size) for i, o in objs.items()}
    return size, objs, cells, cell_boxes, text_boxes


def object_cells(item: Mapping[str, Any], layout: SlotMap) -> tuple[dict[int, set[int]], dict[int, tuple]]:
    """``(cells, cell_boxes)`` of a ground-truth row's objects on ``layout``: each object's slots (the official
    box->cell rule) and the box of their union (what a perfect pointer set outlines), by object id."""
    _, _, cells, cell_boxes, _ = _gt_geometry(item, layout)
    return cells, cell_boxes


def _round_box(box) -> tuple[float, ...]:
    return tuple(float(f"{v:.2f}") for v in box)  # the trace's two-decimal box text


def _denorm(box, size) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return x0 * size[0], y0 * size[1], x1 * size[0], y1 * size[1]


def best_match(box, boxes: Mapping[int, Sequence[float]], prefer: int | None = None) -> tuple[float, int | None]:
    """Best IoU of ``box`` over ``boxes`` and its id; ties go to ``prefer`` (the generated object's own id)."""
    best, arg = 0.0, None
    for i, b in boxes.items():
        iou = geometry.box_iou(box, b)
        if iou > best + 1e-9 or (abs(iou - best) <= 1e-9 and iou > 0 and i == prefer):
            best, arg = iou, i
    return best, arg


def _generated_steps(plain: str) -> list[tuple[str, list[int], int | None]]:
    """``(phrase, object ids marked yes, stated count)`` per planned step, from region-free text.

    Phrases come from the plan line, marks from the enumeration lines (slot i = step i), counts from the step
    lines after the object count (``<phrase>: k.``, or ``<phrase>: <objN>.`` = 1, matched in plan order).
    """
    plan = _PLAN_RE.search(plain)
    if not plan:
        return []
    phrases = [seg.split(" = ")[0].strip() for seg in plan.group(1).split("; ")]
    chosen: list[list[int]] = [[] for _ in phrases]
    for m in _ENUM_RE.finditer(plain):
        for i, mark in enumerate(_MARK_RE.findall(m.group(3) or "")[: len(phrases)]):
            if mark == "yes":
                chosen[i].append(int(m.group(1)))
    count = _COUNT_RE.search(plain)
    tail = plain[count.end():] if count else ""
    stated: list[int | None] = []
    pos = 0
    for ph in phrases:
        # "<phrase>: k." states a count; an attribute question's "<phrase>: <objN>." names its one object.
        m = re.compile(r"^" + re.escape(ph) + r": (?:(\d+)|<obj\d+>)\.", re.M).search(tail, pos)
        stated.append((int(m.group(1)) if m.group(1) else 1) if m else None)
        pos = m.end() if m else pos
    return list(zip(phrases, chosen, stated))


def score_item(text: str, item: Mapping[str, Any], slot_map: SlotMap | None = None) -> dict:
    """Metrics of one generated trace against its ground-truth row (see the module docstring).

    ``slot_map``: the layout of the item's image the model saw (``Generation.slot_map``); default
    :func:`item_slot_map`."""
    layout = slot_map if slot_map is not None else item_slot_map(item)
    size, objs, cells, cell_boxes, text_boxes = _gt_geometry(item, layout)
    all_gt_cells = set().union(*cells.values()) if cells else set()
    parsed = parse_lenient(text)
    pred = extract_answer(text)
    gold = normalize_answer(item["answer"])

    pointers = parsed.copy_ids
    ok_pointers = sum(1 for k in pointers if k in all_gt_cells)

    # Enumerated objects: declared by detect(query="object") entries.
    enum_objs = [o for o in parsed.objects if o.query == ENUM_QUERY]
    enum_cells = {k for o in enum_objs for k in o.copy_ids if k in layout}
    region_ious, box_ious, mapping = [], [], {}
    for o in enum_objs:
        # Map to a ground-truth object by the box text when there is one (finer than 28-px cells), else cells.
        if o.box is not None:
            iou, arg = best_match(_denorm(o.box, size), text_boxes, o.obj_id)
            box_ious.append(iou)
            mapping[o.obj_id] = arg
        valid = [k for k in o.copy_ids if k in layout]
        if valid:
            iou, arg = best_match(layout.union_box(valid), cell_boxes, o.obj_id)
            region_ious.append(iou)
            mapping.setdefault(o.obj_id, arg)

    plain = _REGION_SPAN.sub("", text)
    attr_total = attr_ok = 0
    for m in _ENUM_RE.finditer(plain):
        gid = mapping.get(int(m.group(1)), int(m.group(1)))
        attr_total += 1
        attr_ok += gid in objs and m.group(2).strip() == _describe(objs[gid])
    cm = _COUNT_RE.search(plain)
    count_pred = int(cm.group(1) or cm.group(2)) if cm else None

    gen_steps = _generated_steps(plain)
    q_ok = o_ok = s_ok = c_ok = 0
    for i, st in enumerate(item["steps"]):
        if i >= len(gen_steps):
            continue
        q, ids, stated = gen_steps[i]
        good_q = q == st["query"]
        good_o = {mapping.get(j, j) for j in ids} == set(st["objects"])
        q_ok += good_q
        o_ok += good_o
        s_ok += good_q and good_o
        c_ok += stated == len(st["objects"])
    return {
        "id": item["id"],
        "family": item["family"],
        "n_objects": item["n_objects"],
        "trace_tokens": (item.get("trace_tokens") or {}).get("copy"),
        "answer_pred": pred,
        "answer_gold": gold,
        "correct": pred is not None and pred == gold,
        "pointers": len(pointers),
        "pointers_correct": ok_pointers,
        "gt_cells": len(all_gt_cells),
        "gt_cells_hit": len(enum_cells & all_gt_cells),
        "region_ious": region_ious,
        "box_text_ious": box_ious,
        "count_correct": count_pred == len(objs),
        "attributes": attr_total,
        "attributes_correct": attr_ok,
        "gt_objects": len(objs),
        "steps": len(item["steps"]),
        "steps_query_correct": q_ok,
        "steps_objects_correct": o_ok,
        "steps_correct": s_ok,
        "steps_count_correct": c_ok,
        "parse_problems": len(parsed.problems),
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _bucket(tokens: int | None, edges: Sequence[int]) -> str:
    if tokens is None:
        return "unknown"
    lo = 0
    for e in edges:
        if tokens < e:
            return f"{lo}-{e - 1}"
        lo = e
    return f">={lo}"


def _acc_by(scores: Sequence[dict], key) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for s in scores:
        groups.setdefault(str(key(s)), []).append(s)

    def order(k: str):
        m = re.match(r"(?:>=)?(\d+)", k)
        return (0, int(m.group(1)), k) if m else (1, 0, k)

    return {k: {"n": len(g), "accuracy": sum(s["correct"] for s in g) / len(g)} for k, g in sorted(groups.items(), key=lambda kv: order(kv[0]))}


def aggregate(scores: Sequence[dict], length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES) -> dict:
    """Aggregate :func:`score_item` results into one JSON-ready dict.

    Ratios are micro-averaged (pooled counts); a metric with nothing to measure (e.g. pointer precision for
    text without pointers) is ``None``.
    """
    if not scores:
        raise ValueError("aggregate: no scored items")
    tot = lambda k: sum(s[k] for s in scores)  # noqa: E731
    region = [v for s in scores for v in s["region_ious"]]
    boxes = [v for s in scores for v in s["box_text_ious"]]
    return {
        "n": len(scores),
        "answer_accuracy": tot("correct") / len(scores),
        "answer_missing": sum(s["answer_pred"] is None for s in scores) / len(scores),
        "accuracy_by_family": _acc_by(scores, lambda s: s["family"]),
        "accuracy_by_objects": _acc_by(scores, lambda s: s["n_objects"]),
        "accuracy_by_length": _acc_by(scores, lambda s: _bucket(s["trace_tokens"], length_edges)),
        "pointer_precision": _ratio(tot("pointers_correct"), tot("pointers")),
        # Without a single pointer (coord / nocopy models) recall is not measured rather than 0.
        "pointer_recall": _ratio(tot("gt_cells_hit"), tot("gt_cells")) if tot("pointers") else None,
        "pointers_per_item": tot("pointers") / len(scores),
        "region_iou": _ratio(sum(region), len(region)),
        "box_text_iou": _ratio(sum(boxes), len(boxes)),
        "object_count_accuracy": tot("count_correct") / len(scores),
        "attribute_accuracy": _ratio(tot("attributes_correct"), tot("attributes")),
        "attribute_coverage": _ratio(tot("attributes"), tot("gt_objects")),
        "step_query_accuracy": _ratio(tot("steps_query_correct"), tot("steps")),
        "step_objects_accuracy": _ratio(tot("steps_objects_correct"), tot("steps")),
        "step_accuracy": _ratio(tot("steps_correct"), tot("steps")),
        "step_count_accuracy": _ratio(tot("steps_count_correct"), tot("steps")),
        "parse_problem_rate": sum(s["parse_problems"] > 0 for s in scores) / len(scores),
    }


def evaluate(
    predictions: Mapping[str, str],
    items: Iterable[Mapping[str, Any]],
    *,
    allow_missing: bool = False,
    length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
    slot_maps: Mapping[str, SlotMap] | None = None,
) -> dict:
    """Score ``predictions`` (``{item id: generated text}``) against ``items`` and aggregate.

    ``slot_maps``: ``{item id: Generation.slot_map}``, the layout each item's image had for the model; items not
    in it are scored on :func:`item_slot_map`.

    Raises ``ValueError`` naming the ids when an item has no prediction (unless ``allow_missing``: those items
    are then left out, counted in ``"missing"``) or a prediction has no item.
    """
    items = list(items)
    ids = {it["id"] for it in items}
    extra = [k for k in predictions if k not in ids]
    if extra:
        raise ValueError(f"predictions for unknown item ids: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    missing = [it["id"] for it in items if it["id"] not in predictions]
    if missing and not allow_missing:
        raise ValueError(f"no prediction for item ids: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    slot_maps = slot_maps or {}
    scores = [score_item(predictions[it["id"]], it, slot_maps.get(it["id"])) for it in items if it["id"] in predictions]
    out = aggregate(scores, length_edges)
    out["missing"] = len(missing)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def format_markdown(result: Mapping[str, Any], title: str | None = None) -> str:
    """Markdown tables of an :func:`aggregate` / :func:`evaluate` result."""
    keys = ["n", "answer_accuracy", "answer_missing", "pointer_precision", "pointer_recall", "pointers_per_item",
            "region_iou", "box_text_iou", "object_count_accuracy", "attribute_accuracy", "attribute_coverage",
            "step_query_accuracy", "step_objects_accuracy", "step_accuracy", "step_count_accuracy",
            "parse_problem_rate"]
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(result.get(k))} |" for k in keys if k in result]
    for key, label in (("accuracy_by_family", "family"), ("accuracy_by_objects", "objects"),
                       ("accuracy_by_length", "trace tokens")):
        lines += ["", f"| {label} | n | accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {g['n']} | {g['accuracy']:.3f} |" for k, g in result[key].items()]
    return "\n".join(lines) + "\n"
