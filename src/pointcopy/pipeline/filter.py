"""The pipeline's filters: which decomposed records may be grounded, and which grounded records may become v1g.

Rules after decomposition (the paper's, PAPER.md §4.4), in the order they are checked:

    decompose_failed   the decomposer gave nothing usable (LLM errors and unparseable answers, after retries)
    ill_formed         the reasoning does not parse as a trace (``trace.parse``), holds regions or copy tokens
                       already, or a detect entry has no ``<objN>``
    mismatch           the ids the detect calls declare differ from the obj_list's keys, or an ``<objN>`` is
                       mentioned before any detect declares it
    empty_description  an object's description is empty
    non_unique         two objects share a description (case and spacing ignored): the grounder cannot tell
                       them apart
    too_few_objects    fewer than ``min_objects`` objects (paper: samples with <= 2 objects are dropped)

Rules after grounding (box sanity), per object; one failing object drops the record:

    grounding_error    the grounder gave no box (unreadable image, markup in a description, ...)
    degenerate_box     a box side below ``min_box_px`` pixels
    box_outside_image  a box not inside the image
    low_contrast       the contrast (R at the peak / median R) below ``min_contrast``: the description
                       changed the attention no more than a description of nothing does
    invalid_v1g        the finished record fails ``data.v1g`` validation (a last guard; should not happen)

Every dropped record keeps all of its reasons (:class:`Drop`); the report counts each rule (records it hit) and
each record's first reason (these add up to the records dropped).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from .decompose import Decomposition

__all__ = ["FilterOptions", "Drop", "check_decomposition", "check_boxes", "RULES", "DECOMPOSED_RULES",
           "GROUNDED_RULES", "count_drops"]

DECOMPOSED_RULES = ("decompose_failed", "ill_formed", "mismatch", "empty_description", "non_unique",
                    "too_few_objects")
GROUNDED_RULES = ("grounding_error", "degenerate_box", "box_outside_image", "low_contrast", "invalid_v1g")
INPUT_RULES = ("bad_input", "multi_image")
RULES = INPUT_RULES + DECOMPOSED_RULES + GROUNDED_RULES


@dataclass(frozen=True)
class FilterOptions:
    min_objects: int = 3
    # Off by default: the contrast scale depends on the grounding model (and on the shapes model it says nothing
    # about the box, docs/results/pipeline-closed-loop.md), so a threshold is set per model from a grounding run
    # on data with known boxes (`pointcopy ground`).
    min_contrast: float = 0.0
    min_box_px: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Drop:
    """Why a record is dropped: a rule of :data:`RULES` and a detail naming the object or field."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"

    def to_dict(self) -> dict:
        return {"rule": self.rule, "detail": self.detail}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def check_decomposition(dec: Decomposition, options: FilterOptions = FilterOptions()) -> list[Drop]:
    """Every rule a decomposition breaks (empty: it may be grounded)."""
    from ..trace import Detect, ObjectRef, Region, TraceSyntaxError, parse

    drops: list[Drop] = []
    try:
        trace = parse(dec.reasoning)
    except TraceSyntaxError as e:
        return [Drop("ill_formed", f"the reasoning does not parse: {e}")]
    declared: list[int] = []
    for node in trace.nodes:
        if isinstance(node, Region):
            drops.append(Drop("ill_formed", "the reasoning holds a region already (it must be text-only)"))
            break
        if isinstance(node, Detect):
            for e in node.objects:
                if e.region is not None:
                    drops.append(Drop("ill_formed", f"detect(query={node.query!r}) holds a region already"))
                if e.ref is None:
                    drops.append(Drop("ill_formed", f"detect(query={node.query!r}) has an entry without <objN>"))
                elif e.ref.obj_id not in declared:
                    declared.append(e.ref.obj_id)
        elif isinstance(node, ObjectRef) and node.obj_id not in declared:
            drops.append(Drop("mismatch", f"<obj{node.obj_id}> is mentioned before a detect call declares it"))
    listed = list(dec.objects)
    keys = [f"<obj{i}>" for i in declared]
    if set(keys) != set(listed):
        only_text = [k for k in keys if k not in dec.objects]
        only_list = [k for k in listed if k not in keys]
        parts = ([f"detected but not in obj_list: {', '.join(only_text)}"] if only_text else []) + \
                ([f"in obj_list but never detected: {', '.join(only_list)}"] if only_list else [])
        drops.append(Drop("mismatch", "; ".join(parts)))
    empty = [k for k, o in dec.objects.items() if not o.get("description", "").strip()]
    if empty:
        drops.append(Drop("empty_description", f"no description for {', '.join(empty)}"))
    seen: dict[str, str] = {}
    for k, o in dec.objects.items():
        d = _norm(o.get("description", ""))
        if d and d in seen:
            drops.append(Drop("non_unique", f"{seen[d]} and {k} are both described as {o['description']!r}"))
        seen.setdefault(d, k)
    if len(dec.objects) < options.min_objects:
        drops.append(Drop("too_few_objects", f"{len(dec.objects)} objects (at least {options.min_objects} needed)"))
    return drops


def check_boxes(rows: dict[str, dict], image_size: tuple[int, int],
                options: FilterOptions = FilterOptions()) -> list[Drop]:
    """Box sanity of one record's grounded objects: ``rows`` maps each ``<objN>`` to its grounding row
    (``pipeline.ground``: "box", "contrast", or "error"); ``image_size`` = (width, height) of the image."""
    w, h = image_size
    drops = []
    for key, row in rows.items():
        box = row.get("box")
        if row.get("error") or box is None:
            err = row.get("error") or {}
            drops.append(Drop("grounding_error", f"{key}: {err.get('field', '')}: {err.get('reason', 'no box')}"))
            continue
        x0, y0, x1, y1 = box
        if min(x1 - x0, y1 - y0) < options.min_box_px:
            drops.append(Drop("degenerate_box", f"{key}: box {list(box)} is under {options.min_box_px:g} px"))
        elif x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            drops.append(Drop("box_outside_image", f"{key}: box {list(box)} is not inside the {w}x{h} image"))
        contrast = row.get("contrast")
        if contrast is not None and contrast < options.min_contrast:
            drops.append(Drop("low_contrast", f"{key}: contrast {contrast:.3g} < {options.min_contrast:g}"))
    return drops


def count_drops(dropped: Iterable[Sequence[Drop]]) -> dict:
    """{"by_rule": records each rule hit, "first_reason": records by their first reason} over :data:`RULES`."""
    by_rule = {r: 0 for r in RULES}
    first = {r: 0 for r in RULES}
    for drops in dropped:
        if not drops:
            continue
        first[drops[0].rule] += 1
        for rule in {d.rule for d in drops}:
            by_rule[rule] += 1
    return {"by_rule": by_rule, "first_reason": first}
