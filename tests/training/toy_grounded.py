"""A toy grounded data set written as real v1g files: two coloured squares on a plain background, each exactly
one 28x28 cell of a 4x4 grid; the question names one colour and the trace points at that square."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from pointcopy.data.v1g import V1GRecord, write_v1g

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 210), "yellow": (240, 200, 0)}


def toy_record(index: int, seed: int) -> V1GRecord:
    rng = random.Random(seed * 100003 + index)
    cells = rng.sample(range(16), 2)
    names = rng.sample(sorted(COLOURS), 2)
    image = Image.new("RGB", (112, 112), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    boxes = []
    for cell, name in zip(cells, names):
        r, c = divmod(cell, 4)
        box = [c * 28 + 4, r * 28 + 4, c * 28 + 24, r * 28 + 24]
        draw.rectangle(box, fill=COLOURS[name])
        boxes.append(box)
    target = rng.randrange(2)
    trace = f'detect(query="{names[target]} square", objects=["<obj1>"])\nAnswer: {names[target]}'
    return V1GRecord(id=f"toy{seed}-{index}", image=image,
                     conversations=[{"from": "human", "value": f"<image>\nFind the {names[target]} square."},
                                    {"from": "gpt", "value": trace}],
                     regions={"<obj1>": boxes[target]}, image_size=(112, 112))


def write_toy(path: Path, n: int, seed: int) -> Path:
    write_v1g([toy_record(i, seed) for i in range(n)], path)
    return path
