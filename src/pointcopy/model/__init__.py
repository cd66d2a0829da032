"""Point-and-copy model: config, heads, copy memory, loss, backbone adapters, checkpoint conversion.

Adapters (one file each, registered by model_type in `convert.ADAPTERS` on import):
`qwen2_5_vl.PointCopyForConditionalGeneration` (Qwen2.5-VL, the v1 backbone). Any adapter's `from_pretrained` loads any
registered format (the adapter is chosen by config.json's model_type).
"""

from .config import CopyFields, PointCopyConfig
from .memory import CopyMemory, PointCopyCache
from .qwen2_5_vl import PointCopyForConditionalGeneration

__all__ = ["CopyFields", "CopyMemory", "PointCopyCache", "PointCopyConfig", "PointCopyForConditionalGeneration"]
