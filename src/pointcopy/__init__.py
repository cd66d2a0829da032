"""pointcopy: point-and-copy multimodal grounded reasoning (v1) on current transformers.

The two public model classes are imported lazily so that the pure-Python parts of the package
(trace language, geometry, scorers) do not pay for importing torch/transformers.
"""

__version__ = "0.1.0"

_LAZY = {
    "PointCopyConfig": "pointcopy.model",
    "PointCopyForConditionalGeneration": "pointcopy.model",
    "PointCopyQwen3VLConfig": "pointcopy.model",
    "PointCopyQwen3VLForConditionalGeneration": "pointcopy.model",
    "CopyMemory": "pointcopy.model",
}


from . import auto as _auto

_auto.install()  # transformers' Auto classes learn pointcopy checkpoints once transformers is imported (auto.py)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pointcopy' has no attribute {name!r}")


__all__ = sorted(_LAZY)
