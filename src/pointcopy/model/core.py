"""Backbone-agnostic point-and-copy: the mechanism, the forward signature and the `generate` glue.

`PointCopyMixin` implements the mechanism once. A backbone adapter (one file per backbone: `qwen2_5_vl.py`,
`qwen3_vl.py`) is `class <Adapter>(PointCopyMixin, <HF model class>)` and answers the backbone questions through
the hooks below (B sequences, L tokens, N image tokens in the batch, D text width, A position axes):

    vision_layout() -> {"patch_size", "merge_size"}         what layout.SlotMap and the processor must agree with
    tokens_per_image(grid_thw (n, 3)) -> [LLM tokens per image]
    patch_rows_per_image(grid_thw (n, 3)) -> [pixel_values rows per image]   (beam expansion, validation)
    _text_embeddings(ids (B, L)) -> (B, L, D)
    _image_token_mask(ids (B, L)) -> (B, L) bool
    _encode_images(pixel_values, grid_thw) -> VisualFeatures(embeds (N, D), layer_inputs n x (N, D))
    _prefill_positions(ids, attention_mask, grid_thw, mm_token_type_ids) -> (A, B, L)
    _decoder(embeds, attention_mask, position_ids, cache, use_cache, visual_mask (B, L) | None,
             layer_inputs n x (n_visual, D) | None, **kw) -> output with .last_hidden_state (B, L, D)
    _vocab_logits(hidden (B, L, D)) -> (B, L, V)
    class attributes: config_class, base_model_type (the base checkpoints it converts), base_key_mapping,
    official_model_type / official_key_mapping (None but for Qwen2.5-VL's "v1"), position_axes (A)

Data flow of one forward call (K = largest number of image tokens in the batch):

    input_ids (B, L) --pointer ids -> region placeholder--> text embeddings (B, L, D)
      prefill: image features scattered at image tokens; CopyMemory.values = those embeddings, detached (B, K, D)
               (+ CopyMemory.layer_values (n, B, K, D): per-layer visual inputs, with copy_deepstack="source")
      every call: pointer positions take CopyMemory.values[b, k]  (k = id - copy_token_start)
    decoder(embeds, positions, cache, visual mask + per-layer inputs at image tokens [and copied tokens])
      -> hidden (B, L, D)
      prefill: CopyMemory.keys = Lk(hidden or embeddings at image tokens) (B, K, Dh), kept in PointCopyCache
    logits = [ lm_head(h)[..., :copy_token_start] | Lq(h)·keysᵀ/sqrt(D) masked to real slots ]  (B, L, V' + K)

Intervening on what is copied (`register_copy_memory_hook(fn)` -> a handle with `.remove()`): at every prefill
(every forward that builds the memory, cache-free ones included), right after CopyMemory is built and before any
pointer position gathers from it, `fn(memory)` is called (hooks in registration order). It may edit
`memory.values` (B, K, D) and `memory.layer_values` (n, B, K, D, when present) in place (they are fresh, detached
tensors of this call), or return a CopyMemory to use instead. The edit changes exactly the embeddings pointer
positions copy: those of the prefilled sequence and, since the cache keeps the edited memory, every later copy
during generation. The image tokens' own embeddings, the pointer keys (computed from the
decoder's states at the image tokens) and the source positions are untouched. Without a hook nothing changes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch.utils.hooks import RemovableHandle
from transformers import DynamicCache
from transformers.utils import ModelOutput

from .heads import PointerHeads
from .loss import point_copy_loss
from .memory import CopyMemory, PointCopyCache

# transformers renamed the decoders' `past_key_values` argument and output field to `cache` (5.20+); vLLM's
# environment pins an older 5.x, so the adapters pass the cache under whichever name the installed release takes.
CACHE_NAMES = ("cache", "past_key_values")


def decoder_cache_kwarg(decoder_forward) -> str:
    """The keyword under which `decoder_forward` takes its KV cache."""
    import inspect

    params = inspect.signature(decoder_forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache of a decoder output, whatever the installed transformers calls the field."""
    for name in CACHE_NAMES:
        value = getattr(out, name, None)
        if value is not None:
            return value
    return None


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


@dataclass
class VisualFeatures:
    """What a backbone's vision side gives the LM for the image tokens of a batch (N of them, sequence order)."""

    embeds: torch.Tensor  # (N, D) merger output: the input embedding of an image token, what a pointer copies
    layer_inputs: tuple[torch.Tensor, ...] = field(default_factory=tuple)  # n x (N, D) added after LM layers 0..n-1


class PointCopyMixin:
    """Point-and-copy on top of a HF vision-language model. Needs `self.config` (a `CopyFields` config) and
    `self.pointer` (PointerHeads, see `_init_pointer`), and the adapter hooks below."""

    base_model_type: ClassVar[str]  # config.json model_type of the base checkpoints this adapter converts
    base_key_mapping: ClassVar[dict | None] = None  # key regexes applied when converting a base checkpoint
    official_model_type: ClassVar[str | None] = None  # an official release format ("v1", Qwen2.5-VL only)
    official_key_mapping: ClassVar[dict | None] = None
    position_axes: ClassVar[int] = 3  # rows of position_ids (M-RoPE: t, h, w)

    # ---- adapter hooks -------------------------------------------------------------------------------------
    def vision_layout(self) -> dict[str, int]:  # {"patch_size", "merge_size"}
        raise NotImplementedError

    def tokens_per_image(self, image_grid_thw) -> list[int]:  # (n, 3) -> LLM tokens of each image
        raise NotImplementedError

    def patch_rows_per_image(self, image_grid_thw) -> list[int]:  # (n, 3) -> pixel_values rows of each image
        raise NotImplementedError

    def _text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        raise NotImplementedError

    def _image_token_mask(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L) bool
        raise NotImplementedError

    def _encode_images(self, pixel_values, image_grid_thw) -> VisualFeatures:
        raise NotImplementedError

    def _prefill_positions(self, ids, attention_mask, image_grid_thw, mm_token_type_ids) -> torch.Tensor:
        raise NotImplementedError  # -> (A, B, L)

    def _decoder(self, inputs_embeds, attention_mask, position_ids, cache, use_cache, visual_mask=None,
                 layer_inputs=None, **kwargs):
        raise NotImplementedError  # -> BaseModelOutputWithPast-like (last_hidden_state, cache, ...)

    def _vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, V)
        raise NotImplementedError

    # ---- construction and loading ----------------------------------------------------------------------------
    def _init_pointer(self) -> None:
        """Create `self.pointer` from the config (identity/sqrt(D) init for fresh models; checkpoints overwrite)."""
        config = self.config
        text = config.get_text_config(decoder=True)
        self.pointer = PointerHeads(text.hidden_size, config.head_size, tied=config.tie_copy_heads,
                                    normalize=config.normalize_copy_states, use_gate=config.use_gate)
        if next(self.pointer.parameters()).device.type != "meta" and config.head_size == text.hidden_size:
            self.pointer.init_identity()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load our own checkpoints, official v1 checkpoints (`model_type: "v1"`), or convert a base checkpoint of a
        registered backbone; the adapter class is chosen by config.json's model_type (`convert.ADAPTERS`).

        See `convert.load_pretrained` for the formats and keyword arguments.
        """
        from .convert import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _from_pretrained_native(cls, *args, **kwargs):
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        """transformers' save, plus a model card (README.md, `model/card.py`) unless the folder has one."""
        result = super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            from .card import write_model_card

            write_model_card(save_directory, self.config)
        return result

    # ---- forward (signature kept explicit: generate inspects it) -----------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: PointCopyCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> PointCopyOutput:
        """Args as the backbone's `...ForConditionalGeneration.forward`; pointer ids (>= copy_token_start) may appear
        in `input_ids` and `labels`. Returns logits (B, L, copy_token_start + K) and, with labels, the loss parts."""
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported: pass input_ids (pointer ids select copied embeddings)")
        if pixel_values_videos is not None or video_grid_thw is not None:
            raise NotImplementedError("videos are not supported by point-and-copy yet")
        legacy_cache = kwargs.pop("past_key_values", None)  # the pre-5.x name of `cache`
        cache = cache if cache is not None else legacy_cache
        kwargs.pop("mm_encoder_outputs", None)  # images are encoded here, from pixel_values
        return self.point_copy_forward(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                       cache=cache, labels=labels, use_cache=use_cache, pixel_values=pixel_values,
                                       image_grid_thw=image_grid_thw, mm_token_type_ids=mm_token_type_ids,
                                       logits_to_keep=logits_to_keep, **kwargs)

    # ---- interventions ---------------------------------------------------------------------------------------
    def register_copy_memory_hook(self, fn: Callable[[CopyMemory], CopyMemory | None]) -> RemovableHandle:
        """Call `fn(memory)` at every prefill between building the copy memory and the pointer positions reading
        it (see the module docstring); `handle.remove()` takes it off again."""
        hooks = self.__dict__.get("_copy_memory_hooks")
        if hooks is None:
            hooks = self.__dict__["_copy_memory_hooks"] = OrderedDict()
        handle = RemovableHandle(hooks)
        hooks[handle.id] = fn
        return handle

    def _run_copy_memory_hooks(self, memory: CopyMemory) -> CopyMemory:
        for fn in list(self.__dict__.get("_copy_memory_hooks", {}).values()):
            replaced = fn(memory)
            memory = memory if replaced is None else replaced
        return memory

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
        visual_mask, layer_inputs = None, ()  # tokens that get per-layer visual inputs, and those inputs

        if prefill:
            image_mask = self._image_token_mask(ids)
            slot_pos, slot_mask = slot_index(image_mask)
            layer_values = None
            if image_mask.any():
                self._check_image_inputs(image_mask, pixel_values, image_grid_thw)
                feats = self._encode_images(pixel_values, image_grid_thw)
                embeds = embeds.masked_scatter(image_mask[..., None], feats.embeds.to(embeds.dtype))
                layer_inputs = tuple(f.to(embeds.dtype) for f in feats.layer_inputs)
                if layer_inputs:
                    visual_mask = image_mask
                    if getattr(cfg, "copy_deepstack", "none") == "source":  # slot order = image-token order
                        layer_values = embeds.new_zeros(len(layer_inputs), *slot_mask.shape, embeds.shape[-1])
                        layer_values[:, slot_mask] = torch.stack(layer_inputs).detach()
            if position_ids is None:
                position_ids = self._prefill_positions(ids, attention_mask, image_grid_thw, mm_token_type_ids)
            rope_deltas = _rope_deltas(position_ids, attention_mask)
            memory = CopyMemory(keys=None, values=gather_slots(embeds, slot_pos).detach(), mask=slot_mask,
                                positions=position_ids.gather(2, slot_pos[None].expand(position_ids.shape[0], -1, -1)),
                                layer_values=layer_values)
            if self.__dict__.get("_copy_memory_hooks"):
                memory = self._run_copy_memory_hooks(memory)
        else:
            if pixel_values is not None:
                raise ValueError("pixel_values given to a decoding step: images are encoded once, at prefill")
            memory, rope_deltas = cache.copy_memory, cache.rope_deltas
            if position_ids is None:
                position_ids = _decode_positions(rope_deltas, attention_mask, past, input_ids.shape[1],
                                                 memory.positions.shape[0])

        if is_ptr.any():
            slots = (input_ids - cfg.copy_token_start).masked_fill(~is_ptr, 0)
            _check_pointers(input_ids, slots, is_ptr, memory.num_slots, cfg.copy_token_start)
            embeds = torch.where(is_ptr[..., None], memory.gather_values(slots).to(embeds.dtype), embeds)
            if cfg.copy_position == "source_patch":
                position_ids = torch.where(is_ptr[None], memory.gather_positions(slots), position_ids)
            if memory.layer_values is not None:  # copy_deepstack="source": the copied slot's per-layer inputs too
                per_token = memory.gather_layer_values(slots).to(embeds.dtype)  # (n, B, L, D)
                if visual_mask is not None:  # image tokens of this call keep their own inputs
                    per_token = per_token.masked_scatter(visual_mask[None, ..., None], torch.stack(layer_inputs))
                visual_mask = is_ptr if visual_mask is None else visual_mask | is_ptr
                layer_inputs = tuple(per_token[:, visual_mask].unbind(0))

        out = self._decoder(embeds, attention_mask, position_ids, cache, use_cache,
                            visual_mask=visual_mask if layer_inputs else None, layer_inputs=layer_inputs or None,
                            **kwargs)
        hidden = out.last_hidden_state

        if prefill:
            key_states = gather_slots(embeds if cfg.use_embeddings_as_keys else hidden, slot_pos)
            memory.keys = self.pointer.keys(key_states)
            if cache is not None:
                cache.copy_memory, cache.rope_deltas = memory, rope_deltas

        h = hidden[:, -logits_to_keep:] if isinstance(logits_to_keep, int) and logits_to_keep else hidden
        logits = self.combine_logits(h, memory)

        result = PointCopyOutput(logits=logits, cache=output_cache(out) if use_cache else None,
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

    def _check_image_inputs(self, image_mask, pixel_values, image_grid_thw) -> None:
        """ValueError naming the sample / field when image tokens, grids and pixel rows disagree."""
        counts = image_mask.sum(-1).tolist()
        if pixel_values is None or image_grid_thw is None:
            b = next(i for i, c in enumerate(counts) if c)
            missing = "pixel_values" if pixel_values is None else "image_grid_thw"
            raise ValueError(f"sample {b}: {counts[b]} image tokens in input_ids but {missing} is None")
        images_per_sample(counts, self.tokens_per_image(image_grid_thw))  # raises with sample + field
        expected_rows = sum(self.patch_rows_per_image(image_grid_thw))
        if pixel_values.shape[0] != expected_rows:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patch rows but image_grid_thw "
                             f"{image_grid_thw.tolist()} describes {expected_rows}")

    # ---- generate integration --------------------------------------------------------------------------------
    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Positions are computed inside forward (prefill: the backbone's; decode: from the cache's per-row offsets),
        # which keeps left-padded rows identical to unpadded ones and supports copy_position="source_patch".
        return None

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        for name in CACHE_NAMES:  # the name generate uses depends on the transformers release
            cache = model_kwargs.get(name)
            if type(cache) is DynamicCache and not getattr(cache, "_is_user_defined", False):
                model_kwargs[name] = PointCopyCache(config=self.config.get_text_config(decoder=True))

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None,
                                      **model_kwargs):
        """Beam search / num_return_sequences: repeat each sample's *images* with the sample (pixel_values rows
        are patches, not samples, so the generic repeat_interleave would be wrong)."""
        if expand_size == 1:
            return input_ids, model_kwargs
        pixel_values = model_kwargs.pop("pixel_values", None)
        grid = model_kwargs.pop("image_grid_thw", None)
        if pixel_values is not None and grid is not None and input_ids is not None:
            counts = self._image_token_mask(input_ids).sum(-1).tolist()
            per_sample = images_per_sample(counts, self.tokens_per_image(grid))
            row_start = [0]
            for r in self.patch_rows_per_image(grid):
                row_start.append(row_start[-1] + r)
            pv_parts, grid_parts, image = [], [], 0
            for n in per_sample:
                lo, hi = row_start[image], row_start[image + n]
                pv_parts += [pixel_values[lo:hi]] * expand_size
                grid_parts += [grid[image:image + n]] * expand_size
                image += n
            pixel_values, grid = torch.cat(pv_parts), torch.cat(grid_parts)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder,
                                                                        input_ids, **model_kwargs)
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        if grid is not None:
            model_kwargs["image_grid_thw"] = grid
        return input_ids, model_kwargs

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


def _decode_positions(rope_deltas, attention_mask, past: int, length: int, axes: int) -> torch.Tensor:
    """(axes, B, length) sequential positions of new tokens after `past` cached ones (equal on every axis)."""
    if attention_mask is not None and attention_mask.dim() == 2:
        n_before = attention_mask[:, :past].sum(-1)
    else:
        n_before = torch.full((rope_deltas.shape[0],), past, device=rope_deltas.device)
    steps = torch.arange(length, device=rope_deltas.device)
    return (n_before[:, None] + rope_deltas + steps[None, :])[None].expand(axes, -1, -1)


def _check_pointers(input_ids, slots, is_ptr, num_slots, start) -> None:
    bad = is_ptr & (slots >= num_slots[:, None])
    if bad.any():
        b, t = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"sample {b}: input_ids[{b}, {t}] = {int(input_ids[b, t])} is pointer slot "
                         f"{int(slots[b, t])}, but the sample has only {int(num_slots[b])} image tokens "
                         f"(pointer ids {start}..{start + int(num_slots[b]) - 1})")


def text_positions(ids: torch.Tensor, attention_mask: torch.Tensor | None, axes: int) -> torch.Tensor:
    """(axes, B, L) positions of a text-only prefill: 0, 1, ... over each row's real tokens (left padding skipped)."""
    if attention_mask is not None and attention_mask.dim() == 2:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    else:
        pos = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
    return pos[None].expand(axes, -1, -1)


def images_per_sample(token_counts: list[int], tokens_per_image: list[int]) -> list[int]:
    """Assign images (in order) to samples: sample b's image-token count must be a sum of consecutive images.

    Raises ValueError naming the sample when counts and grids disagree.
    """
    result, i = [], 0
    for b, need in enumerate(token_counts):
        n, got = 0, 0
        while got < need and i < len(tokens_per_image):
            got += tokens_per_image[i]
            i += 1
            n += 1
        if got != need:
            raise ValueError(f"sample {b}: {need} image tokens in input_ids do not match its images in "
                             f"image_grid_thw/pixel_values (tokens per image {tokens_per_image}; sample {b} "
                             f"would get {got})")
        result.append(n)
    if i != len(tokens_per_image):
        raise ValueError(f"image_grid_thw has {len(tokens_per_image)} images but input_ids only have image tokens "
                         f"for {i} (tokens per image {tokens_per_image}, per sample {token_counts})")
    return result
