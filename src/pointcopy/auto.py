"""transformers' Auto classes for pointcopy checkpoints, from `import pointcopy` on.

    import pointcopy
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained("path/to/pointcopy-checkpoint")   # our class
    processor = AutoProcessor.from_pretrained("path/to/pointcopy-checkpoint")             # PointCopyProcessor

`import pointcopy` must stay free of torch (the scorers and the trace language do not need it), so the
registration waits for transformers: if transformers is already imported it happens at once, else right after
transformers' own package finishes importing (a one-shot import hook). Registering means importing
`pointcopy.model`, whose adapters register AutoConfig and AutoModelForImageTextToText (`model.convert.register_adapter`),
and mapping each pointcopy config to `PointCopyProcessor` for AutoProcessor.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

__all__ = ["register", "install"]

_done = False


def register(finishing: str | None = None) -> None:
    """Register pointcopy's configs, models and processor with transformers' Auto classes (idempotent).
    `finishing`: the module calling this as the last line of its own import (not counted as half-imported)."""
    global _done
    if _done or _half_imported(finishing):
        return  # a pointcopy module imported transformers half-way through its own import: registering now would
        # import it again, half-initialised; `pointcopy.model` and `pointcopy.processing` register when complete
    _done = True
    from transformers import AutoProcessor

    from .model import PointCopyConfig, PointCopyQwen3VLConfig
    from .processing import PointCopyProcessor

    for config_class in (PointCopyConfig, PointCopyQwen3VLConfig):
        AutoProcessor.register(config_class, PointCopyProcessor, exist_ok=True)


_NEEDED = ("pointcopy.model", "pointcopy.processing")  # what `register` imports


def _half_imported(finishing: str | None) -> bool:
    """Is a module `register` needs in the middle of its own import (its spec marked `_initializing`)?"""
    return any(getattr(getattr(m, "__spec__", None), "_initializing", False)
               for name, m in list(sys.modules.items())
               if name != finishing and any(name == n or name.startswith(n + ".") for n in _NEEDED))


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Finds `transformers` as the other finders would, and registers once its package has executed."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):
            original(module)
            register()

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers is loaded, else as soon as it is."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())
