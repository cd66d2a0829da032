"""Images as the model should see them: any file Pillow reads, made RGB without losing what it shows.

`Image.convert("RGB")` alone is wrong for two common kinds of file:
  * 16-bit (and 32-bit integer / float) greyscale, e.g. scans, depth maps, medical PNGs: Pillow clips every value
    above 255 to white, so a 16-bit picture turns (almost) all white. Here 16-bit values are mapped onto 0..255
    (v / 257, the full 16-bit range) and other integer/float modes are scaled by their own range.
  * Transparency (RGBA, LA, palette with a transparent colour): convert() keeps whatever colour the transparent
    pixels hold, often black. Here they are composited on white, as qwen-vl-utils' `to_rgb` does for RGBA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `image` (see the module docstring for what differs from `convert("RGB")`)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in _SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
        if mode == "I" and lo >= 0 and hi <= 255:
            scaled = values
        elif mode == "I" and lo >= 0 and hi <= 65535:
            scaled = values / 257.0  # a 16-bit file Pillow opened as 32-bit "I"
        elif mode == "F" and lo >= 0 and hi <= 1.0:
            scaled = values * 255.0
        else:
            scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode the whole file (a truncated one fails here, not later) and return it as RGB. Raises OSError /
    ValueError / Image.DecompressionBombError from Pillow; callers name the item."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)
