"""Draw the pipeline example's images (Pillow only, deterministic) and say where each drawn element is.

    .venv/bin/python examples/pipeline/draw.py            # writes examples/pipeline/images/*.png
    .venv/bin/python examples/pipeline/draw.py --boxes    # also prints every element's box (pixels) as JSON

Seven small figures of the MathVista / MathVerse kind: a bar chart, a line chart, a pie chart, a right triangle,
a circle with a tangent, a table and a scene of coloured shapes. The boxes printed by ``--boxes`` are the ground
truth in ``records.jsonl`` (``objects``), so the report can score the grounder's boxes (IoU). The PNGs are
committed; rerun this only after changing a figure (then update the boxes in records.jsonl too). Text uses
Pillow's built-in font, so another Pillow version may move a label by a pixel or two.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (30, 30, 30), (110, 110, 110), (225, 225, 225)


def font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def text(d: ImageDraw.ImageDraw, xy, s: str, size: int = 13, fill=BLACK, align: str = "mm") -> None:
    """``s`` placed at ``xy`` by ``align``: horizontal l/m/r, vertical t/m/b (no font anchors needed)."""
    f = font(size)
    x0, y0, x1, y1 = d.textbbox((0, 0), s, font=f)
    w, h = x1 - x0, y1 - y0
    x = xy[0] - {"l": 0, "m": w / 2, "r": w}[align[0]] - x0
    y = xy[1] - {"t": 0, "m": h / 2, "b": h}[align[1]] - y0
    d.text((round(x), round(y)), s, font=f, fill=fill)


def grow(box, px: int = 2) -> list[int]:
    x0, y0, x1, y1 = box
    return [x0 - px, y0 - px, x1 + px, y1 + px]


# ---------------------------------------------------------------------------------------------------- charts
def bar_chart():
    im = Image.new("RGB", (400, 300), WHITE)
    d = ImageDraw.Draw(im)
    ox, oy, scale = 60, 250, 4  # origin; pixels per kg
    text(d, (210, 18), "Fruit sold in May (kg)", 15)
    for v in range(0, 51, 10):
        y = oy - v * scale
        if v:
            d.line([(ox + 1, y), (385, y)], fill=LIGHT)
        d.line([(ox - 5, y), (ox, y)], fill=BLACK)
        text(d, (ox - 8, y), str(v), 12, align="rm")
    bars = {"Apples": (35, (214, 39, 40)), "Pears": (20, (44, 160, 44)), "Plums": (45, (148, 103, 189)),
            "Figs": (15, (140, 86, 75))}
    boxes = {}
    for i, (name, (value, colour)) in enumerate(bars.items()):
        c = ox + 40 + 80 * i
        box = [c - 22, oy - value * scale, c + 22, oy]
        d.rectangle(box, fill=colour)
        text(d, (c, oy + 12), name, 13)
        boxes[f"bar {name}"] = box
    d.line([(ox, 45), (ox, oy)], fill=BLACK, width=2)
    d.line([(ox, oy), (385, oy)], fill=BLACK, width=2)
    boxes["y-axis"] = [30, 43, ox + 1, oy + 7]  # the axis line with its ticks and tick labels
    return im, boxes


def line_chart():
    im = Image.new("RGB", (400, 300), WHITE)
    d = ImageDraw.Draw(im)
    ox, oy, scale = 60, 250, 6
    text(d, (210, 18), "Museum visitors per day (hundreds)", 14)
    for v in range(0, 31, 5):
        y = oy - v * scale
        if v:
            d.line([(ox + 1, y), (385, y)], fill=LIGHT)
        d.line([(ox - 5, y), (ox, y)], fill=BLACK)
        text(d, (ox - 8, y), str(v), 12, align="rm")
    d.line([(ox, 55), (ox, oy)], fill=BLACK, width=2)
    d.line([(ox, oy), (385, oy)], fill=BLACK, width=2)
    days = {"Monday": ("Mon", 12), "Tuesday": ("Tue", 18), "Wednesday": ("Wed", 15), "Thursday": ("Thu", 24),
            "Friday": ("Fri", 21)}
    points = [(95 + 65 * i, oy - v * scale) for i, (_, v) in enumerate(days.values())]
    d.line(points, fill=(31, 119, 180), width=3)
    boxes = {}
    for (day, (short, _)), (x, y) in zip(days.items(), points):
        d.line([(x, oy), (x, oy + 5)], fill=BLACK)
        text(d, (x, oy + 14), short, 13)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(31, 119, 180), outline=WHITE)
        boxes[f"point {day}"] = [x - 6, y - 6, x + 6, y + 6]
    return im, boxes


def pie_chart():
    im = Image.new("RGB", (320, 240), WHITE)
    d = ImageDraw.Draw(im)
    cx, cy, r = 140, 130, 90
    text(d, (160, 16), "Monthly budget", 15)
    slices = [("Rent", 50, (31, 119, 180)), ("Food", 30, (255, 127, 14)), ("Other", 20, (44, 160, 44))]
    start = -90.0  # degrees clockwise from 3 o'clock: the first slice starts at 12 o'clock
    boxes = {}
    for name, pct, colour in slices:
        end = start + 3.6 * pct
        d.pieslice([cx - r, cy - r, cx + r, cy + r], start, end, fill=colour, outline=WHITE, width=2)
        pts = [(cx, cy)] + [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
                            for a in [start + (end - start) * k / 90 for k in range(91)]]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        boxes[f"slice {name}"] = [math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys))]
        mid = math.radians((start + end) / 2)
        lx, ly = cx + 0.55 * r * math.cos(mid), cy + 0.55 * r * math.sin(mid)
        text(d, (lx, ly - 8), name, 13, WHITE)
        text(d, (lx, ly + 8), f"{pct}%", 13, WHITE)
        start = end
    return im, boxes


def table():
    im = Image.new("RGB", (360, 200), WHITE)
    d = ImageDraw.Draw(im)
    text(d, (180, 14), "Items sold by a school shop", 14)
    xs = [25, 115, 185, 255, 325]
    ys = [30, 66, 102, 138, 174]
    rows = [["Item", "2020", "2021", "2022"], ["Books", "12", "15", "9"], ["Pens", "30", "24", "27"],
            ["Bags", "5", "8", "11"]]
    d.rectangle([xs[0], ys[0], xs[-1], ys[1]], fill=LIGHT)
    for x in xs:
        d.line([(x, ys[0]), (x, ys[-1])], fill=GREY)
    for y in ys:
        d.line([(xs[0], y), (xs[-1], y)], fill=GREY)
    boxes = {}
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            text(d, ((xs[c] + xs[c + 1]) / 2, (ys[r] + ys[r + 1]) / 2), cell, 13)
            boxes[f"cell {row[0]}/{rows[0][c]}"] = [xs[c], ys[r], xs[c + 1], ys[r + 1]]
    return im, boxes


# ---------------------------------------------------------------------------------------------------- geometry
def dot(d: ImageDraw.ImageDraw, x, y, r: int = 3) -> None:
    d.ellipse([x - r, y - r, x + r, y + r], fill=BLACK)


def right_triangle():
    im = Image.new("RGB", (320, 240), WHITE)
    d = ImageDraw.Draw(im)
    A, B, C = (70, 55), (250, 190), (70, 190)  # AC : BC = 135 : 180 = 6 : 8
    d.line([A, C, B, A], fill=BLACK, width=2)
    d.line([(70, 175), (85, 175), (85, 190)], fill=BLACK, width=1)  # the right-angle mark at C
    for p in (A, B, C):
        dot(d, *p)
    text(d, (58, 50), "A", 15)
    text(d, (262, 196), "B", 15)
    text(d, (58, 200), "C", 15)
    text(d, (56, 122), "6", 14)
    text(d, (160, 204), "8", 14)
    text(d, (170, 112), "?", 14)
    boxes = {"side AC": grow([A[0], A[1], C[0], C[1]], 3), "side BC": grow([C[0], C[1], B[0], B[1]], 3),
             "side AB": grow([A[0], A[1], B[0], B[1]], 3), "right angle C": [68, 173, 87, 192]}
    return im, boxes


def circle_tangent():
    im = Image.new("RGB", (360, 270), WHITE)
    d = ImageDraw.Draw(im)
    O, r = (150, 160), 50
    B = (O[0] + r, O[1])
    A = (B[0], B[1] - 120)  # OB : AB = 50 : 120 = 5 : 12
    d.ellipse([O[0] - r, O[1] - r, O[0] + r, O[1] + r], outline=BLACK, width=2)
    d.line([A, (B[0], B[1] + 45)], fill=BLACK, width=2)  # the tangent line at B, through A
    d.line([O, B], fill=BLACK, width=2)
    d.line([O, A], fill=BLACK, width=2)
    d.line([(B[0] - 12, B[1]), (B[0] - 12, B[1] - 12), (B[0], B[1] - 12)], fill=BLACK, width=1)
    for p in (O, A, B):
        dot(d, *p)
    text(d, (O[0] - 12, O[1] + 4), "O", 15)
    text(d, (A[0] + 13, A[1] - 2), "A", 15)
    text(d, (B[0] + 13, B[1] + 8), "B", 15)
    text(d, (O[0] + 25, 172), "5", 13)
    text(d, (B[0] + 14, 100), "12", 13)
    boxes = {"tangent AB": grow([A[0], A[1], B[0], B[1]], 3), "radius OB": grow([O[0], O[1], B[0], B[1]], 3),
             "segment OA": grow([O[0], A[1], A[0], O[1]], 3),
             "right angle B": [B[0] - 14, B[1] - 14, B[0] + 2, B[1] + 2],
             "circle O": grow([O[0] - r, O[1] - r, O[0] + r, O[1] + r], 1)}
    return im, boxes


# ---------------------------------------------------------------------------------------------------- scene
def shapes_scene():
    im = Image.new("RGB", (400, 300), (238, 236, 230))
    d = ImageDraw.Draw(im)
    boxes = {}

    def circle(name, c, r, colour):
        box = [c[0] - r, c[1] - r, c[0] + r, c[1] + r]
        d.ellipse(box, fill=colour)
        boxes[name] = box

    circle("red circle", (60, 190), 28, (200, 40, 40))
    circle("yellow circle", (140, 110), 20, (235, 190, 30))
    boxes["blue square"] = [190, 160, 250, 220]
    d.rectangle(boxes["blue square"], fill=(40, 80, 200))
    d.polygon([(290, 220), (350, 220), (320, 165)], fill=(40, 160, 70))
    boxes["green triangle"] = [290, 165, 350, 220]
    circle("purple circle", (330, 80), 24, (130, 60, 170))
    return im, boxes


FIGURES = {"bar.png": bar_chart, "line.png": line_chart, "pie.png": pie_chart, "triangle.png": right_triangle,
           "circle.png": circle_tangent, "table.png": table, "scene.png": shapes_scene}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "images"), help="folder for the PNGs (default: images/ here)")
    ap.add_argument("--boxes", action="store_true", help="print each element's box in pixels as JSON")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_boxes = {}
    for name, draw in FIGURES.items():
        im, boxes = draw()
        im.save(out / name, optimize=True)
        all_boxes[name] = boxes
    if args.boxes:  # one element a line
        figures = []
        for name, boxes in all_boxes.items():
            rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in boxes.items())
            figures.append(f" {json.dumps(name)}: {{\n{rows}\n }}")
        print("{\n" + ",\n".join(figures) + "\n}")
    else:
        print(f"wrote {len(FIGURES)} images to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
