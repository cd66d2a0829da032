"""2-D CLEVR-Math-like scenes: objects with exact pixel boxes, deterministic from a seed, drawn with PIL.

Vocabulary is CLEVR's (``shared/benchmarks/clevr-math/properties.json``): shapes cube / sphere / cylinder, the 8
CLEVR colours with their RGB values, sizes large / small, materials rubber / metal. Drawing (no antialiasing, so
the PNG bytes are a pure function of the scene):

* cube -> filled square, sphere -> filled circle, cylinder -> filled upward triangle. A 2-D "side view" of a
  cylinder (rectangle with an elliptical cap) differs from a square only in width and a few cap pixels, which at
  a small object's ~18 px is nearly invisible to a 14-px patch embedding; a triangle fills half its box (square
  1.0, circle 0.79) and has a distinct corner layout, so the three silhouettes stay separable. CLEVR has no
  cone, so the CLEVR word "cylinder" is kept for question/answer compatibility.
* large / small -> ``large_px`` / ``small_px`` box sides (default 32 / 18 px: ~2x, like CLEVR's 0.7 / 0.35).
* rubber (matte) -> flat fill; metal (shiny) -> the fill, a near-black rim (the glyph's outer ``RIM_PX`` pixels)
  and a white specular highlight in the upper-left interior, both inside the glyph so the box stays exact. The
  highlight alone (255 vs the background's ~236) looks like a hole to a 14-px patch embedding, and only the
  cells holding the object's upper-left part see it, so the object's cells barely tell material apart
  (measurements: docs/embedded-world.md#metal-rim). The rim runs along the whole silhouette, so every cell an
  object touches sees it, and no colour of the palette is that dark.

A box is ``(x0, y0, x1, y1)`` in pixel *edges* (half-open: the object's pixels are ``x0 <= x < x1``); it is the
tight bounding box of the drawn pixels. Objects are kept ``gap`` px apart (box to box) and inside the image.
Object ids are 1-based in the raster order of their *first merged cell* (the lowest copy slot of the object's cells
under the official box -> cell rule), ties broken by centre x then centre y — the order in which traces enumerate
them. The first pointer of each enumerated object therefore never goes back: ordering by the centre's cell row
instead made that sequence non-monotone in most scenes, and the model duplicated or skipped objects
(measurements: docs/embedded-world.md#object-order).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from pointcopy.geometry import box_to_cells

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "MATERIALS",
    "BACKGROUND",
    "CELL",
    "SceneConfig",
    "SceneObject",
    "Scene",
    "generate_scene",
    "render",
    "raster_key",
]

SHAPES = ("cube", "sphere", "cylinder")
# CLEVR's RGB values (properties.json): pairwise distinct by >= 60 in some channel, all darker than the background
# except yellow/cyan, which still differ from it by > 180 in one channel.
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SIZES = ("large", "small")
MATERIALS = ("rubber", "metal")
BACKGROUND = (236, 236, 230)
HIGHLIGHT = (255, 255, 255)
RIM = (16, 16, 16)
RIM_PX = 2
CELL = 28  # merged-cell side of Qwen2.5-VL (patch 14 x merge 2); image sides are multiples of it


@dataclass(frozen=True)
class SceneConfig:
    """Scene generation settings.

    Attributes:
        min_objects, max_objects: object count range (inclusive).
        min_side, max_side: image side range in px (inclusive); sides are multiples of ``CELL``.
        large_px, small_px: box side of large / small objects.
        gap: minimum distance in px between two boxes (and from a box to the image border: ``margin``).
        margin: minimum distance from a box to the image border.
        exclusive_cells: no merged cell (``CELL`` px square) holds parts of two objects, so every cell a pointer
            copies for an object shows that object alone. Each glyph is then placed inside a block of
            ``ceil(side / CELL)`` cells per axis (at a random offset within it). With objects free to straddle
            cells, many objects share a cell with a neighbour, and a model misreads those objects' attributes
            far more often, mostly as the neighbour's words
            (measurements: docs/embedded-world.md#cells-of-their-own).
        position_tint: per-cell background tint step (0 = plain background). The merged cell in row r, column c
            is filled with ``BACKGROUND - position_tint * (c, r, 0)``, like graph paper with coloured squares:
            Qwen2.5-VL's vision tower has no absolute position embedding (only 2-D rotary attention), so without
            it two identical objects give identical patch features and the pointer cannot tell them apart. (The
            shapes-tiny recipe leaves it off: it did not help there; measurements:
            docs/embedded-world.md#position-tint.)
    """

    min_objects: int = 3
    max_objects: int = 10
    min_side: int = 112
    max_side: int = 168
    large_px: int = 32
    small_px: int = 18
    gap: int = 4
    margin: int = 2
    exclusive_cells: bool = False
    position_tint: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"SceneConfig: need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if self.min_side % CELL or self.max_side % CELL or not CELL <= self.min_side <= self.max_side:
            raise ValueError(f"SceneConfig: min_side/max_side must be multiples of {CELL} with min <= max, got "
                             f"{self.min_side}, {self.max_side}")
        if not 6 <= self.small_px < self.large_px:
            raise ValueError(f"SceneConfig: need 6 <= small_px < large_px, got {self.small_px}, {self.large_px}")
        if self.large_px + 2 * self.margin > self.min_side:
            raise ValueError(f"SceneConfig: large_px={self.large_px} does not fit in min_side={self.min_side}")
        if not 0 <= self.position_tint * (self.max_side // CELL - 1) <= 100:
            raise ValueError(f"SceneConfig: position_tint={self.position_tint} must be >= 0 and keep the background "
                             f"bright (step x cells <= 100)")
        for side in (self.small_px, self.large_px) if self.exclusive_cells else ():
            # the glyph must fit its block of cells with the margin to spare, also in a block at the image border
            if -(-side // CELL) * CELL - side < self.margin:
                raise ValueError(f"SceneConfig: with exclusive_cells a {side}-px glyph leaves less than margin="
                                 f"{self.margin} px in its {-(-side // CELL)}-cell block; use another size or margin")
        if self.gap < 0 or self.margin < 0:
            raise ValueError(f"SceneConfig: gap and margin must be >= 0, got {self.gap}, {self.margin}")

    @property
    def sides(self) -> list[int]:
        return list(range(self.min_side, self.max_side + 1, CELL))


@dataclass(frozen=True)
class SceneObject:
    """One object. ``id`` is 1-based raster order; ``box`` is ``(x0, y0, x1, y1)`` in pixel edges."""

    id: int
    shape: str
    color: str
    size: str
    material: str
    box: tuple[int, int, int, int]

    def attr(self, name: str) -> str:
        """Attribute by CLEVR type name: ``shape``, ``color``, ``size`` or ``material``."""
        if name not in ("shape", "color", "size", "material"):
            raise ValueError(f"unknown attribute {name!r}")
        return getattr(self, name)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Scene:
    """A scene: image size ``(width, height)`` and its objects in raster order (ids 1..n)."""

    width: int
    height: int
    objects: tuple[SceneObject, ...]
    seed: Any = None
    background: tuple[int, int, int] = field(default=BACKGROUND)
    position_tint: int = 0  # see SceneConfig.position_tint

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def to_dict(self) -> dict:
        """JSON-ready dict (inverse: :meth:`from_dict`)."""
        d = asdict(self)
        d["objects"] = [dict(asdict(o), box=list(o.box)) for o in self.objects]
        d["background"] = list(self.background)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        objs = tuple(SceneObject(**{**o, "box": tuple(o["box"])}) for o in d["objects"])
        return cls(d["width"], d["height"], objs, d.get("seed"), tuple(d.get("background", BACKGROUND)),
                   int(d.get("position_tint", 0)))


def raster_key(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, float, float]:
    """Sort key of a box in an image of ``size``: its first merged cell's slot, then centre x, then centre y."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(box_to_cells(box, size)), cx, cy


def _separated(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _position(rng: random.Random, cfg: SceneConfig, side: int, extent: int) -> int:
    """Left (or top) edge of a glyph of ``side`` px on an image axis of ``extent`` px.

    Free placement: anywhere ``margin`` px inside the image. With ``exclusive_cells``: inside a random block of
    ``ceil(side / CELL)`` cells, so the glyph touches no more cells than it must (a free 18-px glyph straddles a
    cell border 61% of the time per axis, which leaves few cells free for the other objects)."""
    if not cfg.exclusive_cells:
        return rng.randint(cfg.margin, extent - cfg.margin - side)
    span = -(-side // CELL)
    start = rng.randrange(extent // CELL - span + 1) * CELL
    lo, hi = max(start, cfg.margin), min(start + span * CELL, extent - cfg.margin) - side
    return rng.randint(lo, hi)


def _glyph_box(shape: str, side: int, x: int, y: int) -> tuple[int, int, int, int]:
    # Every glyph fills its side x side box exactly (tight bounding box), so the box is the object's box.
    return x, y, x + side, y + side


def generate_scene(seed: Any, config: SceneConfig | None = None, num_objects: int | None = None) -> Scene:
    """A random scene, a pure function of ``(seed, config, num_objects)``.

    Args:
        seed: anything ``random.Random`` accepts (int or str are stable across runs and platforms).
        config: settings (default :class:`SceneConfig`).
        num_objects: force the object count (default: uniform in the config's range).
    Raises:
        ValueError if the objects cannot be placed (after trying every image size of the range many times).

    Placement is rejection sampling: up to 100 random positions per object; if one object does not fit, the
    whole layout (image size included) is redrawn. Crowded scenes therefore favour larger images: with the
    defaults a 10-object scene rarely fits 112 x 112.
    """
    cfg = config or SceneConfig()
    rng = random.Random(seed)
    n = num_objects if num_objects is not None else rng.randint(cfg.min_objects, cfg.max_objects)
    if n < 1:
        raise ValueError(f"scene {seed!r}: num_objects must be >= 1, got {n}")
    sides = cfg.sides
    for _attempt in range(200):
        w, h = rng.choice(sides), rng.choice(sides)
        attrs = [
            (rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES), rng.choice(MATERIALS)) for _ in range(n)
        ]
        # Place large objects first: they are the hard ones to fit.
        order = sorted(range(n), key=lambda i: attrs[i][2] != "large")
        boxes: dict[int, tuple[int, int, int, int]] = {}
        cells: dict[int, set[int]] = {}  # merged cells of each placed object (exclusive_cells only)
        for i in order:
            side = cfg.large_px if attrs[i][2] == "large" else cfg.small_px
            for _try in range(100):
                x, y = _position(rng, cfg, side, w), _position(rng, cfg, side, h)
                box = _glyph_box(attrs[i][0], side, x, y)
                if not all(_separated(box, b, cfg.gap) for b in boxes.values()):
                    continue
                if cfg.exclusive_cells:
                    mine = set(box_to_cells(box, (w, h)))
                    if any(mine & taken for taken in cells.values()):
                        continue
                    cells[i] = mine
                boxes[i] = box
                break
            else:
                break
        if len(boxes) == n:
            ranked = sorted(range(n), key=lambda i: raster_key(boxes[i], (w, h)))
            objs = tuple(SceneObject(k + 1, *attrs[i], boxes[i]) for k, i in enumerate(ranked))
            return Scene(w, h, objs, seed, position_tint=cfg.position_tint)
    raise ValueError(f"scene {seed!r}: could not place {n} objects in images of {cfg.min_side}-{cfg.max_side} px")


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(round(c * f)) for c in rgb)  # type: ignore[return-value]


def _draw_object(draw, o: SceneObject) -> None:
    x0, y0, x1, y1 = o.box
    fill = COLORS[o.color]
    rim = dict(outline=RIM, width=RIM_PX) if o.material == "metal" else {}
    # PIL's shape coordinates are inclusive pixel positions: the last pixel is x1 - 1. Outlines are drawn inside.
    if o.shape == "cube":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill, **rim)
    elif o.shape == "sphere":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill, **rim)
    elif o.shape == "cylinder":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill, **rim)
    else:
        raise ValueError(f"object {o.id}: unknown shape {o.shape!r}")
    if o.material == "metal":
        s = x1 - x0
        # Highlight well inside every glyph (for the triangle: in its upper-middle part, which is narrower).
        if o.shape == "cylinder":
            cx, cy, r = (x0 + x1) / 2 - s * 0.06, y0 + s * 0.55, max(2.0, s * 0.13)
        else:
            cx, cy, r = x0 + s * 0.34, y0 + s * 0.34, max(2.0, s * 0.14)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=HIGHLIGHT)
    elif o.material != "rubber":
        raise ValueError(f"object {o.id}: unknown material {o.material!r}")


def render(scene: Scene):
    """The scene as an RGB ``PIL.Image`` of ``scene.size`` (deterministic, no antialiasing)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", scene.size, scene.background)
    draw = ImageDraw.Draw(img)
    if scene.position_tint:
        step = scene.position_tint
        for row in range(scene.height // CELL):
            for col in range(scene.width // CELL):
                r, g, b = scene.background
                fill = (max(0, r - step * col), max(0, g - step * row), b)
                draw.rectangle([col * CELL, row * CELL, (col + 1) * CELL - 1, (row + 1) * CELL - 1], fill=fill)
    for o in scene.objects:
        _draw_object(draw, o)
    return img
