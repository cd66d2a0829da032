"""The perception warm-up: its per-cell targets follow the pointer's cell rule, and a few steps of it make the
tower's copied cells carry colour far above chance on held-out scenes."""

from __future__ import annotations

import json

import pytest

from pointcopy.data.shapes import build_split, generate_scene, read_items
from pointcopy.data.shapes.scene import COLORS
from pointcopy.embedded.perception import IGNORE, cell_labels, pretrain_vision
from pointcopy.embedded.recipe import ShapesRecipe, vision_init
from pointcopy.geometry import MergedGrid, box_to_cells
from pointcopy.presets import build_preset


def _objects(scene):
    return [dict(vars(o)) for o in scene.objects]


def test_cell_labels_mark_exactly_the_cells_a_pointer_copies():
    for s in range(30):
        scene = generate_scene(s)
        grid = MergedGrid.for_image(scene.size)
        labels = cell_labels(_objects(scene), scene.size, grid)
        assert labels.shape == (grid.num_cells, 5)
        copied = {k: o for o in scene.objects for k in box_to_cells(o.box, scene.size, grid)}
        for k in range(grid.num_cells):
            if k not in copied:
                assert labels[k, 0] == 0 and (labels[k, 1:] == IGNORE).all(), (s, k)
                continue
            assert labels[k, 0] == 1, (s, k)
            owners = [o for o in scene.objects if k in box_to_cells(o.box, scene.size, grid)]
            assert list(COLORS)[labels[k, 2]] in {o.color for o in owners}, (s, k)


def test_shared_cell_goes_to_the_object_covering_more_of_it():
    grid = MergedGrid(2, 2)
    big = dict(size="large", color="red", material="metal", shape="cube", box=[2, 2, 34, 34])
    small = dict(size="small", color="blue", material="rubber", shape="sphere", box=[36, 36, 54, 54])
    labels = cell_labels([small, big], (56, 56), grid)  # cell 3 (28-56, 28-56): big covers 6x6, small 18x18
    assert list(COLORS)[labels[3, 2]] == "blue"
    assert list(COLORS)[labels[0, 2]] == "red"


@pytest.mark.slow
def test_warm_up_makes_copied_cells_carry_colour(tmp_path):
    build_split(tmp_path / "train", 400, 1, progress=False)
    build_split(tmp_path / "test", 64, 2, progress=False)
    model, processor = build_preset("shapes-tiny", seed=0)
    kw = dict(train_items=read_items(tmp_path / "train"), train_images=tmp_path / "train" / "images",
              test_items=read_items(tmp_path / "test"), test_images=tmp_path / "test" / "images", progress=False)
    before = pretrain_vision(model, processor, steps=0, **kw)["heldout_cell_accuracy"]
    after = pretrain_vision(model, processor, steps=60, batch_size=16, learning_rate=1e-2, **kw)
    # chance for 8 colours is 0.125 (the untrained head sits near it); 60 steps of 16 scenes reach ~0.8
    assert before["color"] < 0.3, before
    assert after["heldout_cell_accuracy"]["color"] >= 0.5, after


def test_vision_init_is_built_once_and_shared(tmp_path, monkeypatch):
    recipe = ShapesRecipe.of(train_items=40, test_items=8, vision_warmup_steps=2, threads=1)
    build_split(tmp_path / "data" / "train", 40, 1, progress=False)
    build_split(tmp_path / "data" / "test", 8, 2, progress=False)
    out = vision_init(tmp_path, recipe, seed=3, progress=False)
    report = json.loads((out / "warmup.json").read_text())
    assert report["steps"] == 2 and set(report["heldout_cell_accuracy"]) >= {"color", "shape", "material"}
    calls = []
    monkeypatch.setattr("pointcopy.embedded.perception.pretrain_vision", lambda *a, **k: calls.append(1))
    assert vision_init(tmp_path, recipe, seed=3, progress=False) == out and not calls
    with pytest.raises(ValueError, match="vision-init-seed3 was built with .*steps.: 2"):
        vision_init(tmp_path, recipe.with_(vision_warmup_steps=5), seed=3, progress=False)
    with pytest.raises(ValueError, match="preset_overrides"):
        vision_init(tmp_path, recipe.with_(preset_overrides={"layers": 6}), seed=3, progress=False)
    # the warm-up checkpoint carries the recipe's chat template, so every variant trained from it is prompted alike
    assert "helpful assistant" not in (out / "chat_template.jinja").read_text()
    with pytest.raises(ValueError, match="default_system_prompt"):
        vision_init(tmp_path, recipe.with_(default_system_prompt=True), seed=3, progress=False)
    legacy = {k: v for k, v in report.items() if k != "default_system_prompt"}  # written before the field
    (out / "warmup.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="default_system_prompt.: True"):
        vision_init(tmp_path, recipe, seed=3, progress=False)
    # ...and the preset's tokenizer: one saved by an earlier version of the preset is refused, not trained on
    from transformers import AutoTokenizer

    from pointcopy.presets import tokenizer_fingerprint

    assert report["tokenizer"] == tokenizer_fingerprint(AutoTokenizer.from_pretrained(out))
    (out / "warmup.json").write_text(json.dumps({**report, "tokenizer": "0123456789abcdef"}))
    with pytest.raises(ValueError, match="tokenizer.: .0123456789abcdef"):
        vision_init(tmp_path, recipe, seed=3, progress=False)
