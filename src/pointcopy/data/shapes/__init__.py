"""The synthetic grounded-reasoning world ("shapes"): scenes, questions, grounded traces, v1g splits.

Modules: :mod:`.scene` (scenes and rendering), :mod:`.questions` (question families, exact answers, balanced
sampling), :mod:`.traces` (grounded traces and the copy / coord / nocopy variants), :mod:`.build` (v1g splits
on disk plus the ground-truth sidecar used by :mod:`pointcopy.eval.shapes`).
"""

from .build import build_split, item_record, make_item, read_items
from .questions import FAMILIES, Question, sample_question
from .scene import Scene, SceneConfig, SceneObject, generate_scene, render
from .traces import VARIANTS, trace_text, variants

__all__ = [
    "FAMILIES",
    "VARIANTS",
    "Question",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "build_split",
    "generate_scene",
    "item_record",
    "make_item",
    "read_items",
    "render",
    "sample_question",
    "trace_text",
    "variants",
]
