"""Point-and-copy model: config, heads, copy memory, loss, Qwen2.5-VL adapter, checkpoint conversion."""

from .config import PointCopyConfig
from .memory import CopyMemory, PointCopyCache
from .qwen2_5_vl import PointCopyForConditionalGeneration

__all__ = ["CopyMemory", "PointCopyCache", "PointCopyConfig", "PointCopyForConditionalGeneration"]
