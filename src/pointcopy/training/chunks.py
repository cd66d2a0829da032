"""Length chunks: one padded training batch -> sub-batches of similar length, each trimmed to its own longest row.

    split_by_length(batch, n, vision_start_token_id) -> [sub-batch, ...]    (rows sorted by length, then cut)
    supervised_tokens(labels)                          -> int                 (what the loss averages over)

Why: a random batch of shapes traces is ~23% padding (rows of 170-360 tokens padded to the longest). Cutting it
into length-sorted chunks and running each at its own width removes most of that compute, while -- unlike
length-grouped *sampling*, which made every batch one scene size and trained much worse -- the batch itself, and
so the gradient, stay exactly the same: the loss is a mean over supervised tokens, so the batch loss is the sum of
the chunk losses weighted by each chunk's share of those tokens (see `PointCopyTrainer.compute_loss`).

Needs right padding (the collator's): trimming a row's tail then drops only padding. Images are assigned to rows
by counting each row's `<|vision_start|>` tokens (`image_grid_thw` lists images in row order, `pixel_values`
their patches in the same order), so rows with several images or none are handled.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
# per-row tensors (B, L) the collator produces; anything else per row would be silently dropped, so it is refused
_ROW_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids")
_IMAGE_KEYS = ("pixel_values", "image_grid_thw")


def supervised_tokens(labels: torch.Tensor) -> int:
    """Positions the loss averages over: labels (B, L) after the causal shift, i.e. labels[:, 1:] != -100."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def split_by_length(batch: dict, n_chunks: int, vision_start_token_id: int) -> list[dict]:
    """Split a right-padded batch into at most `n_chunks` sub-batches of rows of similar length.

    Args:
        batch: ``input_ids``/``attention_mask``/``labels`` (B, L), optional ``mm_token_type_ids`` (B, L),
            ``pixel_values`` (sum of patches, C) and ``image_grid_thw`` (images, 3).
        n_chunks: how many sub-batches (fewer if B is smaller); 1 returns ``[batch]`` unchanged.
        vision_start_token_id: the token that opens each image in ``input_ids``.
    Returns:
        Sub-batches with the same keys, rows in ascending length order, each trimmed to ``(b_i, L_i)`` where
        ``L_i`` is its longest row (attention mask length), with those rows' images.
    """
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    unknown = set(batch) - set(_ROW_KEYS) - set(_IMAGE_KEYS)
    if unknown:
        raise ValueError(f"split_by_length: batch has keys it cannot split: {sorted(unknown)}")
    rows = batch["input_ids"].shape[0]
    if n_chunks == 1 or rows < 2:
        return [batch]
    mask = batch["attention_mask"]
    if mask.dim() != 2 or bool((mask[:, :-1] < mask[:, 1:]).any()):
        raise ValueError("split_by_length needs a 2-D right-padded attention_mask (padding only at row ends)")
    lengths = mask.sum(1)

    image_rows: list[list[tuple[int, int]]] = [[] for _ in range(rows)]  # per row: (image index, first patch)
    if "image_grid_thw" in batch:
        thw = batch["image_grid_thw"]
        patches = thw.prod(-1)
        first_patch = torch.cat([patches.new_zeros(1), patches.cumsum(0)])
        per_row = (batch["input_ids"] == vision_start_token_id).sum(1).tolist()
        if sum(per_row) != thw.shape[0]:
            raise ValueError(f"split_by_length: rows open {sum(per_row)} images but image_grid_thw has "
                             f"{thw.shape[0]}")
        image = 0
        for r, count in enumerate(per_row):
            image_rows[r] = list(range(image, image + count))
            image += count

    chunks = []
    for idx in torch.argsort(lengths, stable=True).chunk(min(n_chunks, rows)):
        width = int(lengths[idx].max())
        chunk = {k: batch[k][idx, :width] for k in _ROW_KEYS if k in batch}
        images = [i for r in idx.tolist() for i in image_rows[r]]
        if images:
            chunk["pixel_values"] = torch.cat([batch["pixel_values"][first_patch[i]:first_patch[i + 1]]
                                               for i in images])
            chunk["image_grid_thw"] = batch["image_grid_thw"][images]
        chunks.append(chunk)
    return chunks
