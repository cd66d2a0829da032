"""Grounding by attention contrast (the paper's Algorithm 1, App. E): a box for each object description, from a
Qwen2.5-VL-family model's own attention, batched and sharing each image's prefix.

    records (image(s), description, optional ground-truth box), grouped by their images
      per group:  images + instruction prefix --one forward--> KV cache (+ copy memory)        [shared]
                  suffixes "..{description}..<assistant>" and "..{baseline}..<assistant>" of all objects, unique,
                  right-padded --one batched forward on the expanded cache--> attention of each suffix's final
                  prompt position over the image tokens (`analysis.probe.AttentionProbe`, one group per image
                  token; only the analysed layers run eager attention, the others keep SDPA)
      per object: A = mean over layers (and heads, or a chosen subset) with the description, A' = the same with
                  the description replaced by `baseline`;  R = (A + eps) / (A' + eps),  eps = eps_scale * mean(A')
                  peak = argmax R;  candidate boxes around the peak at each crop ratio; keep the box with the
                  sharpest inside/outside contrast of R  ->  box in original-image pixels + evidence

`naive=True` runs the same thing as two full forwards per object (images encoded every time): the reference the
shared path is tested and benchmarked against (same maps within float tolerance, same boxes).

Choices where the paper is silent (each an option of `GroundOptions`):

* prompt: the user turn is the images then `prompt` with `{description}` filled in ("Locate the {description}."),
  the assistant turn opened (plus `answer_prefix`, empty by default); the *final prompt position* is the last
  token of that text, i.e. the position that would produce the first answer token.
* without the name: the same prompt with the description replaced by `baseline` (default ""), so every object of
  an image shares one baseline row. T is the object *description* (the `obj_list` text, self-contained by
  construction), not the `detect` query.
* layers: `layers=None` = `probe.default_layers` (an early, a middle and the last layer: the paper's 2 / 14 / 27
  analysis layers, scaled); `heads` = {layer: [heads]} averages only those heads ("localization heads").
* zero guard: eps = `eps_scale` x mean(A') over the image tokens (default 0.05): a token that neither prompt
  attends to cannot win the peak by a ratio of two tiny numbers.
* crop ratios: box side = ratio x image side, centred on the peak cell, shifted to lie inside the image;
  default (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65).
* centre: "peak" (the peak cell's centre) or "centroid" (default): the centroid of the cells the peak-centred
  candidate touches, weighted max(R - mean R outside it, 0) -- a sub-cell centre, since an object can be smaller
  than a cell or straddle cells.
* sharpness: "corr" (default) -- the correlation over the peak's image between R and each cell's share inside
  the box (for a hard inside/outside split this is the square root of Otsu's between-class / total variance; with
  shares it also scores boxes smaller than a cell). "otsu" -- the between-class variance w_in * w_out *
  (mean_in - mean_out)^2 with cells weighted by their share; "diff" (mean_in - mean_out) and "ratio" (mean_in /
  mean_out). On maps that are exactly an object's cell coverage (the ceiling of any attention map), "corr" gives
  mean IoU 0.61 on the shapes test scenes where "otsu" gives 0.43 (docs/results/grounding-shapes.md).
* image scale: `image_scale` resizes every image (bicubic) before the processor, for models whose merged cells
  are coarse next to the objects (the shapes world: objects of 18 and 32 px, cells of 28 px); boxes, peaks and
  scores stay in the original image's pixels. Default 1 (the image as given).
* confidence: `contrast` = R at the peak / median R; below `min_contrast` the result is kept but marked
  `low_confidence` (a description that names nothing in the image usually lands there).

Bad input never stops a run: an empty description, a record without images, an unreadable image, text the
tokenizer would read as markup, a ground-truth box outside the image give a per-record `error` (or, for the box,
`gt_error` beside a box still produced); see `ground_records`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..files import dumps, write_atomic
from ..geometry import box_iou
from ..jsonl import drop_partial_last_line
from ..layout import SlotMap

__all__ = ["GroundOptions", "GroundRecord", "Grounder", "MapSet", "BoxChoice", "RecordError", "contrast_map",
           "choose_box", "expand_cache", "ground_records", "ground_file", "read_records", "shapes_records",
           "score_against", "evaluate_rows", "centre_box_baseline", "SHARPNESS", "CENTRES", "DEFAULT_RATIOS"]

SHARPNESS = ("otsu", "corr", "diff", "ratio")
CENTRES = ("centroid", "peak")
DEFAULT_RATIOS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65)


# ---------------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class GroundOptions:
    """How objects are grounded (see the module docstring for each choice)."""

    prompt: str = "Locate the {description}."
    baseline: str = ""
    answer_prefix: str = ""
    layers: tuple[int, ...] | None = None
    heads: dict | None = None  # {layer: [head, ...]}
    crop_ratios: tuple[float, ...] = DEFAULT_RATIOS
    centre: str = "centroid"
    sharpness: str = "corr"
    eps_scale: float = 0.05
    min_contrast: float = 1.5
    image_scale: float = 1.0  # images are resized by this factor before encoding (finer cells); boxes stay original
    batch_size: int = 32  # suffix rows per forward
    query_chunk: int = 128

    def __post_init__(self):
        if "{description}" not in self.prompt and "{description}" not in self.answer_prefix:
            raise ValueError("GroundOptions: prompt (or answer_prefix) must contain '{description}'")
        if self.sharpness not in SHARPNESS:
            raise ValueError(f"GroundOptions: sharpness must be one of {SHARPNESS}, got {self.sharpness!r}")
        if self.centre not in CENTRES:
            raise ValueError(f"GroundOptions: centre must be one of {CENTRES}, got {self.centre!r}")
        if not self.crop_ratios or any(not 0 < r <= 1 for r in self.crop_ratios):
            raise ValueError(f"GroundOptions: crop ratios must be in (0, 1], got {self.crop_ratios}")
        if self.eps_scale < 0 or self.batch_size < 1 or not self.image_scale > 0:
            raise ValueError("GroundOptions: eps_scale must be >= 0, batch_size >= 1 and image_scale > 0")
        object.__setattr__(self, "crop_ratios", tuple(float(r) for r in self.crop_ratios))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.heads is not None:
            object.__setattr__(self, "heads", {int(k): [int(h) for h in v] for k, v in self.heads.items()})

    def texts(self, description: str) -> tuple[str, str]:
        """(user text, assistant prefix) with `description` filled in."""
        return (self.prompt.replace("{description}", description),
                self.answer_prefix.replace("{description}", description))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crop_ratios"] = list(self.crop_ratios)
        d["layers"] = None if self.layers is None else list(self.layers)
        d["heads"] = None if self.heads is None else {str(k): v for k, v in self.heads.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GroundOptions":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("crop_ratios") is not None:
            d["crop_ratios"] = tuple(d["crop_ratios"])
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        return cls(**d)


# ---------------------------------------------------------------------------------------------------- records
class RecordError(ValueError):
    """A record that cannot be grounded: `record_id`, `field`, `reason`."""

    def __init__(self, record_id: Any, field_: str, reason: str):
        self.record_id, self.field, self.reason = record_id, field_, reason
        super().__init__(f"record {record_id!r}: field {field_!r}: {reason}")


@dataclass
class GroundRecord:
    """One object to ground. `images`: paths or PIL images (all shown to the model, in order); `box`: optional
    ground truth (x0, y0, x1, y1) in pixels of image `image_index`; `meta` is copied to the output row."""

    id: str
    images: list
    description: str
    box: tuple[float, float, float, float] | None = None
    image_index: int = 0
    meta: dict = field(default_factory=dict)

    def image_key(self) -> tuple:
        """Records with the same key share one encoded prefix."""
        return tuple(str(p) if isinstance(p, (str, Path)) else f"obj:{id(p)}" for p in self.images)


def read_records(path: str | Path) -> list[GroundRecord | RecordError]:
    """Grounding records from a JSONL file (one object a line: {"id", "image" | "images", "description",
    optional "box", "image_index"}; relative image paths are relative to the file's folder) or from a shapes
    split (a folder with items.jsonl, or that items.jsonl: see `shapes_records`). A malformed line becomes a
    RecordError in place."""
    p = Path(path)
    if p.is_dir() or (p.name == "items.jsonl" and _looks_like_shapes(p)):
        return list(shapes_records(p if p.is_dir() else p.parent))
    out: list[GroundRecord | RecordError] = []
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rid = f"line{n}"
            try:
                row = json.loads(line)
                rid = str(row.get("id", rid))
                images = row.get("images", [row["image"]] if "image" in row else [])
                if isinstance(images, (str, Path)):
                    images = [images]
                images = [str(p.parent / im) if not Path(im).is_absolute() else im for im in images]
                box = row.get("box")
                out.append(GroundRecord(rid, images, str(row.get("description", "")),
                                        tuple(float(v) for v in box) if box is not None else None,
                                        int(row.get("image_index", 0)),
                                        {k: v for k, v in row.items()
                                         if k not in ("id", "image", "images", "description", "box", "image_index")}))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                out.append(RecordError(rid, "line", f"malformed record: {e}"))
    return out


def _looks_like_shapes(path: Path) -> bool:
    with path.open(encoding="utf-8") as fh:
        first = fh.readline()
    try:
        return "scene" in json.loads(first)
    except ValueError:
        return False


def shapes_records(split: str | Path, limit: int | None = None) -> Iterable[GroundRecord]:
    """One record per object of each scene of a shapes split (`pointcopy shapes data`): description =
    `data.shapes.traces.describe(obj)` ("large red shiny cube"), box = the object's box; `meta["ambiguous"]` is
    True when another object of the scene has the same description (no grounder can tell them apart);
    `meta["other_boxes"]` are the scene's other objects (scored: does a wrong peak land on another object?)."""
    from ..data.shapes.build import read_items
    from ..data.shapes.scene import Scene
    from ..data.shapes.traces import describe

    split = Path(split)
    for row in read_items(split)[:limit]:
        scene = Scene.from_dict(row["scene"])
        words = [describe(o) for o in scene.objects]
        image = str(split / "images" / f"{row['id']}.png")
        for o, desc in zip(scene.objects, words):
            others = [list(p.box) for p in scene.objects if p.id != o.id]
            yield GroundRecord(f"{row['id']}/obj{o.id}", [image], desc, tuple(float(v) for v in o.box), 0,
                               {"ambiguous": words.count(desc) > 1, "size": o.size, "n_objects": len(words),
                                "other_boxes": others})


# ---------------------------------------------------------------------------------------------------- maps
@dataclass
class MapSet:
    """Attention of one group's texts: `with_name[i]` / `without[i]` are (n_layers, G) for object i, over the
    G image tokens of the group (slot order); `slot_map` places them."""

    with_name: list[torch.Tensor]
    without: list[torch.Tensor]
    slot_map: SlotMap
    layers: tuple[int, ...]


def contrast_map(a: torch.Tensor, a_base: torch.Tensor, eps_scale: float = 0.05) -> torch.Tensor:
    """R = (A + eps) / (A' + eps), eps = eps_scale * mean(A') (a tiny absolute floor if A' is all zero)."""
    a, a_base = a.double(), a_base.double()
    eps = eps_scale * float(a_base.mean()) + 1e-12
    return (a + eps) / (a_base + eps)


@dataclass
class BoxChoice:
    box: tuple[float, float, float, float]
    image: int
    peak_slot: int
    peak_row: int
    peak_col: int
    ratio_at_peak: float  # R at the peak
    contrast: float  # R at the peak / median R
    crop_ratio: float
    sharpness: float
    candidates: list[dict] = field(default_factory=list)


def _cell_overlap(box, rows: int, cols: int, size: tuple[int, int]) -> np.ndarray:
    """(rows, cols) fraction of each cell's area inside `box` (original pixels)."""
    w, h = size
    cw, ch = w / cols, h / rows
    x0, y0, x1, y1 = box
    xs = np.clip(np.minimum(x1, (np.arange(cols) + 1) * cw) - np.maximum(x0, np.arange(cols) * cw), 0, None) / cw
    ys = np.clip(np.minimum(y1, (np.arange(rows) + 1) * ch) - np.maximum(y0, np.arange(rows) * ch), 0, None) / ch
    return ys[:, None] * xs[None, :]


def _sharpness(values: np.ndarray, inside: np.ndarray, kind: str) -> tuple[float, float, float]:
    """(sharpness, mean inside, mean outside) of `values` with cells weighted `inside` in [0, 1]."""
    n = values.size
    w_in, w_out = float(inside.sum()), float((1 - inside).sum())
    if w_in <= 1e-9 or w_out <= 1e-9:
        return -math.inf, float(values.mean()), float(values.mean())
    m_in = float((inside * values).sum() / w_in)
    m_out = float(((1 - inside) * values).sum() / w_out)
    if kind == "otsu":
        s = (w_in / n) * (w_out / n) * (m_in - m_out) ** 2 * (1 if m_in >= m_out else -1)
    elif kind == "corr":
        s = float(np.corrcoef(inside.ravel(), values.ravel())[0, 1]) if values.std() > 0 and inside.std() > 0 else 0.0
    elif kind == "diff":
        s = m_in - m_out
    else:
        s = m_in / m_out if m_out > 0 else math.inf
    return s, m_in, m_out


def _place(cx: float, cy: float, bw: float, bh: float, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A bw x bh box centred at (cx, cy), shifted (not shrunk) to lie inside the image (clipped if larger)."""
    w, h = size
    bw, bh = min(bw, w), min(bh, h)
    x0 = min(max(cx - bw / 2, 0.0), w - bw)
    y0 = min(max(cy - bh / 2, 0.0), h - bh)
    return (x0, y0, x0 + bw, y0 + bh)


def choose_box(r: torch.Tensor | np.ndarray, slot_map: SlotMap, crop_ratios: Sequence[float] = DEFAULT_RATIOS,
               centre: str = "centroid", sharpness: str = "corr") -> BoxChoice:
    """Algorithm 1, step 5: the peak of the contrast map `r` (G,) over the slots of `slot_map`, candidate boxes
    around it at each crop ratio, the one with the sharpest inside/outside contrast (within the peak's image).
    Ties (within a relative 1e-6) go to the earlier ratio (the smaller box, with ratios ascending)."""
    r = np.asarray(r.detach().cpu() if isinstance(r, torch.Tensor) else r, dtype=np.float64)
    if r.shape != (slot_map.num_slots,):
        raise ValueError(f"contrast map has shape {r.shape} but the images have {slot_map.num_slots} tokens")
    peak = int(np.argmax(r))
    image, row, col = slot_map.locate(peak)
    grid = slot_map.grids[image]
    size = slot_map.image_sizes[image]
    lo = slot_map.offsets[image]
    values = r[lo:lo + grid.rows * grid.cols].reshape(grid.rows, grid.cols)
    cw, ch = size[0] / grid.cols, size[1] / grid.rows
    pcx, pcy = (col + 0.5) * cw, (row + 0.5) * ch
    centres_x = (np.arange(grid.cols) + 0.5) * cw
    centres_y = (np.arange(grid.rows) + 0.5) * ch
    best, candidates = None, []
    for ratio in crop_ratios:
        bw, bh = ratio * size[0], ratio * size[1]
        box = _place(pcx, pcy, bw, bh, size)
        if centre == "centroid":
            inside = _cell_overlap(box, grid.rows, grid.cols, size)
            _, _, m_out = _sharpness(values, inside, sharpness)
            # every cell the box touches counts whole: a cell half inside still shows the object
            wts = (inside > 0) * np.clip(values - m_out, 0, None)
            if wts.sum() > 0:
                cx = float((wts.sum(0) * centres_x).sum() / wts.sum())
                cy = float((wts.sum(1) * centres_y).sum() / wts.sum())
                box = _place(cx, cy, bw, bh, size)
        inside = _cell_overlap(box, grid.rows, grid.cols, size)
        s, m_in, m_out = _sharpness(values, inside, sharpness)
        candidates.append({"ratio": ratio, "box": [round(v, 2) for v in box], "sharpness": s})
        # a near-tie keeps the earlier ratio: boxes inside one cell score alike (any share of that cell correlates
        # the same), and float noise between two equal maps must not pick different boxes
        if best is None or s > best[0] + 1e-6 * max(abs(best[0]), 1e-9):
            best = (s, ratio, box)
    s, ratio, box = best
    median = float(np.median(r))
    return BoxChoice(tuple(round(float(v), 2) for v in box), image, peak, row, col, float(r[peak]),
                     float(r[peak] / median) if median > 0 else math.inf, ratio, float(s), candidates)


# ---------------------------------------------------------------------------------------------------- model side
class Grounder:
    """Attention-contrast grounding with one model (see the module docstring).

    `maps(images, descriptions)` -> MapSet (shared prefix, batched suffixes; `naive=True`: two full forwards per
    object); `ground(records)` -> one output row (dict) per record."""

    def __init__(self, model, processor, options: GroundOptions = GroundOptions()):
        from ..analysis.probe import default_layers, num_text_layers
        from ..inference import check_layout

        check_layout(model, processor)
        self.model, self.processor, self.options = model, processor, options
        n = num_text_layers(model)
        layers = options.layers if options.layers is not None else default_layers(n)
        self.layers = tuple(sorted({(x + n if x < 0 else x) for x in layers}))
        bad = [x for x in self.layers if not 0 <= x < n]
        if bad:
            raise ValueError(f"layers {bad} do not exist: the text decoder has {n} layers (0..{n - 1})")

    # ---- text ------------------------------------------------------------------------------------------------
    def prompt(self, description: str, n_images: int) -> str:
        from ..inference import prompt_text

        user, prefix = self.options.texts(description)
        self.processor.check_user_text(prefix, what="answer prefix")
        return prompt_text(self.processor, user, n_images, what="description") + prefix

    def _ids(self, text: str, slot_map: SlotMap) -> list[int]:
        from ..tokens import encode_with_pointers

        return encode_with_pointers(self.processor.tokenizer, self.processor.expand_image_pads(text, slot_map),
                                    self.processor.copy_token_start)

    def _encode(self, images):
        """Tensors of the images (resized by `image_scale` first) and their SlotMap in *original* pixels (the
        grids of what the model sees, the sizes of what was given), so every box is in original coordinates."""
        from PIL import Image

        from ..images import open_rgb, to_rgb

        images = [open_rgb(im) if isinstance(im, (str, Path)) else to_rgb(im) for im in images]
        sizes = [im.size for im in images]
        scale = self.options.image_scale
        if scale != 1:
            images = [im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                Image.Resampling.BICUBIC) for im in images]
        data, slot_map = self.processor.encode_images(images)
        if slot_map.num_slots == 0:
            raise ValueError("no image tokens")
        slot_map = SlotMap(slot_map.grids, tuple(sizes))
        device = self.model.device
        return {k: v.to(device) for k, v in data.items()}, slot_map

    # ---- attention maps ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def maps(self, images: list, descriptions: Sequence[str], naive: bool = False) -> MapSet:
        """Attention of the final prompt position over the image tokens, with and without each description."""
        if not descriptions:
            raise ValueError("no description")
        vision, slot_map = self._encode(images)
        texts = {}
        pairs = []
        for d in descriptions:
            with_text, base_text = self.prompt(d, len(images)), self.prompt(self.options.baseline, len(images))
            pairs.append((with_text, base_text))
            for t in (with_text, base_text):
                if t not in texts:
                    texts[t] = self._ids(t, slot_map)
        image_pos = [p for p, i in enumerate(next(iter(texts.values()))) if i == self.processor.image_token_id]
        if len(image_pos) != slot_map.num_slots:
            raise ValueError(f"{len(image_pos)} image tokens in the prompt but the images have {slot_map.num_slots}")
        if naive:
            rows = {}
            for with_text, base_text in pairs:  # two full forwards per object, as a grounder without sharing does
                rows[with_text] = self._full_forward(texts[with_text], vision, image_pos)
                rows[base_text] = self._full_forward(texts[base_text], vision, image_pos)
        else:
            rows = self._shared_forward(texts, vision, image_pos)
        return MapSet([rows[w] for w, _ in pairs], [rows[b] for _, b in pairs], slot_map, self.layers)

    def _probe(self, groups):
        from ..analysis.probe import AttentionProbe

        return AttentionProbe(self.model, self.layers, groups, heads=self.options.heads,
                              query_chunk=self.options.query_chunk)

    def _groups(self, length: int, image_pos: list[int], batch: int) -> torch.Tensor:
        groups = torch.zeros(1, length, len(image_pos))
        groups[0, image_pos, torch.arange(len(image_pos))] = 1.0
        return groups.expand(batch, -1, -1)

    def _full_forward(self, ids: list[int], vision: dict, image_pos: list[int]) -> torch.Tensor:
        """(n_layers, G): one cache-free forward over the whole prompt; the last position's row."""
        x = torch.tensor([ids], device=self.model.device)
        with self._probe(self._groups(len(ids), image_pos, 1)) as probe:
            self.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, logits_to_keep=1, **vision)
        masses = probe.masses()
        return torch.stack([masses[layer][0, -1] for layer in self.layers]).cpu()

    def _shared_forward(self, texts: dict[str, list[int]], vision: dict, image_pos: list[int]) -> dict:
        """{text: (n_layers, G)}: the longest common prefix of all texts once (images encoded there), then every
        text's remaining suffix in right-padded batches on a copy of the prefix cache expanded to the batch."""
        from ..model.memory import PointCopyCache
        from ..analysis.probe import text_config

        seqs = list(texts.values())
        shortest = min(len(s) for s in seqs)
        n = 0
        while n < shortest - 1 and all(s[n] == seqs[0][n] for s in seqs):
            n += 1
        if image_pos[-1] >= n:
            raise ValueError("the prompt puts text that differs between objects before an image; the description "
                             "must come after the images")
        prefix = torch.tensor([seqs[0][:n]], device=self.model.device)
        cache = PointCopyCache(config=text_config(self.model))
        self.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), cache=cache, use_cache=True,
                   logits_to_keep=1, **vision)
        out = {}
        items = list(texts.items())
        pad = self.processor.tokenizer.pad_token_id or 0
        for lo in range(0, len(items), self.options.batch_size):
            chunk = items[lo:lo + self.options.batch_size]
            suffixes = [ids[n:] for _, ids in chunk]
            width = max(len(s) for s in suffixes)
            x = torch.full((len(chunk), width), pad, dtype=torch.long)
            for b, s in enumerate(suffixes):
                x[b, :len(s)] = torch.tensor(s)
            x = x.to(self.model.device)
            rows_cache = expand_cache(cache, len(chunk), text_config(self.model))
            with self._probe(self._groups(n + width, image_pos, len(chunk))) as probe:
                self.model(input_ids=x, cache=rows_cache, use_cache=True, logits_to_keep=1)
            masses = probe.masses()
            for b, ((text, _), s) in enumerate(zip(chunk, suffixes)):
                out[text] = torch.stack([masses[layer][b, len(s) - 1] for layer in self.layers]).cpu()
        return out

    # ---- records ----------------------------------------------------------------------------------------------
    def ground(self, records: Sequence[GroundRecord], naive: bool = False, keep_maps: bool = False) -> list[dict]:
        """One output row per record (records with the same images share one prefix); errors are rows too."""
        groups: dict[tuple, list[GroundRecord]] = {}
        for rec in records:
            groups.setdefault(rec.image_key(), []).append(rec)
        rows = []
        for group in groups.values():
            rows.extend(self.ground_group(group, naive=naive, keep_maps=keep_maps))
        order = {rec.id: i for i, rec in enumerate(records)}
        return sorted(rows, key=lambda r: order.get(r["id"], 0))

    def ground_group(self, group: Sequence[GroundRecord], naive: bool = False, keep_maps: bool = False) -> list[dict]:
        """Rows of records that share their images (one prefix)."""
        from ..images import open_rgb

        rows: dict[str, dict] = {}
        good: list[GroundRecord] = []
        images = None
        for rec in group:
            try:
                if not rec.images:
                    raise RecordError(rec.id, "images", "the record has no image (nothing to ground in)")
                if not rec.description or not rec.description.strip():
                    raise RecordError(rec.id, "description", "empty description (no name to contrast)")
                try:
                    self.processor.check_user_text(rec.description, what="description")
                except ValueError as e:
                    raise RecordError(rec.id, "description", str(e)) from None
                if images is None:
                    try:
                        images = [im if not isinstance(im, (str, Path)) else open_rgb(im) for im in rec.images]
                    except Exception as e:  # noqa: BLE001 -- any unreadable image is this group's error
                        raise RecordError(rec.id, "images", f"cannot read image: {e}") from None
                good.append(rec)
            except RecordError as e:
                rows[rec.id] = error_row(rec, e.field, e.reason)
        if good:
            try:
                maps = self.maps(images, [rec.description for rec in good], naive=naive)
            except (ValueError, RuntimeError) as e:
                for rec in good:
                    rows[rec.id] = error_row(rec, "model", str(e))
            else:
                for i, rec in enumerate(good):
                    rows[rec.id] = self._row(rec, maps, i, keep_maps)
        return [rows[rec.id] for rec in group]

    def _row(self, rec: GroundRecord, maps: MapSet, i: int, keep_maps: bool) -> dict:
        o = self.options
        a, a_base = maps.with_name[i].mean(0), maps.without[i].mean(0)
        r = contrast_map(a, a_base, o.eps_scale)
        choice = choose_box(r, maps.slot_map, o.crop_ratios, o.centre, o.sharpness)
        row = {"id": rec.id, "description": rec.description, "image": choice.image, "box": list(choice.box),
               "peak": {"slot": choice.peak_slot, "image": choice.image, "row": choice.peak_row,
                        "col": choice.peak_col},
               "ratio_at_peak": round(choice.ratio_at_peak, 5), "contrast": round(choice.contrast, 5),
               "crop_ratio": choice.crop_ratio, "sharpness": float(f"{choice.sharpness:.5g}"),
               "low_confidence": bool(choice.contrast < o.min_contrast),
               "image_size": list(maps.slot_map.image_sizes[choice.image]),
               "grid": [maps.slot_map.grids[choice.image].rows, maps.slot_map.grids[choice.image].cols],
               "error": None}
        # per-layer peaks: which layer localises (the "selected empirically" of the paper's layer choice)
        per_layer = {}
        for k, layer in enumerate(maps.layers):
            rl = contrast_map(maps.with_name[i][k], maps.without[i][k], o.eps_scale)
            per_layer[str(layer)] = int(torch.argmax(rl))
        row["layer_peaks"] = per_layer
        if rec.meta:
            row["meta"] = rec.meta
        if rec.box is not None:
            row.update(score_against(rec, maps.slot_map, choice.box, choice.image, choice.peak_slot,
                                     {int(k): v for k, v in per_layer.items()}))
        if keep_maps:
            row["maps"] = {"with": maps.with_name[i], "without": maps.without[i], "r": r}
        return row


def expand_cache(cache, batch: int, config=None):
    """A new PointCopyCache holding `cache`'s single row `batch` times (KV of every layer, copy memory, text
    offsets); `cache` itself is not changed, so it can be expanded again for the next batch. `config`: the text
    decoder's config (cache layer types)."""
    from ..model.memory import PointCopyCache

    data = [(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1)) for layer in cache.layers]
    new = PointCopyCache(ddp_cache_data=data, config=config)
    index = torch.zeros(batch, dtype=torch.long, device=cache.rope_deltas.device)
    new.copy_memory = cache.copy_memory.select(index) if cache.copy_memory is not None else None
    new.rope_deltas = cache.rope_deltas[index]
    return new


# ---------------------------------------------------------------------------------------------------- scoring
def error_row(rec: GroundRecord, field_: str, reason: str) -> dict:
    row = {"id": rec.id, "description": rec.description, "box": None, "error": {"field": field_, "reason": reason}}
    if rec.meta:
        row["meta"] = rec.meta
    return row


def score_against(rec: GroundRecord, slot_map: SlotMap, box, image: int, peak_slot: int,
                  layer_peaks: dict[int, int] | None = None) -> dict:
    """IoU with the ground-truth box and whether the peak cell is one of the cells the box covers (the official
    box -> cell rule). A ground-truth box outside its image gives `gt_error` and no score."""
    gi = rec.image_index
    if not 0 <= gi < slot_map.num_images:
        return {"gt_error": f"image_index {gi} but the record has {slot_map.num_images} images"}
    w, h = slot_map.image_sizes[gi]
    x0, y0, x1, y1 = rec.box
    if not (x1 > x0 and y1 > y0):
        return {"gt_error": f"ground-truth box {list(rec.box)} is empty or inverted"}
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        return {"gt_error": f"ground-truth box {list(rec.box)} lies outside the {w}x{h} image"}
    gt = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
    cells = set(slot_map.box_to_slots(gt, gi))
    out = {"gt_box": list(rec.box), "iou": round(box_iou(box, gt), 4) if image == gi else 0.0,
           "peak_inside": peak_slot in cells, "gt_cell_share": round(len(cells) / slot_map.num_slots, 5)}
    others = (rec.meta or {}).get("other_boxes")
    if others is not None:  # a peak on another object: the grounder found *an* object, not the named one
        out["peak_on_other"] = any(peak_slot in slot_map.box_to_slots(b, gi) for b in others)
    if gt != tuple(rec.box):
        out["gt_note"] = "ground-truth box clipped to the image"
    if layer_peaks:
        out["layer_peak_inside"] = {str(k): v in cells for k, v in layer_peaks.items()}
    return out


def centre_box_baseline(rows: Sequence[dict]) -> dict:
    """Trivial baseline (c): a box of the median ground-truth size centred in the image, for every scored row
    ("peak" = the image centre); and the chance that a uniformly random image token lies in the object's cells."""
    scored = [r for r in rows if r.get("iou") is not None]
    if not scored:
        return {"n": 0}
    ws = [r["gt_box"][2] - r["gt_box"][0] for r in scored]
    hs = [r["gt_box"][3] - r["gt_box"][1] for r in scored]
    mw, mh = float(np.median(ws)), float(np.median(hs))
    ious, inside = [], []
    for r in scored:
        w, h = r["image_size"]
        box = (w / 2 - mw / 2, h / 2 - mh / 2, w / 2 + mw / 2, h / 2 + mh / 2)
        ious.append(box_iou(box, r["gt_box"]))
        gx0, gy0, gx1, gy1 = r["gt_box"]
        inside.append(gx0 <= w / 2 <= gx1 and gy0 <= h / 2 <= gy1)
    out = {"n": len(scored), "mean_iou": round(float(np.mean(ious)), 4),
           "peak_inside": round(float(np.mean(inside)), 4), "box_size": [mw, mh]}
    if all("gt_cell_share" in r for r in scored):  # a peak on a uniformly random image token
        out["random_peak_inside"] = round(float(np.mean([r["gt_cell_share"] for r in scored])), 4)
    return out


def evaluate_rows(rows: Sequence[dict], exclude_ambiguous: bool = True) -> dict:
    """Summary of output rows: counts, mean IoU, share of peaks inside their own box (all scored rows, and
    without objects whose description is shared with another object of their scene), per-layer peak shares,
    the centre-box baseline on the same rows."""
    ok = [r for r in rows if not r.get("error")]
    scored = [r for r in ok if r.get("iou") is not None]
    unamb = [r for r in scored if not (r.get("meta") or {}).get("ambiguous")]
    use = unamb if exclude_ambiguous else scored

    def summary(rs):
        if not rs:
            return {"n": 0}
        out = {"n": len(rs), "mean_iou": round(float(np.mean([r["iou"] for r in rs])), 4),
               "peak_inside": round(float(np.mean([bool(r["peak_inside"]) for r in rs])), 4),
               "iou_at_0.5": round(float(np.mean([r["iou"] >= 0.5 for r in rs])), 4),
               "low_confidence": round(float(np.mean([bool(r.get("low_confidence")) for r in rs])), 4)}
        if all("peak_on_other" in r for r in rs):
            out["peak_on_other"] = round(float(np.mean([bool(r["peak_on_other"]) for r in rs])), 4)
        layers = sorted({k for r in rs for k in (r.get("layer_peak_inside") or {})}, key=int)
        if layers:
            out["layer_peak_inside"] = {k: round(float(np.mean([bool(r["layer_peak_inside"].get(k)) for r in rs])), 4)
                                        for k in layers}
        return out

    return {"rows": len(rows), "errors": len(rows) - len(ok), "gt_errors": sum(1 for r in ok if r.get("gt_error")),
            "scored": len(scored), "ambiguous": len(scored) - len(unamb),
            "model": summary(use), "model_all": summary(scored), "centre_baseline": centre_box_baseline(use)}


# ---------------------------------------------------------------------------------------------------- runner
RUN_FILE = "run.json"
ROWS_FILE = "boxes.jsonl"
REPORT_FILE = "report.json"


def ground_records(grounder: Grounder, records: Sequence[GroundRecord | RecordError], out_dir: str | Path,
                   *, settings: dict | None = None, progress: bool = False,
                   after_group: Callable[[int], None] | None = None, echo=print) -> list[dict]:
    """Ground every record into OUT/boxes.jsonl (one row per record, errors included), appended image group by
    image group and flushed, so a killed run resumes where it stopped: a torn last line is dropped, ids already
    there are skipped, nothing is lost or written twice. OUT/run.json records the settings; a rerun with other
    settings is refused. Writes OUT/report.json (`evaluate_rows`) at the end. Returns all rows in record order."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    settings["options"] = grounder.options.to_dict() if grounder.options is not None else None
    settings["layers"] = list(grounder.layers)
    run_file = out / RUN_FILE
    if run_file.exists():
        before, wanted = json.loads(run_file.read_text()), json.loads(dumps(settings))
        if before != wanted:
            diff = sorted(k for k in set(before) | set(wanted) if before.get(k) != wanted.get(k))
            raise ValueError(f"{out} holds a grounding run with other settings ({', '.join(diff)} differ): use "
                             f"another --out")
    else:
        write_atomic(run_file, dumps(settings, indent=1))
    rows_file = out / ROWS_FILE
    drop_partial_last_line(rows_file)
    done: dict[str, dict] = {}
    if rows_file.exists():
        for line in rows_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["id"]] = row
    seen: set[str] = set()
    todo_groups: dict[tuple, list[GroundRecord]] = {}
    pending: list[dict] = []
    for rec in records:
        rid = rec.record_id if isinstance(rec, RecordError) else rec.id
        if rid in seen:
            echo(f"skipped: duplicate record id {rid!r}")
            continue
        seen.add(rid)
        if rid in done:
            continue
        if isinstance(rec, RecordError):
            pending.append({"id": str(rid), "box": None, "error": {"field": rec.field, "reason": rec.reason}})
        else:
            todo_groups.setdefault(rec.image_key(), []).append(rec)
    n_todo = sum(len(g) for g in todo_groups.values())
    started = time.perf_counter()
    with rows_file.open("a", encoding="utf-8") as fh, tqdm(total=n_todo, desc="ground", unit="obj",
                                                           disable=not progress) as bar:
        for row in pending:
            fh.write(dumps(row) + "\n")
            done[row["id"]] = row
        fh.flush()
        for k, group in enumerate(todo_groups.values()):
            for row in grounder.ground_group(group):
                fh.write(dumps(_jsonable(row)) + "\n")
                done[row["id"]] = row
            fh.flush()
            bar.update(len(group))
            if after_group is not None:
                after_group(k)
    seconds = time.perf_counter() - started
    ordered = [done[i] for i in (r.record_id if isinstance(r, RecordError) else r.id for r in records) if i in done]
    ordered = list({r["id"]: r for r in ordered}.values())
    report = evaluate_rows(ordered)
    report["seconds_this_run"] = round(seconds, 2)
    report["objects_this_run"] = n_todo
    write_atomic(out / REPORT_FILE, dumps(report, indent=1))
    return ordered


def _jsonable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "maps"}


def ground_file(model_path: str | Path, records_path: str | Path, out_dir: str | Path,
                options: GroundOptions = GroundOptions(), *, limit: int | None = None, threads: int | None = None,
                progress: bool = False, echo=print) -> list[dict]:
    """`pointcopy ground`: load the model (`analysis.traces.load_model`), read the records, ground them."""
    from ..analysis.traces import load_model

    model, processor, info = load_model(model_path, threads=threads)
    records = read_records(records_path)
    if limit is not None:
        records = records[:limit]
    grounder = Grounder(model, processor, options)
    settings = {"model": str(model_path), "model_type": info.model_type, "records": str(records_path),
                "limit": limit}
    return ground_records(grounder, records, out_dir, settings=settings, progress=progress, echo=echo)
