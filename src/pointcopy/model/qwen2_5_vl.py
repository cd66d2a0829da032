"""Qwen2.5-VL adapter: `PointCopyForConditionalGeneration`.

The class *is* a `Qwen2_5_VLForConditionalGeneration` (same modules and state-dict keys: `model.visual.*`,
`model.language_model.*`, `lm_head.*`) plus `pointer.*` (the two heads). The point-and-copy logic lives in
`core.PointCopyMixin`; this file only answers the backbone questions (how to embed, encode images, position
tokens, run the decoder) and hooks the copy memory into `generate` (cache creation, beam expansion).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, DynamicCache, Qwen2_5_VLForConditionalGeneration

from ..layout import tokens_per_image
from .config import PointCopyConfig
from .core import PointCopyMixin, PointCopyOutput
from .heads import PointerHeads
from .memory import PointCopyCache
from .patch_embed import MatmulPatchEmbed


class PointCopyForConditionalGeneration(PointCopyMixin, Qwen2_5_VLForConditionalGeneration):
    config_class = PointCopyConfig
    config: PointCopyConfig

    def __init__(self, config: PointCopyConfig):
        super().__init__(config)
        # the same parameters as Qwen's Conv3d patch embedding, computed as one matrix product (~5x faster on CPU)
        self.model.visual.patch_embed = MatmulPatchEmbed.from_conv(self.model.visual.patch_embed)
        text = config.get_text_config(decoder=True)
        self.pointer = PointerHeads(text.hidden_size, config.head_size, tied=config.tie_copy_heads,
                                    normalize=config.normalize_copy_states, use_gate=config.use_gate)
        if next(self.pointer.parameters()).device.type != "meta" and config.head_size == text.hidden_size:
            self.pointer.init_identity()  # official init for fresh models; checkpoints overwrite it

    # ---- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load our own checkpoints, official v1 checkpoints (`model_type: "v1"`), or convert a base Qwen2.5-VL.

        See `convert.load_pretrained` for the formats and keyword arguments.
        """
        from .convert import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _from_pretrained_native(cls, *args, **kwargs):
        return super().from_pretrained(*args, **kwargs)

    # ---- adapter hooks ---------------------------------------------------------------------------------------
    def _text_embeddings(self, ids):
        return self.model.get_input_embeddings()(ids)

    def _image_token_mask(self, ids):
        return ids == self.config.image_token_id

    def _image_features(self, ids, image_mask, pixel_values, image_grid_thw):
        """(N, D) merger outputs for all image tokens of the batch, in sequence order; validates counts."""
        counts = image_mask.sum(-1).tolist()
        if pixel_values is None or image_grid_thw is None:
            b = next(i for i, c in enumerate(counts) if c)
            missing = "pixel_values" if pixel_values is None else "image_grid_thw"
            raise ValueError(f"sample {b}: {counts[b]} image tokens in input_ids but {missing} is None")
        images_per_sample(counts, self._tokens_per_image(image_grid_thw))  # raises with sample + field
        expected_rows = int(image_grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != expected_rows:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patch rows but image_grid_thw "
                             f"{image_grid_thw.tolist()} describes {expected_rows}")
        feats = self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True).pooler_output
        return torch.cat(feats, dim=0)

    def vision_layout(self) -> dict[str, int]:
        """The backbone's vision geometry, `{"patch_size", "merge_size"}` (Qwen2.5-VL: 14, 2), from its config:
        what `layout.SlotMap` needs, and what the processor's image processor must agree with."""
        vision = self.config.vision_config
        return {"patch_size": int(vision.patch_size), "merge_size": int(vision.spatial_merge_size)}

    def _tokens_per_image(self, image_grid_thw) -> list[int]:
        """LLM tokens of each image: the vision layout (`layout.tokens_per_image`) with this config's merge."""
        return tokens_per_image(image_grid_thw, merge_size=self.vision_layout()["merge_size"])

    def _prefill_positions(self, ids, attention_mask, image_grid_thw, mm_token_type_ids):
        """M-RoPE positions (3, B, L); pointer ids were already mapped to the text placeholder."""
        if mm_token_type_ids is None:
            mm_token_type_ids = (ids == self.config.image_token_id).int() + 2 * (ids == self.config.video_token_id).int()
        mask2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        if image_grid_thw is not None and bool(mm_token_type_ids.any()):
            positions, _ = self.model.get_rope_index(ids, mm_token_type_ids, image_grid_thw=image_grid_thw,
                                                     attention_mask=mask2d)
            return positions
        if mask2d is not None:
            pos = (mask2d.long().cumsum(-1) - 1).clamp(min=0)
        else:
            pos = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        return pos[None].expand(3, -1, -1)

    def _decoder(self, inputs_embeds, attention_mask, position_ids, cache, use_cache, **kwargs):
        return self.model.language_model(input_ids=None, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)

    def _vocab_logits(self, hidden):
        return self.lm_head(hidden)

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
        """Args as `Qwen2_5_VLForConditionalGeneration.forward`; pointer ids (>= copy_token_start) may appear in
        `input_ids` and `labels`. Returns logits (B, L, copy_token_start + K) and, with labels, the loss parts."""
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

    # ---- generate integration --------------------------------------------------------------------------------
    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Positions are computed inside forward (prefill: M-RoPE; decode: from the cache's per-row offsets), which
        # keeps left-padded rows identical to unpadded ones and supports copy_position="source_patch".
        return None

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("cache")
        if type(cache) is DynamicCache and not getattr(cache, "_is_user_defined", False):
            model_kwargs["cache"] = PointCopyCache(config=self.config.get_text_config(decoder=True))

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None,
                                      **model_kwargs):
        """Beam search / num_return_sequences: repeat each sample's *images* with the sample (pixel_values rows
        are patches, not samples, so the generic repeat_interleave would be wrong)."""
        if expand_size == 1:
            return input_ids, model_kwargs
        pixel_values = model_kwargs.pop("pixel_values", None)
        grid = model_kwargs.pop("image_grid_thw", None)
        if pixel_values is not None and grid is not None and input_ids is not None:
            counts = (input_ids == self.config.image_token_id).sum(-1).tolist()
            per_sample = images_per_sample(counts, self._tokens_per_image(grid))
            rows = grid.prod(-1).tolist()
            row_start = [0]
            for r in rows:
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


AutoConfig.register("pointcopy", PointCopyConfig, exist_ok=True)
AutoModelForImageTextToText.register(PointCopyConfig, PointCopyForConditionalGeneration, exist_ok=True)
