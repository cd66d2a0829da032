"""Point-and-copy model: config, heads, copy memory, loss, backbone adapters, checkpoint conversion.

Adapters (one file each, registered by model_type in `convert.ADAPTERS` on import):
`qwen2_5_vl.PointCopyForConditionalGeneration` (Qwen2.5-VL, the v1 backbone) and
`qwen3_vl.PointCopyQwen3VLForConditionalGeneration` (Qwen3-VL). Any adapter's `from_pretrained` loads any
registered format (the adapter is chosen by config.json's model_type).
"""

from .config import CopyFields, PointCopyConfig
from .memory import CopyMemory, PointCopyCache
from .qwen2_5_vl import PointCopyForConditionalGeneration
from .qwen3_vl import PointCopyQwen3VLConfig, PointCopyQwen3VLForConditionalGeneration

__all__ = ["CopyFields", "CopyMemory", "PointCopyCache", "PointCopyConfig", "PointCopyForConditionalGeneration",
           "PointCopyQwen3VLConfig", "PointCopyQwen3VLForConditionalGeneration"]

from ..auto import register as _register  # noqa: E402 - the Auto classes once every adapter is defined

_register(finishing="pointcopy.model")
