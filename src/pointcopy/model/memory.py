"""Copy memory: what a sequence can point at, computed once at prefill.

`CopyMemory` holds, per sequence, the K image-token slots in order of appearance (all images of the sample):

    keys       (B, K, Dh)  Lk(states at the image tokens)       -> pointer logits
    values     (B, K, D)   merger embeddings, detached           -> input embedding of a pointer token
    mask       (B, K)      True for the sample's real slots (right padding to the batch's largest K)
    positions  (A, B, K)   positions of the slots, A = the backbone's position axes (M-RoPE: 3, (t, h, w));
                           used by copy_position="source_patch"
    layer_values (n, B, K, D) or None: per-layer visual inputs of the slots (Qwen3-VL deepstack), detached like
                           the values; kept only with copy_deepstack="source" (added at copied positions)

`PointCopyCache` is a `DynamicCache` that also owns the memory and the per-sequence text-position offset, so that
every row operation generate applies to the KV cache (beam reordering, batch selection, repetition) is applied to
the memory too. Nothing is stored in fake cache layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class CopyMemory:
    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    layer_values: torch.Tensor | None = None
    # inference only: keys with the query projection folded in (PointerHeads.absorb_query), built lazily
    absorbed: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_slots(self) -> torch.Tensor:
        """(B,) number of real slots per sequence."""
        return self.mask.sum(-1)

    def select(self, index: torch.Tensor) -> "CopyMemory":
        """Rows `index` (beam reordering / batch selection), in that order."""
        index = index.to(self.keys.device)
        absorbed = None if self.absorbed is None else tuple(t[index] for t in self.absorbed)
        layer_values = None if self.layer_values is None else self.layer_values[:, index]
        return CopyMemory(self.keys[index], self.values[index], self.mask[index], self.positions[:, index],
                          layer_values, absorbed)

    def repeat_interleave(self, repeats: int) -> "CopyMemory":
        return CopyMemory(
            self.keys.repeat_interleave(repeats, 0),
            self.values.repeat_interleave(repeats, 0),
            self.mask.repeat_interleave(repeats, 0),
            self.positions.repeat_interleave(repeats, 1),
            None if self.layer_values is None else self.layer_values.repeat_interleave(repeats, 1),
            None if self.absorbed is None else tuple(t.repeat_interleave(repeats, 0) for t in self.absorbed),
        )

    def gather_values(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, L) slot indices (already validated) -> (B, L, D) copied embeddings."""
        b = torch.arange(slots.shape[0], device=slots.device)[:, None]
        return self.values[b, slots]

    def gather_positions(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, L) slot indices -> (A, B, L) source-patch positions."""
        b = torch.arange(slots.shape[0], device=slots.device)[:, None]
        return self.positions[:, b, slots]

    def gather_layer_values(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, L) slot indices -> (n, B, L, D) per-layer visual inputs of the copied slots."""
        b = torch.arange(slots.shape[0], device=slots.device)[:, None]
        return self.layer_values[:, b, slots]


class PointCopyCache(DynamicCache):
    """KV cache + copy memory + text-position offsets (`rope_deltas`, (B, 1)), reordered together."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.copy_memory: CopyMemory | None = None
        self.rope_deltas: torch.Tensor | None = None

    def _rows(self, fn_memory, fn_tensor) -> None:
        if self.copy_memory is not None:
            self.copy_memory = fn_memory(self.copy_memory)
        if self.rope_deltas is not None:
            self.rope_deltas = fn_tensor(self.rope_deltas)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._rows(lambda m: m.select(beam_idx), lambda t: t[beam_idx.to(t.device)])

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._rows(lambda m: m.select(indices), lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._rows(lambda m: m.repeat_interleave(repeats), lambda t: t.repeat_interleave(repeats, 0))

    def reset(self) -> None:
        super().reset()
        self.copy_memory = None
        self.rope_deltas = None
