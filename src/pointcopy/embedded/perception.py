"""Perception warm-up of the shapes-tiny vision tower: per-cell attribute supervision before the LM sees a trace.

A released v1 model starts from Qwen2.5-VL, whose vision tower was pretrained on web-scale images; shapes-tiny's
tower is random. Frozen and random, it leaves the language model to decode shape and material from random
projections of 14-px patches: the held-out error analysis of the 0.587 checkpoint found 84 of 124 wrong answers
caused by a misread attribute (colour right for only ~0.78 of objects, with confusions like yellow -> gray that no
pixel similarity explains). This stage gives the tower what a pretrained encoder would have: every merged cell
that a pointer would copy for an object (the official box -> cell rule) is trained to carry that object's size,
colour, material and shape, linearly readable by a throw-away linear head, both per cell and from the mean of
the object's copied cells (the set of tokens a pointer puts into the LM's input).

    cell_labels(objects, image_size, grid)                  -> (cells, 5): object?, size, colour, material, shape
    pretrain_vision(model, processor, items, images, steps) -> trains model.model.visual in place; held-out acc.

It uses only images and scene ground truth (no traces), so every ablation variant can share the same tower.
"""

from __future__ import annotations

import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from ..data.shapes.scene import COLORS, MATERIALS, SHAPES, SIZES
from ..geometry import MergedGrid, box_to_cells, box_area

__all__ = ["HEADS", "cell_labels", "pretrain_vision"]

IGNORE = -100
# attribute -> its values (class index = position); heads are "object" (vs background) then these, in this order
_VOCAB = {"size": list(SIZES), "color": list(COLORS), "material": list(MATERIALS), "shape": list(SHAPES)}
HEADS: dict[str, int] = {"object": 2, **{name: len(values) for name, values in _VOCAB.items()}}


def _attribute_targets(obj: dict) -> list[int]:
    """Class index of each attribute of a scene object, in `_VOCAB` order."""
    return [_VOCAB[a].index(obj[a]) for a in _VOCAB]


def _overlap(box, cell_box) -> float:
    x0, y0 = max(box[0], cell_box[0]), max(box[1], cell_box[1])
    x1, y1 = min(box[2], cell_box[2]), min(box[3], cell_box[3])
    return box_area((x0, y0, x1, y1)) if x1 > x0 and y1 > y0 else 0.0


def cell_labels(objects: list[dict], image_size: tuple[int, int], grid: MergedGrid) -> torch.Tensor:
    """Per-cell targets of one scene.

    Args:
        objects: scene objects (``size``, ``color``, ``material``, ``shape``, ``box`` in pixels of the image).
        image_size: ``(width, height)`` of the image the boxes refer to.
        grid: the merged-cell grid the processor produced for it.
    Returns:
        (grid.num_cells, 5) int64: column 0 is 1 where a pointer to some object would copy the cell, else 0;
        columns 1-4 are that object's size / colour / material / shape index, ``-100`` (ignored) on background.
        A cell two objects' cell sets share goes to the one covering more of it.
    """
    labels = torch.full((grid.num_cells, 5), IGNORE, dtype=torch.long)
    labels[:, 0] = 0
    sx, sy = grid.resized_size[0] / image_size[0], grid.resized_size[1] / image_size[1]
    best = [0.0] * grid.num_cells
    for obj in objects:
        box = obj["box"]
        scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        for k in box_to_cells(box, image_size, grid):
            cover = _overlap(scaled, grid.cell_box(k))
            if labels[k, 0] == 1 and cover <= best[k]:
                continue
            best[k] = cover
            labels[k] = torch.tensor([1] + _attribute_targets(obj))
    return labels


def _batch(items: list[dict], images_dir: Path, processor):
    """(pixel_values, image_grid_thw, cell labels (total cells, 5), objects) for a list of items.

    ``objects`` is a list of (cell indices into the batch's concatenated cells, (4,) attribute targets).
    """
    from PIL import Image

    images = [Image.open(images_dir / f"{it['id']}.png").convert("RGB") for it in items]
    # the batch's images laid out as one multi-image sample: slot = index into the concatenated cells
    enc, layout = processor.encode_images(images)
    labels, objects = [], []
    for i, it in enumerate(items):
        labels.append(cell_labels(it["scene"]["objects"], layout.image_sizes[i], layout.grids[i]))
        for obj in it["scene"]["objects"]:
            objects.append((layout.box_to_slots(obj["box"], image=i), _attribute_targets(obj)))
    return enc["pixel_values"], enc["image_grid_thw"], torch.cat(labels), objects


def _losses(features: torch.Tensor, labels: torch.Tensor, objects, head: nn.Linear):
    """Cross-entropies of the cell heads and of the object heads, and right / counted predictions per head.

    Cell heads read every cell (``cell_<name>``); object heads read the mean of an object's copied cells -- the
    set of tokens a pointer puts into the LM's input -- so a fragment cell need not carry what it cannot see.
    """
    sizes = list(HEADS.values())
    cell_logits = head(features).split(sizes, dim=-1)
    pooled = torch.stack([features[cells].mean(0) for cells, _ in objects])
    obj_logits = head(pooled).split(sizes, dim=-1)
    obj_targets = torch.tensor([t for _, t in objects], dtype=torch.long)
    loss, right, counted = features.new_zeros(()), {}, {}
    for j, name in enumerate(HEADS):
        target = labels[:, j]
        keep = target != IGNORE
        if keep.any():
            loss = loss + nn.functional.cross_entropy(cell_logits[j][keep], target[keep])
        right[f"cell_{name}"] = int((cell_logits[j].argmax(-1)[keep] == target[keep]).sum())
        counted[f"cell_{name}"] = int(keep.sum())
        if j:
            t = obj_targets[:, j - 1]
            loss = loss + nn.functional.cross_entropy(obj_logits[j], t)
            right[name] = int((obj_logits[j].argmax(-1) == t).sum())
            counted[name] = len(t)
    return loss, right, counted


def _features(model, pixel_values, grid_thw) -> torch.Tensor:  # -> (total cells, D) merger outputs
    out = model.model.get_image_features(pixel_values, grid_thw, return_dict=True).pooler_output
    return torch.cat(list(out), dim=0)


def pretrain_vision(model, processor, train_items: list[dict], train_images: Path, *, steps: int,
                    batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0,
                    test_items: list[dict] | None = None, test_images: Path | None = None,
                    progress: bool = True) -> dict:
    """Train `model.model.visual` (patch embedding, blocks, merger) so each copied cell carries its object.

    Each step draws `batch_size` scenes; the loss is that of `_losses` (every cell: object or background and,
    on object cells, its object's attributes; every object: its attributes from the mean of its copied cells).
    AdamW with linear warm-up (5%) and cosine decay; the linear head is discarded afterwards. Returns the steps,
    the seconds taken and, given `test_items`, that head's held-out accuracy per head (`heldout_accuracy`).
    """
    from tqdm import tqdm

    visual = model.model.visual
    width = model.config.text_config.hidden_size
    torch.manual_seed(seed)
    head = nn.Linear(width, sum(HEADS.values()))
    params = list(visual.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = random.Random(f"perception:{seed}")
    was_training = visual.training
    visual.train()
    t0 = time.perf_counter()
    # The scenes of every step are drawn up front (the same draws, in the same order, as one at a time) so a
    # thread can decode and preprocess step i+1's images while step i computes: the input side was ~40% of a step.
    draws = [rng.sample(train_items, min(batch_size, len(train_items))) for _ in range(steps)]
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        upcoming = prefetch.submit(_batch, draws[0], Path(train_images), processor) if steps else None
        for step in tqdm(range(steps), desc="vision warm-up", unit="step", disable=not progress):
            pixel_values, grid_thw, labels, objects = upcoming.result()
            if step + 1 < steps:
                upcoming = prefetch.submit(_batch, draws[step + 1], Path(train_images), processor)
            loss, _, _ = _losses(_features(model, pixel_values, grid_thw), labels, objects, head)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    visual.train(was_training)
    result = {"steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
    if test_items:
        result["heldout_cell_accuracy"] = heldout_accuracy(model, processor, test_items, Path(test_images), head)
    return result


@torch.no_grad()
def heldout_accuracy(model, processor, items: list[dict], images_dir: Path, head: nn.Linear,
                     batch_size: int = 64) -> dict[str, float]:
    """Accuracy of `head` on `items`: `cell_<name>` over cells (attributes: object cells only), `<name>` over
    objects (read from the mean of each object's copied cells)."""
    right: dict[str, int] = {}
    counted: dict[str, int] = {}
    for i in range(0, len(items), batch_size):
        pixel_values, grid_thw, labels, objects = _batch(items[i:i + batch_size], images_dir, processor)
        _, r, c = _losses(_features(model, pixel_values, grid_thw), labels, objects, head)
        for name in r:
            right[name] = right.get(name, 0) + r[name]
            counted[name] = counted.get(name, 0) + c[name]
    return {name: round(right[name] / counted[name], 4) for name in right if counted[name]}
