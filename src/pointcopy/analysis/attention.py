"""Per-step attention masses of traced items: one teacher-forced forward per batch with an `AttentionProbe`.

    step_masses(model, traced items, layers, groups_of) -> per item {layer: (T, G_i) float32 numpy}

`groups_of(traced) -> (S, G_i)` weighs the item's key positions (`Traced.ids`); items of a batch are right-padded
and their group columns zero-padded to the batch's widest, then cut back per item. Row t is trace step t (the query
at position `prompt_len - 1 + t`, see `traces`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .probe import AttentionProbe
from .traces import Traced

__all__ = ["step_masses", "model_inputs"]


def model_inputs(processor, batch: Sequence[Traced]) -> dict[str, torch.Tensor]:
    """Right-padded forward inputs of `batch` (ids, attention mask, token types, pixel values and grids)."""
    inputs = processor.pad([t.ids for t in batch], padding_side="right")
    pixels = [t.pixel_values for t in batch if t.pixel_values is not None]
    if pixels:
        inputs["pixel_values"] = torch.cat(pixels)
        inputs["image_grid_thw"] = torch.cat([t.image_grid_thw for t in batch if t.image_grid_thw is not None])
    return inputs


@torch.no_grad()
def step_masses(model, processor, batch: Sequence[Traced], layers: Sequence[int],
                groups_of: Callable[[Traced], torch.Tensor], *, heads=None,
                query_chunk: int = 128) -> list[dict[int, np.ndarray]]:
    inputs = {k: v.to(model.device) for k, v in model_inputs(processor, batch).items()}
    width = inputs["input_ids"].shape[1]
    per_item = [groups_of(t) for t in batch]
    g = max(w.shape[1] for w in per_item)
    groups = torch.zeros(len(batch), width, max(g, 1))
    for b, w in enumerate(per_item):
        groups[b, : w.shape[0], : w.shape[1]] = w
    with AttentionProbe(model, layers, groups, heads=heads, query_chunk=query_chunk) as probe:
        model(**inputs, use_cache=False)
    masses = probe.masses()
    out = []
    for b, t in enumerate(batch):
        rows = slice(t.prompt_len - 1, len(t.ids) - 1)
        out.append({layer: m[b, rows, : per_item[b].shape[1]].cpu().numpy() for layer, m in masses.items()})
    return out
