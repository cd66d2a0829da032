"""Is an image like the shapes world the embedded model was trained on? The shipped model knows nothing else, and
answers a chart or a photo with confident nonsense, so the demo (and the app) say so where the user looks.

    unlike_the_world(image, scenes) -> [reason, ...]     empty: it looks like a scene of the recipe's world
    world_warning(image, scenes) -> str | None           the sentence the console, the page and the app show

Checks what a scene always has: its size (the recipe's side range) and a background of the world's one colour
covering most of the picture (objects cover well under half of a scene).
"""

from __future__ import annotations

import numpy as np

from ..data.shapes.scene import BACKGROUND, SceneConfig

__all__ = ["unlike_the_world", "world_warning", "BACKGROUND_SHARE"]

BACKGROUND_SHARE = 0.4  # a recipe scene is mostly background; a chart on white or a photo has none of it
_TOLERANCE = 12  # per channel, for compression and resampling


def unlike_the_world(image, scenes: SceneConfig) -> list[str]:
    """Why `image` does not look like a scene drawn with `scenes` (empty list if it does)."""
    reasons = []
    w, h = image.size
    lo, hi = scenes.min_side, scenes.max_side
    if not (lo <= w <= hi and lo <= h <= hi):
        reasons.append(f"it is {w}x{h} px, the model saw scenes of {lo}-{hi} px a side")
    if not scenes.position_tint:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
        share = float((np.abs(rgb - np.array(BACKGROUND)) <= _TOLERANCE).all(-1).mean())
        if share < BACKGROUND_SHARE:
            reasons.append(f"{share:.0%} of it has the world's background colour RGB{BACKGROUND} "
                           f"(a scene is mostly background)")
    return reasons


def world_warning(image, scenes: SceneConfig, which: str = "this image") -> str | None:
    """The warning for a picture unlike the world (None if it looks like a scene)."""
    reasons = unlike_the_world(image, scenes)
    if not reasons:
        return None
    return (f"{which} does not look like the shapes world this model was trained on (" + "; ".join(reasons)
            + "): the model knows nothing else, so its answer means nothing")
