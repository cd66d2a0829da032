"""A short shapes-tiny training run learns to point clearly above chance on held-out scenes.

Measured teacher-forced (the reference trace is fed; each pointer target must win among the image's cells):
chance is 1 / (number of cells) <= 1/16 = 0.0625 for these 112-168 px scenes. The threshold 0.25 is four times
the best-case chance; the recipe's full run reaches ~0.9 on the same measure.
"""

from __future__ import annotations

import torch

from pointcopy.collate import GroundedCollator
from pointcopy.data.shapes.traces import COPY_BOX_TEXT, REGION_RENDER
from pointcopy.data.v1g import read_v1g
from pointcopy.embedded.recipe import ShapesRecipe, build_data, train_variant
from pointcopy.model import PointCopyForConditionalGeneration
from pointcopy.processing import PointCopyProcessor


def test_short_run_points_above_chance(tmp_path):
    recipe = ShapesRecipe.of(train_items=800, test_items=48, max_steps=300, batch_size=16, threads=2, max_objects=6,
                          vision_warmup_steps=100)
    build_data(tmp_path, recipe, progress=False)
    model_dir = train_variant(tmp_path, recipe, "copy", progress=False)
    model = PointCopyForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = PointCopyProcessor.from_pretrained(model_dir)
    collate = GroundedCollator(processor, region_key_mode="keep", region_occurrences=REGION_RENDER["occurrences"],
                               box_text=COPY_BOX_TEXT, max_side=None)
    records = read_v1g(tmp_path / "data" / "test" / "copy.jsonl").records
    with torch.no_grad():
        out = model(**collate(records))
    assert out.copy_accuracy.item() >= 0.25, out.copy_accuracy.item()
