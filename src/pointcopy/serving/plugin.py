"""The `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts (engine core,
workers), so the model is known wherever vLLM builds it. Cheap and idempotent: it imports no vLLM model code."""

from __future__ import annotations

ARCHITECTURE = "PointCopyForConditionalGeneration"  # config.json architectures of our Qwen2.5-VL checkpoints


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from ..model.config import PointCopyConfig
    from .compat import use_pil_qwen_image_processor

    use_pil_qwen_image_processor()

    AutoConfig.register(PointCopyConfig.model_type, PointCopyConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "pointcopy.serving.vllm_model:PointCopyVLLM")
