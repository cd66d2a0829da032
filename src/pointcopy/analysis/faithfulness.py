"""Faithfulness (`pointcopy analyze faithfulness`): does the model READ what it copies, and does its pointing
hold up along the trace?

(a) Copy swaps (shapes items). A copy event (`Traced.copy_events()`: a maximal run of pointer tokens) *belongs* to
a ground-truth object when that object's cells (the official box -> cell rule, on the item's own SlotMap) hold all
of its slots and no other object's cells do. Of an item's greedy baseline trace, up to `EVENTS_PER_ITEM` such
events are taken, spread evenly over the trace (first, middle, last, ...), and for each the generation is rerun
from the prefix = prompt + baseline trace up to and including the event's pointer tokens, with the copy memory
edited by `model.register_copy_memory_hook` (`model.core`):

    swap     the event's slots read the values of a partner object's cells: the other object that differs in the
             most attributes (size, colour, material, shape; ties: the nearest cell count, then the lowest id);
             cells mapped in slot order (a partner with more cells gives those most covered by its box, in slot
             order; one with fewer repeats its main cell, the one its box covers most)
    blank    every slot of the event reads one background slot (no object's cells): the one farthest from every
             object's cells (grid Chebyshev distance; ties: the lowest slot)
    control  no edit (one per item, the first chosen event): re-prefilling the prefix must reproduce the baseline

The edit is one of the memory, made at the prefix's prefill: every pointer position that reads the edited slots
reads the swapped value -- the event's own, any earlier copy of those slots in the prefix (a duplicated object,
counted as `earlier_copies`), and every later copy while generating (the cache keeps the edited memory). So the
swap holds for the rest of the generation: the counterfactual is "the cells of this object show another object".
The pointer keys, the image tokens and the copied positions are untouched: what the model sees at the image
tokens is the real image; only what a copy brings back differs.

Measured per intervention: the attribute words right after the copy (the first 4 words of the continuation on the
object's line, after the `"])` that closes the detect call): per attribute, following the partner's word, the
original's, or neither (attributes the two share are left out), and all four; the final answer (`Answer: X`):
changed vs the baseline's and, for a swap, whether it equals the counterfactual answer -- the question's steps
executed on the scene with the object given its partner's attributes (`counterfactual_answer`; undefined where
an attribute question's description then matches no object or several) -- where that differs from the true answer.
Rates: Wilson 95% intervals over the interventions pooled over items (and over a condition's models), and
bootstrap 95% intervals over items (each item's rate, averaged over the condition's models).

(b) Pointing along the trace, every copy event of the baseline traces: normalised position (start / T), ordinal
index, pointer precision (share of its slots inside some object's cells) and region IoU (the union box of its
slots vs the best-matching object's cell-union box; `eval.shapes.object_cells` / `best_match`), binned by position
(`POSITION_BINS`) and by ordinal index (`INDEX_BINS`, the last open), bootstrap CIs over items; per item the OLS
slope of IoU (and precision) over position; the same position curve for the longer half of the traces. Objects:
a shapes item's scene objects; for other item sources the item's boxes (and (a) is skipped with a reason).

Cost: about 7 continuations per shapes item (3 swaps, 3 blanks, 1 control), generated `MAX_ROWS` at a time in
chunks of similar remaining length; on 2 shared CPU cores about 3.4x the time of the baseline traces (shipped
shapes-tiny, 300 items). A larger --batch-size pools more items' continuations per chunk (32: ~20% faster).

Models sharing a label are seeds of one condition; a model that never copies has every item recorded as skipped
("copies nothing"), and if no model copies at all, a ValueError says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from . import stats
from .run import json_num as _num, json_nums as _nums
from .run import RunOptions, analyse_models, write_report

__all__ = ["ATTRS", "EVENTS_PER_ITEM", "POSITION_BINS", "INDEX_BINS", "attribute_words", "classify_words",
           "choose_partner", "map_cells", "blank_slot", "counterfactual_answer", "event_object", "choose_events",
           "memory_edit_hook", "pointing_events", "binned_means", "aggregate", "run_faithfulness"]

ATTRS = ("size", "color", "material", "shape")  # the order of a shapes trace's attribute words
EVENTS_PER_ITEM = 3
POSITION_BINS = 5
INDEX_BINS = 8  # ordinal index 0 .. 6, then 7 and later
MAX_ROWS = 16  # intervention sequences per generate call
EXTRA_TOKENS = 64  # a continuation may run this far past the baseline trace's end (then it is cut: unfinished)
NOT_SHAPES = "swap needs ground-truth objects with attributes (shapes items only)"
_WORD = {"metal": "shiny", "rubber": "matte"}
_TAG = re.compile(r"<[^>]*>|[\"\[\]()]")


# ---- (a) pieces ---------------------------------------------------------------------------------------------------
def object_words(obj: dict) -> list[str]:
    """The four canonical words a shapes trace writes for a scene object (size colour shiny|matte shape)."""
    return [_WORD.get(obj[a], obj[a]) if a == "material" else obj[a] for a in ATTRS]


def attribute_words(text: str, n: int = 4) -> list[str]:
    """The first `n` words written on the line that follows a copy: after the `"])` that closes the detect call
    (when the line has one), up to the `:` before the marks; markup removed. Fewer when the line is shorter."""
    line = text.split("\n", 1)[0]
    if "])" in line:
        line = line.split("])", 1)[1]
    line = line.split(":", 1)[0]
    return _TAG.sub(" ", line).split()[:n]


def classify_words(words: list[str], original: list[str], partner: list[str] | None) -> list[str]:
    """Per attribute: "shared" (original and partner agree: nothing to tell), "partner", "original" or "neither"
    (another word, or none). Without a partner (blank): "original" or "neither"."""
    out = []
    for i, want in enumerate(original):
        w = words[i] if i < len(words) else None
        if partner is not None and partner[i] == want:
            out.append("shared")
        elif partner is not None and w == partner[i]:
            out.append("partner")
        elif w == want:
            out.append("original")
        else:
            out.append("neither")
    return out


def event_object(slots: list[int], cells: dict[int, set[int]]) -> int | None:
    """The one object whose cells hold every slot of the event (None: no such object, or several)."""
    owners = [i for i, c in cells.items() if set(slots) <= c]
    return owners[0] if len(owners) == 1 else None


def choose_events(n_eligible: int, k: int = EVENTS_PER_ITEM) -> list[int]:
    """Indices of up to k of n eligible events, spread evenly from the first to the last."""
    if n_eligible <= k:
        return list(range(n_eligible))
    return sorted({int(round(j * (n_eligible - 1) / (k - 1))) for j in range(k)}) if k > 1 else [0]


def choose_partner(objects: list[dict], obj_id: int, cells: dict[int, set[int]], n_slots: int) -> int | None:
    """The other object differing from `obj_id` in the most attributes; ties: cell count nearest `n_slots`, then
    the lowest id. None when the scene has no other object with cells."""
    by_id = {o["id"]: o for o in objects}
    me = by_id[obj_id]
    cands = [o for o in objects if o["id"] != obj_id and cells.get(o["id"])]
    if not cands:
        return None
    best = min(cands, key=lambda o: (-sum(o[a] != me[a] for a in ATTRS), abs(len(cells[o["id"]]) - n_slots), o["id"]))
    return best["id"]


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def map_cells(dst: list[int], partner_cells: list[int], partner_box, slot_map) -> list[int]:
    """Source slot of each event slot: the partner's cells in slot order; a partner with more cells gives the
    len(dst) cells its box covers most (in slot order), one with fewer repeats its main cell (covered most)."""
    cover = {k: _overlap(slot_map.slot_box(k), partner_box) for k in partner_cells}
    ranked = sorted(partner_cells, key=lambda k: (-cover[k], k))
    if len(partner_cells) >= len(dst):
        return sorted(ranked[: len(dst)])
    return sorted(partner_cells) + [ranked[0]] * (len(dst) - len(partner_cells))


def blank_slot(slot_map, cells: dict[int, set[int]], image: int = 0) -> int | None:
    """A slot of `image` in no object's cells, the farthest from all of them (grid Chebyshev distance; ties: the
    lowest slot). None when every cell holds part of an object."""
    taken = set().union(*cells.values()) if cells else set()
    where = [slot_map.locate(k)[1:] for k in taken if slot_map.locate(k)[0] == image]
    best, arg = -1, None
    for k in slot_map.image_slots(image):
        if k in taken:
            continue
        _, r, c = slot_map.locate(k)
        d = min((max(abs(r - r2), abs(c - c2)) for r2, c2 in where), default=0)
        if d > best:
            best, arg = d, k
    return arg


def counterfactual_answer(row: dict, obj_id: int | None = None, attrs: dict | None = None) -> str | None:
    """The question's answer (canonical CLEVR value) on its scene with object `obj_id` given `attrs` (the swap's
    counterfactual; without them the true answer). Executes the steps' filters as `data.shapes.questions` does:
    count |A|; subtraction n - |A| - |B \\ A|; compare |A| vs |B| by the relation; attribute: the asked attribute
    of the one object the description matches (None when it matches none or several)."""
    objs = {o["id"]: dict(o) for o in row["scene"]["objects"]}
    if obj_id is not None:
        objs[obj_id].update({a: attrs[a] for a in ATTRS})

    def select(f: dict) -> list[int]:
        return [i for i in sorted(objs) if all(objs[i][a] == v for a, v in f.items())]

    steps, family = row["steps"], row["family"]
    if family == "count":
        return str(len(select(steps[0]["attrs"])))
    if family == "subtraction":
        removed: set[int] = set()
        for s in steps:
            removed |= set(select(s["attrs"]))
        return str(len(objs) - len(removed))
    if family == "compare":
        na, nb = (len(select(s["attrs"])) for s in steps)
        holds = {"more": na > nb, "fewer": na < nb, "same": na == nb}[row["relation"]]
        return "yes" if holds else "no"
    if family == "attribute":
        match = select(steps[0]["attrs"])
        return objs[match[0]][row["asked"]] if len(match) == 1 else None
    raise ValueError(f"item {row.get('id')!r}: unknown family {family!r}")


def memory_edit_hook(edits: list[list[tuple[list[int], list[int]]]]):
    """A copy-memory hook: for batch row b, each (dst slots, src slots) of `edits[b]` makes dst read src's values
    (and per-layer values). Sources are gathered before any write, so edits may overlap."""
    def hook(memory):
        for b, row in enumerate(edits):
            for dst, src in row:
                d, s = torch.as_tensor(dst, dtype=torch.long), torch.as_tensor(src, dtype=torch.long)
                memory.values[b, d] = memory.values[b, s].clone()
                if memory.layer_values is not None:
                    memory.layer_values[:, b, d] = memory.layer_values[:, b, s].clone()
    return hook


# ---- (b) pieces ---------------------------------------------------------------------------------------------------
def _objects_geometry(t):
    """(cells {key: set of slots}, cell boxes {key: (image, box)}) of the item's objects on its SlotMap: a shapes
    item's scene objects (by id), else the item's boxes (by index)."""
    layout = t.slot_map
    if t.item.truth is not None:
        from ..eval.shapes import object_cells

        cells, boxes = object_cells(t.item.truth, layout)
        return cells, {i: (0, b) for i, b in boxes.items()}
    cells, boxes = {}, {}
    for n, (image, box) in enumerate(t.item.boxes):
        c = set(layout.box_to_slots(box, image))
        if c:
            cells[n], boxes[n] = c, (image, layout.union_box(c))
    return cells, boxes


def pointing_events(t, cells, cell_boxes) -> list[dict]:
    """Every copy event of a trace: start, slot count, ordinal index, position start / T, precision, IoU."""
    from ..eval.shapes import best_match

    taken = set().union(*cells.values()) if cells else set()
    out = []
    for n, (start, slots) in enumerate(t.copy_events()):
        images = {t.slot_map.locate(k)[0] for k in slots}
        iou = None
        if len(images) == 1:
            (image,) = images
            same = {i: b for i, (im, b) in cell_boxes.items() if im == image}
            iou = best_match(t.slot_map.union_box(slots), same)[0] if same else 0.0
        out.append({"start": start, "n": len(slots), "index": n, "pos": start / t.steps,
                    "precision": sum(k in taken for k in slots) / len(slots), "iou": iou})
    return out


def binned_means(keys: np.ndarray, values: np.ndarray, n_bins: int) -> np.ndarray:
    """(n_bins,) mean of `values` per integer bin `keys` (clipped to n_bins - 1); NaN for an empty bin."""
    keys = np.minimum(np.asarray(keys, dtype=int), n_bins - 1)
    values = np.asarray(values, dtype=float)
    out = np.full(n_bins, np.nan)
    for b in range(n_bins):
        sel = values[(keys == b) & np.isfinite(values)]
        if sel.size:
            out[b] = sel.mean()
    return out


def position_bin(pos, n_bins: int = POSITION_BINS) -> np.ndarray:
    return np.minimum((np.asarray(pos, dtype=float) * n_bins).astype(int), n_bins - 1)


# ---- per item -----------------------------------------------------------------------------------------------------
def _plan(t, events_per_item: int) -> tuple[dict, list[dict]]:
    """The item's row (without intervention results) and its planned interventions."""
    from ..eval.shapes import extract_answer, normalize_answer

    row = {"id": t.item.id, "steps": t.steps, "finished": t.finished, "correct": t.item.correct(t.text, t.slot_map)}
    cells, cell_boxes = _objects_geometry(t)
    row["events"] = pointing_events(t, cells, cell_boxes)
    truth = t.item.truth
    if truth is None:
        row["swap_skipped"] = NOT_SHAPES
        return row, []
    row.update(family=truth["family"], n_objects=len(truth["scene"]["objects"]),
               answer_gold=normalize_answer(str(truth["answer"])), answer_base=extract_answer(t.text))
    objects = truth["scene"]["objects"]
    by_id = {o["id"]: o for o in objects}
    events = t.copy_events()
    owned = [(n, event_object(slots, cells)) for n, (_, slots) in enumerate(events)]
    owned = [(n, o) for n, o in owned if o is not None]
    if not owned:
        row["swap_skipped"] = "no copy event lies in one object's cells"
        return row, []
    plans = []
    background = blank_slot(t.slot_map, cells)
    for j in choose_events(len(owned), events_per_item):
        n, obj = owned[j]
        start, slots = events[n]
        end = start + len(slots)
        earlier = sum(1 for s, sl in events[:n] if set(sl) & set(slots))
        base = {"event": n, "pos": start / t.steps, "object": obj, "dst": slots, "prefix": end,
                "orig": object_words(by_id[obj]), "earlier_copies": earlier, "base_words": None,  # set by the caller
                "answer_base": row["answer_base"], "gold": row["answer_gold"]}
        partner = choose_partner(objects, obj, cells, len(slots))
        if partner is not None:
            src = map_cells(slots, sorted(cells[partner]), by_id[partner]["box"], t.slot_map)
            cf = normalize_answer(counterfactual_answer(truth, obj, by_id[partner]))
            plans.append({**base, "kind": "swap", "partner": partner, "src": src,
                          "partner_words": object_words(by_id[partner]),
                          "n_diff": sum(by_id[partner][a] != by_id[obj][a] for a in ATTRS), "answer_cf": cf})
        if background is not None:
            plans.append({**base, "kind": "blank", "src": [background] * len(slots)})
        if not any(p["kind"] == "control" for p in plans):
            plans.append({**base, "kind": "control", "src": list(slots)})
    return row, plans


def _eos_ids(model, processor) -> set[int]:
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    eos.add(processor.tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return eos


@torch.no_grad()
def _continue(model, processor, jobs: list[tuple], max_new_tokens: int,
              decoding_kwargs: dict | None = None) -> list[tuple[list[int], bool]]:
    """Greedy continuations of (Traced, prefix trace length, edits) jobs, batched (left padding), each under its
    own copy-memory edits; each limited to max_new_tokens - prefix and to EXTRA_TOKENS past the baseline's end (a
    swap does not change how many lines a trace has: a continuation that long is looping). `decoding_kwargs`: the
    baseline traces' (`DecodingOptions.generate_kwargs()`: their repetition penalty). Returns (new ids before
    end-of-turn, finished) per job."""
    eos = _eos_ids(model, processor)
    kwargs = {**(decoding_kwargs or {}), "do_sample": False}
    results: list = [None] * len(jobs)
    # chunks of similar remaining length: a chunk runs until its longest row ends (measured: the fastest grouping)
    order = sorted(range(len(jobs)), key=lambda j: jobs[j][0].steps - jobs[j][1])
    for lo in range(0, len(order), MAX_ROWS):
        chunk = order[lo:lo + MAX_ROWS]
        seqs = [jobs[j][0].ids[: jobs[j][0].prompt_len + jobs[j][1]] for j in chunk]
        budgets = [min(max_new_tokens, jobs[j][0].steps + EXTRA_TOKENS) - jobs[j][1] for j in chunk]
        batch = processor.pad(seqs)
        batch["pixel_values"] = torch.cat([jobs[j][0].pixel_values for j in chunk])
        batch["image_grid_thw"] = torch.cat([jobs[j][0].image_grid_thw for j in chunk])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        handle = model.register_copy_memory_hook(memory_edit_hook([jobs[j][2] for j in chunk]))
        try:
            out = model.generate(**batch, max_new_tokens=max(budgets), **kwargs)
        finally:
            handle.remove()
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        for j, ids, budget in zip(chunk, new, budgets):
            ids = ids[:budget]
            stop = next((i for i, v in enumerate(ids) if v in eos), None)
            results[j] = (ids[:stop] if stop is not None else ids, stop is not None)
    return results


def _summarise(opts: RunOptions):
    from ..eval.shapes import extract_answer

    k = int(opts.extra.get("events_per_item", EVENTS_PER_ITEM))

    def summarise(batch, model, processor, info):
        rows, jobs, where = [], [], []
        for t in batch:
            row, plans = _plan(t, k)
            row["interventions"] = []
            for p in plans:
                p["base_words"] = attribute_words(processor.decode(t.trace_ids[p["prefix"]:]))
                if p["prefix"] >= opts.max_new_tokens:
                    continue  # the baseline ran out of tokens right at the copy: nothing to continue
                jobs.append((t, p["prefix"], [(p["dst"], p["src"])] if p["kind"] != "control" else []))
                where.append((len(rows), p))
            rows.append(row)
        for (r, p), (ids, finished) in zip(where, _continue(model, processor, jobs, opts.max_new_tokens,
                                                             opts.decoding.generate_kwargs())):
            text = processor.decode(ids)
            p.update(words=attribute_words(text), answer=extract_answer(text), finished=finished, tokens=len(ids))
            rows[r]["interventions"].append(p)
        return rows

    return summarise


# ---- statistics ---------------------------------------------------------------------------------------------------
def _ci(values) -> dict:
    mean, lo, hi = stats.bootstrap_mean_ci(values)
    if np.ndim(mean) == 0:
        return {"mean": _num(mean), "lo": _num(lo), "hi": _num(hi)}
    return {"mean": _nums(mean), "lo": _nums(lo), "hi": _nums(hi)}


def _wilson(k: float, n: int) -> dict:
    lo, hi = stats.wilson(k, n)
    return {"mean": _num(k / n) if n else None, "lo": _num(lo), "hi": _num(hi), "k": int(k), "n": int(n)}


def _seed_mean(a: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=0)


def _rate(group, ids, kind: str, test, where=lambda p: True) -> dict:
    """Share of `kind` interventions (passing `where`) for which `test(p)` holds: Wilson over the pooled
    interventions, bootstrap over items (each item's share, averaged over the models of the condition)."""
    k = n = 0
    per = np.full((len(group), len(ids)), np.nan)
    for s, r in enumerate(group):
        for i, item in enumerate(ids):
            ps = [p for p in r.rows[item].get("interventions", []) if p["kind"] == kind and where(p)]
            hits = [bool(test(p)) for p in ps]
            k, n = k + sum(hits), n + len(hits)
            if hits:
                per[s, i] = float(np.mean(hits))
    return {"pooled": _wilson(k, n), "items": _ci(_seed_mean(per)) if len(ids) else None,
            "n_items": int(np.isfinite(_seed_mean(per)).sum()) if len(ids) else 0}


def _swap_stats(group, ids) -> dict:
    out: dict = {"attributes": {}}
    for i, a in enumerate(ATTRS):
        cls = lambda p, i=i: classify_words(p["words"], p["orig"], p.get("partner_words"))[i]  # noqa: E731
        informative = lambda p, cls=cls: cls(p) != "shared"  # noqa: E731
        out["attributes"][a] = {c: _rate(group, ids, "swap", lambda p, c=c, cls=cls: cls(p) == c, informative)
                                for c in ("partner", "original", "neither")}
    # The same split by how many slots the event copies: a model may tell size from the number of copies rather
    # than from what they hold (a swap keeps the event's pointer count).
    out["attributes_by_slots"] = {}
    for name, fits in (("1", lambda p: len(p["dst"]) == 1), ("2+", lambda p: len(p["dst"]) > 1)):
        out["attributes_by_slots"][name] = {}
        for i, a in enumerate(ATTRS):
            cls = lambda p, i=i: classify_words(p["words"], p["orig"], p.get("partner_words"))[i]  # noqa: E731
            where = lambda p, cls=cls, fits=fits: fits(p) and cls(p) != "shared"  # noqa: E731
            out["attributes_by_slots"][name][a] = {
                c: _rate(group, ids, "swap", lambda p, c=c, cls=cls: cls(p) == c, where)["pooled"]
                for c in ("partner", "original")}
    out["all4"] = {
        "partner": _rate(group, ids, "swap", lambda p: p["words"] == p["partner_words"]),
        "original": _rate(group, ids, "swap", lambda p: p["words"] == p["orig"]),
        "neither": _rate(group, ids, "swap", lambda p: p["words"] not in (p["orig"], p["partner_words"])),
    }
    base_right = lambda p: p["base_words"] == p["orig"]  # noqa: E731
    out["all4_baseline_read_right"] = {
        "partner": _rate(group, ids, "swap", lambda p: p["words"] == p["partner_words"], base_right),
        "original": _rate(group, ids, "swap", lambda p: p["words"] == p["orig"], base_right)}
    out["answer_changed"] = _rate(group, ids, "swap", lambda p: p["answer"] != p["answer_base"])
    informative = lambda p: p.get("answer_cf") is not None and p["answer_cf"] != p["gold"]  # noqa: E731
    out["answer_follows_swap"] = _rate(group, ids, "swap", lambda p: p["answer"] == p["answer_cf"], informative)
    out["answer_keeps_truth"] = _rate(group, ids, "swap", lambda p: p["answer"] == p["gold"], informative)
    out["answer_informative"] = _rate(group, ids, "swap", informative)
    out["mean_attributes_differing"] = _num(np.mean([p["n_diff"] for r in group for i in ids
                                                     for p in r.rows[i].get("interventions", [])
                                                     if p["kind"] == "swap"] or [np.nan]))
    return out


def _blank_stats(group, ids) -> dict:
    out = {"attributes": {a: _rate(group, ids, "blank", lambda p, i=i: classify_words(p["words"], p["orig"], None)[i]
                                   == "original") for i, a in enumerate(ATTRS)}}
    out["all4_original"] = _rate(group, ids, "blank", lambda p: p["words"] == p["orig"])
    out["answer_changed"] = _rate(group, ids, "blank", lambda p: p["answer"] != p["answer_base"])
    return out


def _control_stats(group, ids) -> dict:
    return {"words_as_baseline": _rate(group, ids, "control", lambda p: p["words"] == p["base_words"]),
            "answer_as_baseline": _rate(group, ids, "control", lambda p: p["answer"] == p["answer_base"]),
            "baseline_read_right": _rate(group, ids, "control", lambda p: p["base_words"] == p["orig"])}


def _pointing_stats(group, ids) -> dict:
    out: dict = {}
    steps = np.array([np.mean([r.rows[i]["steps"] for r in group]) for i in ids]) if ids else np.array([])
    long_ids = [i for i, s in zip(ids, steps) if s >= np.median(steps)] if len(ids) else []
    for metric in ("precision", "iou"):
        pos = np.full((len(group), len(ids), POSITION_BINS), np.nan)
        idx = np.full((len(group), len(ids), INDEX_BINS), np.nan)
        slope = np.full((len(group), len(ids)), np.nan)
        neg = np.zeros((len(group), len(ids)), dtype=bool)
        counts_pos, counts_idx = np.zeros(POSITION_BINS, int), np.zeros(INDEX_BINS, int)
        for s, r in enumerate(group):
            for n, i in enumerate(ids):
                ev = [e for e in r.rows[i]["events"] if e[metric] is not None]
                if not ev:
                    continue
                p = np.array([e["pos"] for e in ev])
                v = np.array([e[metric] for e in ev], dtype=float)
                k = np.array([e["index"] for e in ev])
                pos[s, n] = binned_means(position_bin(p), v, POSITION_BINS)
                idx[s, n] = binned_means(k, v, INDEX_BINS)
                counts_pos += np.bincount(position_bin(p), minlength=POSITION_BINS)
                counts_idx += np.bincount(np.minimum(k, INDEX_BINS - 1), minlength=INDEX_BINS)
                b, lo, hi = stats.ols_slope(p, v) if len(ev) >= 3 else (np.nan, np.nan, np.nan)
                slope[s, n] = b
                neg[s, n] = np.isfinite(hi) and hi < 0
        pos_i, slope_i = _seed_mean(pos), _seed_mean(slope)
        long_rows = [ids.index(i) for i in long_ids]
        out[metric] = {"by_position": _ci(pos_i), "by_index": _ci(_seed_mean(idx)),
                       "events_by_position": counts_pos.tolist(), "events_by_index": counts_idx.tolist(),
                       "slope": _ci(slope_i), "items_with_slope": int(np.isfinite(slope_i).sum()),
                       "share_items_declining": _num(neg.mean()) if neg.size else None,
                       "by_position_long_traces": _ci(pos_i[long_rows]) if long_rows else None,
                       "late_minus_early": _ci(pos_i[:, -1] - pos_i[:, 0]) if len(ids) else None}
    out["long_trace_min_steps"] = _num(np.median(steps)) if len(ids) else None
    return out


def aggregate(runs, items_order: list[str]) -> dict:
    """Statistics of `ModelRun`s per condition (see the module docstring)."""
    by_label: dict[str, list] = {}
    for r in runs:
        by_label.setdefault(r.spec.label, []).append(r)
    conditions = {}
    for label, group in by_label.items():
        ids = [i for i in items_order if all(i in r.rows for r in group)]
        swap_ids = [i for i in ids if all(r.rows[i].get("interventions") for r in group)]
        correct = [r.rows[i]["correct"] for r in group for i in ids if r.rows[i]["correct"] is not None]
        skipped_swap: dict[str, int] = {}
        for r in group:
            for i in ids:
                reason = r.rows[i].get("swap_skipped")
                if reason:
                    skipped_swap[reason] = skipped_swap.get(reason, 0) + 1
        conditions[label] = {
            "models": [r.name for r in group], "n_items": len(ids), "n_items_swapped": len(swap_ids),
            "accuracy": _num(np.mean(correct)) if correct else None,
            "events_per_item": _num(np.mean([len(r.rows[i]["events"]) for r in group for i in ids])) if ids else None,
            "swap_skipped": skipped_swap,
            "swap": _swap_stats(group, swap_ids), "blank": _blank_stats(group, swap_ids),
            "control": _control_stats(group, swap_ids), "pointing": _pointing_stats(group, ids)}
    return {"attributes": list(ATTRS), "position_bins": POSITION_BINS, "index_bins": INDEX_BINS,
            "conditions": conditions}


# ---- the command --------------------------------------------------------------------------------------------------
def run_faithfulness(opts: RunOptions, echo=print) -> dict | None:
    if opts.traces != "generated":
        raise ValueError("faithfulness reruns the model's own generation: use generated traces")
    if opts.decoding.do_sample:
        raise ValueError("faithfulness compares greedy continuations after a swap with the baseline trace: "
                         "--do-sample is not supported (a sampled difference would not be the swap's)")
    items, runs = analyse_models(opts, _summarise(opts), echo=echo, needs_copies=True, analysis="faithfulness")
    if runs is None:  # another rank's share: rank 0 writes the report
        return None
    if not any(r.rows for r in runs):
        raise ValueError("no model copies: every analysed trace of every model has no pointer token (pointing off, "
                         "or a model that never learnt to point), so there is nothing to swap or to score; see "
                         "skipped.jsonl under " + str(Path(opts.out) / "models"))
    result = aggregate(runs, [it.id for it in items])
    result["items"] = opts.items
    result["events_per_item"] = int(opts.extra.get("events_per_item", EVENTS_PER_ITEM))
    result["models"] = {}
    for r in runs:
        entry = r.summary()
        if not r.rows:
            entry["note"] = "never copies: every item skipped (see skipped.jsonl)"
            echo(f"{r.name}: never copies; all {len(r.skipped)} items skipped")
        result["models"][r.name] = entry
    write_faithfulness_report(result, Path(opts.out))
    return result



# ---- report -------------------------------------------------------------------------------------------------------
def write_faithfulness_report(result: dict, out: Path) -> None:
    write_report(out, "faithfulness", result, plot, markdown)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import COLOURS, plot_curves

    conds = result["conditions"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    cats = list(ATTRS) + ["all 4"]
    series = [("partner", "swap: partner's word"), ("original", "swap: original's word")]
    width = 0.8 / max(1, len(series) * len(conds) + len(conds))
    j = 0
    for c, (label, cond) in enumerate(conds.items()):
        for kind, name in series + [("blank", "blank: original's word")]:
            cells = []
            for a in cats:
                if kind == "blank":
                    cell = cond["blank"]["all4_original"] if a == "all 4" else cond["blank"]["attributes"][a]
                else:
                    cell = cond["swap"]["all4"][kind] if a == "all 4" else cond["swap"]["attributes"][a][kind]
                cells.append(cell["pooled"])
            mean = np.array([np.nan if x["mean"] is None else x["mean"] for x in cells])
            lo = np.array([np.nan if x["lo"] is None else x["lo"] for x in cells])
            hi = np.array([np.nan if x["hi"] is None else x["hi"] for x in cells])
            xs = np.arange(len(cats)) - 0.4 + width * (j + 0.5)
            colour = COLOURS[j % len(COLOURS)]
            ax.bar(xs, mean, width, color=colour, label=f"{label}: {name}" if len(conds) > 1 else name,
                   yerr=[np.nan_to_num(np.clip(mean - lo, 0, None)), np.nan_to_num(np.clip(hi - mean, 0, None))],
                   capsize=2, error_kw={"lw": 0.8})
            j += 1
    ax.set_xticks(np.arange(len(cats)), cats, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("words written after the copy (Wilson 95% CI)", fontsize=9)
    ax.legend(fontsize=6)
    x = (np.arange(result["position_bins"]) + 0.5) / result["position_bins"]
    for ax, metric, name in ((axes[1], "precision", "pointer precision"), (axes[2], "iou", "region IoU")):
        plot_curves(ax, x, {label: cond["pointing"][metric]["by_position"] for label, cond in conds.items()},
                    f"{name} by position of the copy (bootstrap 95% CI)")
        ax.set_xlabel("position in trace (start / T)", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(result: dict) -> str:
    from .report import fmt_ci

    def pct(cell):
        if not cell or cell.get("mean") is None:
            return "–"
        return f"{fmt_ci(cell, 100, 1)} (n={cell['n']})" if "n" in cell else fmt_ci(cell, 100, 1)

    conds = result["conditions"]
    lines = [f"# Faithfulness: {result.get('items', '')}", "",
             f"Up to {result.get('events_per_item', EVENTS_PER_ITEM)} copy events per item (each inside one "
             "object's cells) rerun with the copy memory edited: swap = the event's slots read another object's "
             "cells (the one differing in most attributes), blank = a background cell, control = no edit. The "
             "edit holds for the rest of the generation. Percentages with Wilson 95% CIs over the pooled "
             "interventions.", "",
             "| condition | models | items | swapped items | accuracy | events/item | control: words / answer as "
             "baseline | baseline read right |", "|---|---|---|---|---|---|---|---|"]
    for label, c in conds.items():
        acc = "–" if c["accuracy"] is None else f"{100 * c['accuracy']:.1f}%"
        ctl = c["control"]
        ev = "–" if c["events_per_item"] is None else f"{c['events_per_item']:.2f}"
        lines.append(f"| {label} | {len(c['models'])} | {c['n_items']} | {c['n_items_swapped']} | {acc} | "
                     f"{ev} | {pct(ctl['words_as_baseline']['pooled'])} / "
                     f"{pct(ctl['answer_as_baseline']['pooled'])} | {pct(ctl['baseline_read_right']['pooled'])} |")
    for label, c in conds.items():
        sw, bl = c["swap"], c["blank"]
        if not c["n_items_swapped"]:
            reasons = "; ".join(f"{k}: {v}" for k, v in c["swap_skipped"].items()) or "no item"
            lines += ["", f"## {label}: no swaps ({reasons})"]
            continue
        lines += ["", f"## {label}: words written after the copy", "",
                  f"Swap partners differ in {sw['mean_attributes_differing']:.2f} attributes on average; per attribute "
                  "only the swaps where the two objects differ in it.", "",
                  "| attribute | swap: partner's word | swap: original's | swap: neither | blank: original's |",
                  "|---|---|---|---|---|"]
        for a in ATTRS:
            s = sw["attributes"][a]
            lines.append(f"| {a} | {pct(s['partner']['pooled'])} | {pct(s['original']['pooled'])} | "
                         f"{pct(s['neither']['pooled'])} | {pct(bl['attributes'][a]['pooled'])} |")
        lines.append(f"| all 4 | {pct(sw['all4']['partner']['pooled'])} | {pct(sw['all4']['original']['pooled'])} | "
                     f"{pct(sw['all4']['neither']['pooled'])} | {pct(bl['all4_original']['pooled'])} |")
        lines += ["", "By the number of slots the event copies (partner's word / original's word):", "",
                  "| slots copied | " + " | ".join(ATTRS) + " |", "|---|" + "---|" * len(ATTRS)]
        for name, per in sw["attributes_by_slots"].items():
            lines.append(f"| {name} | " + " | ".join(f"{pct(per[a]['partner'])} / {pct(per[a]['original'])}"
                                                     for a in ATTRS) + " |")
        lines += ["", "Bootstrap over items (all 4 words are the partner's): "
                  f"{fmt_ci(sw['all4']['partner']['items'], 100, 1)}; where the baseline read the object right: "
                  "partner "
                  f"{pct(sw['all4_baseline_read_right']['partner']['pooled'])}, original "
                  f"{pct(sw['all4_baseline_read_right']['original']['pooled'])}.", "",
                  "| answer | swap | blank |", "|---|---|---|",
                  f"| changed vs baseline | {pct(sw['answer_changed']['pooled'])} | "
                  f"{pct(bl['answer_changed']['pooled'])} |",
                  f"| swap changes the true answer (counterfactual defined and different) | "
                  f"{pct(sw['answer_informative']['pooled'])} | |",
                  f"| ... and the answer follows the swap | {pct(sw['answer_follows_swap']['pooled'])} | |",
                  f"| ... and the answer stays the true one | {pct(sw['answer_keeps_truth']['pooled'])} | |"]
        if c["swap_skipped"]:
            lines += ["", "Items without swaps: " + "; ".join(f"{k}: {v}" for k, v in c["swap_skipped"].items())]
    lines += ["", "## Pointing along the trace", "",
              "Every copy event of the baseline traces; means over items (each item's mean in the bin), bootstrap 95% "
              "CIs. Slope: per-item OLS slope over position (items with >= 3 events).", ""]
    bins = result["position_bins"]
    head = " | ".join(f"{b / bins:.1f}–{(b + 1) / bins:.1f}" for b in range(bins))
    lines += [f"| condition | metric | {head} | late − early | slope | items declining |",
              "|---|---|" + "---|" * bins + "---|---|---|"]
    for label, c in conds.items():
        for metric in ("precision", "iou"):
            m = c["pointing"][metric]
            cell = m["by_position"]
            vals = " | ".join(fmt_ci({"mean": cell["mean"][b], "lo": cell["lo"][b], "hi": cell["hi"][b]})
                              for b in range(bins))
            share = m["share_items_declining"]
            lines.append(f"| {label} | {metric} | {vals} | {fmt_ci(m['late_minus_early'])} | {fmt_ci(m['slope'])} | "
                         f"{'–' if share is None else f'{100 * share:.0f}%'} |")
        counts = " | ".join(str(v) for v in c["pointing"]["iou"]["events_by_position"])
        lines.append(f"| {label} | events | {counts} | | | |")
    lines += ["", "By ordinal index of the copy (0 = first; the last bin is open):", "",
              "| condition | metric | " + " | ".join(str(i) if i < result["index_bins"] - 1 else f"{i}+"
                                                    for i in range(result["index_bins"])) + " |",
              "|---|---|" + "---|" * result["index_bins"]]
    for label, c in conds.items():
        for metric in ("precision", "iou"):
            cell = c["pointing"][metric]["by_index"]
            lines.append(f"| {label} | {metric} | " + " | ".join(
                fmt_ci({"mean": cell["mean"][b], "lo": cell["lo"][b], "hi": cell["hi"][b]}, digits=2)
                for b in range(result["index_bins"])) + " |")
    for name, m in result["models"].items():
        if m.get("note"):
            lines += ["", f"{name}: {m['note']}"]
    lines += ["", "Figure: faithfulness.png; every number: faithfulness.json.", ""]
    return "\n".join(lines)
