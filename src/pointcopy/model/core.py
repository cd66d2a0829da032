"""Backbone-agnostic point-and-copy forward pass.

`PointCopyMixin.forward` implements the mechanism once; a backbone adapter (e.g. `qwen2_5_vl.py`) supplies six
small hooks (text embeddings, image features, image-token mask, prefill positions, decoder, vocab logits).

Data flow of one forward call (B sequences, L new tokens, K = largest number of image tokens in the batch):

    input_ids (B, L) --pointer ids -> region placeholder--> text embeddings (B, L, D)
      prefill: image features scattered at image tokens; CopyMemory.values = those embeddings, detached (B, K, D)
      every call: pointer positions take CopyMemory.values[b, k]  (k = id - copy_token_start)
    decoder(embeds, positions, cache) -> hidden (B, L, D)
      prefill: CopyMemory.keys = Lk(hidden or embeddings at image tokens) (B, K, Dh), kept in PointCopyCache
    logits = [ lm_head(h)[..., :copy_token_start] | Lq(h)·keysᵀ/sqrt(D) masked to real slots ]  (B, L, V' + K)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .loss import point_copy_loss
from .memory import CopyMemory, PointCopyCache


@dataclass
class PointCopyOutput(ModelOutput):
    """Like `CausalLMOutputWithPast`, plus the loss components and the copy memory."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: PointCopyCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    ce_loss: torch.FloatTensor | None = None
    gen_loss: torch.FloatTensor | None = None
    copy_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    copy_accuracy: torch.FloatTensor | None = None
    copy_memory: CopyMemory | None = None
    rope_deltas: torch.LongTensor | None = None


def slot_index(image_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image_mask (B, L) bool -> (positions (B, K) sequence index of slot k, slot_mask (B, K) bool).

    Slot k of a sequence is its k-th image token in sequence order (all images of the sample, raster order within
    each image): the official semantics of copy id `copy_token_start + k` (stable order, see the oracle README).
    """
    counts = image_mask.sum(-1)
    k_max = int(counts.max()) if counts.numel() else 0
    b_idx, t_idx = image_mask.nonzero(as_tuple=True)
    slot = image_mask.cumsum(-1)[b_idx, t_idx] - 1
    positions = torch.zeros(image_mask.shape[0], k_max, dtype=torch.long, device=image_mask.device)
    positions[b_idx, slot] = t_idx
    slot_mask = torch.arange(k_max, device=image_mask.device)[None, :] < counts[:, None]
    return positions, slot_mask


def gather_slots(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states (B, L, D), positions (B, K) -> (B, K, D)."""
    return states.gather(1, positions[..., None].expand(-1, -1, states.shape[-1]))


class PointCopyMixin:
    """Point-and-copy on top of a HF vision-language model. Needs `self.config` (PointCopyConfig) and
    `self.pointer` (PointerHeads), and the adapter hooks below."""

    # ---- adapter hooks -------------------------------------------------------------------------------------
    def _text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        raise NotImplementedError

    def _image_token_mask(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L) bool
        raise NotImplementedError

    def _image_features(self, ids, image_mask, pixel_values, image_grid_thw) -> torch.Tensor:  # -> (N, D)
        raise NotImplementedError

    def _prefill_positions(self, ids, attention_mask, image_grid_thw, mm_token_type_ids) -> torch.Tensor:
        raise NotImplementedError  # -> (3, B, L)

    def _decoder(self, inputs_embeds, attention_mask, position_ids, cache, use_cache, **kwargs):
        raise NotImplementedError  # -> BaseModelOutputWithPast-like (last_hidden_state, cache, ...)

    def _vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, V)
        raise NotImplementedError

    # ---- mechanism -----------------------------------------------------------------------------------------
    def point_copy_forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, labels=None,
                           use_cache=None, pixel_values=None, image_grid_thw=None, mm_token_type_ids=None,
                           logits_to_keep=0, **kwargs) -> PointCopyOutput:
        cfg = self.config
        if input_ids is None:
            raise ValueError("point-and-copy needs input_ids (pointer ids decide which embeddings are copied)")
        if use_cache is None:
            use_cache = bool(getattr(cfg.get_text_config(decoder=True), "use_cache", True)) and not self.training
        if use_cache and cache is None:
            cache = PointCopyCache(config=cfg.get_text_config(decoder=True))
        if cache is not None and not isinstance(cache, PointCopyCache):
            raise TypeError(f"cache must be a pointcopy.model.memory.PointCopyCache (it carries the copy memory), "
                            f"got {type(cache).__name__}")
        past = cache.get_seq_length() if cache is not None else 0
        prefill = past == 0 or cache.copy_memory is None

        is_ptr = input_ids >= cfg.copy_token_start
        ids = input_ids.masked_fill(is_ptr, cfg.region_token_id)
        embeds = self._text_embeddings(ids)

        if prefill:
            image_mask = self._image_token_mask(ids)
            slot_pos, slot_mask = slot_index(image_mask)
            if image_mask.any():
                feats = self._image_features(ids, image_mask, pixel_values, image_grid_thw)
                embeds = embeds.masked_scatter(image_mask[..., None], feats.to(embeds.dtype))
            if position_ids is None:
                position_ids = self._prefill_positions(ids, attention_mask, image_grid_thw, mm_token_type_ids)
            rope_deltas = _rope_deltas(position_ids, attention_mask)
            memory = CopyMemory(keys=None, values=gather_slots(embeds, slot_pos).detach(), mask=slot_mask,
                                positions=position_ids.gather(2, slot_pos[None].expand(3, -1, -1)))
        else:
            if pixel_values is not None:
                raise ValueError("pixel_values given to a decoding step: images are encoded once, at prefill")
            memory, rope_deltas = cache.copy_memory, cache.rope_deltas
            if position_ids is None:
                position_ids = _decode_positions(rope_deltas, attention_mask, past, input_ids.shape[1])

        if is_ptr.any():
            slots = (input_ids - cfg.copy_token_start).masked_fill(~is_ptr, 0)
            _check_pointers(input_ids, slots, is_ptr, memory.num_slots, cfg.copy_token_start)
            embeds = torch.where(is_ptr[..., None], memory.gather_values(slots).to(embeds.dtype), embeds)
            if cfg.copy_position == "source_patch":
                position_ids = torch.where(is_ptr[None], memory.gather_positions(slots), position_ids)

        out = self._decoder(embeds, attention_mask, position_ids, cache, use_cache, **kwargs)
        hidden = out.last_hidden_state

        if prefill:
            key_states = gather_slots(embeds if cfg.use_embeddings_as_keys else hidden, slot_pos)
            memory.keys = self.pointer.keys(key_states)
            if cache is not None:
                cache.copy_memory, cache.rope_deltas = memory, rope_deltas

        h = hidden[:, -logits_to_keep:] if isinstance(logits_to_keep, int) and logits_to_keep else hidden
        logits = self.combine_logits(h, memory)

        result = PointCopyOutput(logits=logits, cache=out.cache if use_cache else None,
                                 hidden_states=getattr(out, "hidden_states", None),
                                 attentions=getattr(out, "attentions", None), copy_memory=memory,
                                 rope_deltas=rope_deltas)
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:  # logits_to_keep: the loss covers what the kept logits predict
                labels = labels[:, -logits.shape[1]:]
            parts = point_copy_loss(logits, labels, cfg.copy_token_start, z_loss_weight=cfg.z_loss_weight,
                                    z_loss_top_k=cfg.z_loss_top_k, label_smoothing=cfg.label_smoothing,
                                    separate_copy_loss=cfg.separate_copy_loss)
            result.loss, result.ce_loss, result.z_loss = parts.loss, parts.ce_loss, parts.z_loss.detach()
            result.gen_loss, result.copy_loss = parts.gen_loss.detach(), parts.copy_loss.detach()
            result.copy_accuracy = parts.copy_accuracy
        return result

    def combine_logits(self, hidden: torch.Tensor, memory: CopyMemory) -> torch.Tensor:
        """hidden (B, L, D) -> (B, L, copy_token_start + K): vocabulary logits then pointer logits."""
        cfg = self.config
        gen = self._vocab_logits(hidden)[..., : cfg.copy_token_start]
        if not cfg.do_copy:
            return gen
        if torch.is_grad_enabled() or self.training:
            ptr = self.pointer.scores(hidden, memory.keys.to(hidden.dtype), memory.mask)
        else:  # decoding: fold Lq into the keys once per prefill, then one (K x D) product per step
            if memory.absorbed is None:
                memory.absorbed = self.pointer.absorb_query(memory.keys.to(hidden.dtype))
            ptr = self.pointer.scores(hidden, None, memory.mask, absorbed=memory.absorbed)
        ptr = ptr.to(gen.dtype)
        gate = self.pointer.gate_values(hidden)
        if gate is not None:
            gen, ptr = gen * (1 - gate), ptr * gate
        if not cfg.pointing_enabled:
            ptr = torch.full_like(ptr, torch.finfo(ptr.dtype).min)
        return torch.cat([gen, ptr], dim=-1)


def _rope_deltas(position_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, 1): next text position minus the number of real tokens, so decode position = n_real_so_far + delta.

    Independent of left padding, so a padded row decodes exactly like the same row alone.
    """
    pos = position_ids.amax(0)  # (B, L)
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask[:, -pos.shape[1]:].bool()
        n_real = real.sum(-1)
        top = pos.masked_fill(~real, -1).amax(-1)
    else:
        n_real = torch.full((pos.shape[0],), pos.shape[1], device=pos.device)
        top = pos.amax(-1)
    return (top + 1 - n_real)[:, None]


def _decode_positions(rope_deltas, attention_mask, past: int, length: int) -> torch.Tensor:
    """(3, B, length) sequential positions of new tokens after `past` cached ones."""
    if attention_mask is not None and attention_mask.dim() == 2:
        n_before = attention_mask[:, :past].sum(-1)
    else:
        n_before = torch.full((rope_deltas.shape[0],), past, device=rope_deltas.device)
    steps = torch.arange(length, device=rope_deltas.device)
    return (n_before[:, None] + rope_deltas + steps[None, :])[None].expand(3, -1, -1)


def _check_pointers(input_ids, slots, is_ptr, num_slots, start) -> None:
    bad = is_ptr & (slots >= num_slots[:, None])
    if bad.any():
        b, t = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"sample {b}: input_ids[{b}, {t}] = {int(input_ids[b, t])} is pointer slot "
                         f"{int(slots[b, t])}, but the sample has only {int(num_slots[b])} image tokens "
                         f"(pointer ids {start}..{start + int(num_slots[b]) - 1})")
