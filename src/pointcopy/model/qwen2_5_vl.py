"""Qwen2.5-VL adapter: `PointCopyForConditionalGeneration`, and the Qwen2-VL-family hooks (`QwenVLHooks`).

The class *is* a `Qwen2_5_VLForConditionalGeneration` (same modules and state-dict keys: `model.visual.*`,
`model.language_model.*`, `lm_head.*`) plus `pointer.*` (the two heads). The point-and-copy logic, the forward
signature and the `generate` glue live in `core.PointCopyMixin`; this file only answers the backbone questions
(how to embed, encode images, position tokens, run the decoder). `QwenVLHooks` holds the answers that the whole
Qwen2-VL family shares (same module names, image grids, M-RoPE `get_rope_index`); `qwen3_vl.py` reuses them.
"""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from ..layout import tokens_per_image
from .config import PointCopyConfig
from .convert import OFFICIAL_KEY_MAPPING, QWEN_KEY_MAPPING, register_adapter
from .core import (PointCopyMixin, VisualFeatures, decoder_cache_kwarg, images_per_sample,  # noqa: F401 (re-export)
                   text_positions)
from .patch_embed import MatmulPatchEmbed


class QwenVLHooks:
    """Adapter hooks common to the Qwen2-VL family (`self.model.visual`, `.language_model`, `self.lm_head`,
    grids (t, h, w) in ViT patches, M-RoPE positions from `self.model.get_rope_index`)."""

    def _use_matmul_patch_embed(self) -> None:
        # the same parameters as Qwen's Conv3d patch embedding, computed as one matrix product (~5x faster on CPU)
        self.model.visual.patch_embed = MatmulPatchEmbed.from_conv(self.model.visual.patch_embed)

    def vision_layout(self) -> dict[str, int]:
        """The backbone's vision geometry, `{"patch_size", "merge_size"}` (Qwen2.5-VL: 14, 2; Qwen3-VL: 16, 2),
        from its config: what `layout.SlotMap` needs, and what the processor's image processor must agree with."""
        vision = self.config.vision_config
        return {"patch_size": int(vision.patch_size), "merge_size": int(vision.spatial_merge_size)}

    def tokens_per_image(self, image_grid_thw) -> list[int]:
        """LLM tokens of each image: the vision layout (`layout.tokens_per_image`) with this config's merge."""
        return tokens_per_image(image_grid_thw, merge_size=self.vision_layout()["merge_size"])

    def patch_rows_per_image(self, image_grid_thw) -> list[int]:
        """pixel_values rows of each image: t * h * w ViT patches."""
        return [int(n) for n in image_grid_thw.prod(-1).tolist()]

    def _text_embeddings(self, ids):
        return self.model.get_input_embeddings()(ids)

    def _image_token_mask(self, ids):
        return ids == self.config.image_token_id

    def _prefill_positions(self, ids, attention_mask, image_grid_thw, mm_token_type_ids):
        """M-RoPE positions (3, B, L); pointer ids were already mapped to the text placeholder."""
        if mm_token_type_ids is None:
            mm_token_type_ids = (ids == self.config.image_token_id).int() + 2 * (ids == self.config.video_token_id).int()
        mask2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        if image_grid_thw is not None and bool(mm_token_type_ids.any()):
            positions, _ = self.model.get_rope_index(ids, mm_token_type_ids, image_grid_thw=image_grid_thw,
                                                     attention_mask=mask2d)
            return positions
        return text_positions(ids, mask2d, self.position_axes)

    def _vocab_logits(self, hidden):
        return self.lm_head(hidden)

    def _cache_kwarg(self) -> str:
        """`cache` or `past_key_values`: what the installed transformers' text decoder calls its KV cache."""
        name = self.__dict__.get("_decoder_cache_kwarg")
        if name is None:
            name = self.__dict__["_decoder_cache_kwarg"] = decoder_cache_kwarg(self.model.language_model.forward)
        return name


class PointCopyForConditionalGeneration(QwenVLHooks, PointCopyMixin, Qwen2_5_VLForConditionalGeneration):
    config_class = PointCopyConfig
    config: PointCopyConfig
    base_model_type = "qwen2_5_vl"
    base_key_mapping = QWEN_KEY_MAPPING
    official_model_type = "v1"
    official_key_mapping = OFFICIAL_KEY_MAPPING

    def __init__(self, config: PointCopyConfig):
        super().__init__(config)
        self._use_matmul_patch_embed()
        self._init_pointer()

    def _encode_images(self, pixel_values, image_grid_thw) -> VisualFeatures:
        """(N, D) merger outputs for all image tokens of the batch, in sequence order (no per-layer inputs)."""
        feats = self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True).pooler_output
        return VisualFeatures(torch.cat(feats, dim=0))

    def _decoder(self, inputs_embeds, attention_mask, position_ids, cache, use_cache, visual_mask=None,
                 layer_inputs=None, **kwargs):
        if layer_inputs:
            raise ValueError("Qwen2.5-VL takes no per-layer visual inputs")
        return self.model.language_model(input_ids=None, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         position_ids=position_ids, use_cache=use_cache,
                                         **{self._cache_kwarg(): cache}, **kwargs)


register_adapter(PointCopyForConditionalGeneration)
