"""Qwen3-VL adapter: `PointCopyQwen3VLConfig` + `PointCopyQwen3VLForConditionalGeneration`.

The class *is* a `Qwen3VLForConditionalGeneration` (state-dict keys `model.visual.*`, `model.language_model.*`,
`lm_head.*`) plus `pointer.*`; config.json says model_type "pointcopy_qwen3_vl". A base Qwen3-VL checkpoint
(model_type "qwen3_vl") converts on `from_pretrained` (heads = I/sqrt(D), pointer ids after the tokenizer's
vocabulary). The Qwen2-VL-family hooks (embeddings, image-token mask, grids, M-RoPE positions, vision layout:
patch 16, merge 2 -> one LLM token per 32 x 32 px) come from `qwen2_5_vl.QwenVLHooks`; this file adds what
Qwen3-VL does differently: deepstack.

Deepstack. Qwen3-VL's vision tower also returns, for each image token, n per-layer features (its
`deepstack_merger_list` outputs, n = len(vision_config.deepstack_visual_indexes)); the text model adds feature i
to the hidden state of every image token after decoder layer i (`visual_pos_masks`, `deepstack_visual_embeds`).
`_encode_images` returns them as `VisualFeatures.layer_inputs` and `_decoder` passes them on, so with pointing
never used the model *is* Qwen3-VL (same logits). For a copied token (`<|copy_k|>`), `copy_deepstack` decides:

* "source" (default): the copy memory keeps slot k's n features (`CopyMemory.layer_values`, (n, B, K, D),
  detached like the values, reordered with beams) and they are added at the copied position after layers
  0..n-1 exactly as at the image token. A copied token then enters the LM as the source image token did (apart
  from its position): the LM has only ever seen visual embeddings together with their injections.
* "none": the copied token carries only the merger embedding (the literal v1 rule), as an ablation.

No v1 checkpoint exists for Qwen3-VL, so neither choice is "official"; "source" is chosen on structural grounds
(docs/design/qwen3-vl-adapter.md §4). Cost of "source": n x (B, K, D) more memory (3x the values for 8B).
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from .config import CopyFields
from .convert import QWEN_KEY_MAPPING, register_adapter
from .core import PointCopyMixin, VisualFeatures
from .qwen2_5_vl import QwenVLHooks


@strict
class PointCopyQwen3VLConfig(CopyFields, Qwen3VLConfig):
    """Qwen3-VL + copy fields (`CopyFields`) + `copy_deepstack`. Ids have no official defaults for Qwen3-VL: a
    conversion takes them from the tokenizer (`copy_token_start = len(tokenizer)`, `region_token_id` =
    `<|fim_pad|>`)."""

    model_type = "pointcopy_qwen3_vl"

    copy_deepstack: str = "source"  # "source": copied tokens get their slot's deepstack features; "none": not


class PointCopyQwen3VLForConditionalGeneration(QwenVLHooks, PointCopyMixin, Qwen3VLForConditionalGeneration):
    config_class = PointCopyQwen3VLConfig
    config: PointCopyQwen3VLConfig
    base_model_type = "qwen3_vl"
    base_key_mapping = QWEN_KEY_MAPPING  # a no-op on 5.x keys; maps the older `visual.*` / `model.*` layout

    def __init__(self, config: PointCopyQwen3VLConfig):
        super().__init__(config)
        self._use_matmul_patch_embed()
        self._init_pointer()

    def _encode_images(self, pixel_values, image_grid_thw) -> VisualFeatures:
        """Merger outputs (N, D) and the n deepstack features (N, D) each, image tokens in sequence order."""
        out = self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        layers = tuple(torch.cat(per_image, dim=0) for per_image in out.deepstack_features or ())
        return VisualFeatures(torch.cat(out.pooler_output, dim=0), layers)

    def _decoder(self, inputs_embeds, attention_mask, position_ids, cache, use_cache, visual_mask=None,
                 layer_inputs=None, **kwargs):
        """`layer_inputs[i]` (n_visual, D) is added after decoder layer i at `visual_mask` (B, L) (deepstack)."""
        if layer_inputs:
            kwargs.update(visual_pos_masks=visual_mask, deepstack_visual_embeds=list(layer_inputs))
        return self.model.language_model(input_ids=None, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         position_ids=position_ids, use_cache=use_cache,
                                         **{self._cache_kwarg(): cache}, **kwargs)


register_adapter(PointCopyQwen3VLForConditionalGeneration)
