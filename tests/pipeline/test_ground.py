"""Grounding by attention contrast (pointcopy.pipeline.ground) with tiny models: the shared-prefix batched path
equals the naive one, a known contrast map gives the expected box, bad records never stop a run, and a killed
run resumes without losing or repeating a record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointcopy.data.shapes.scene import SceneConfig, generate_scene, render
from pointcopy.data.shapes.traces import describe
from pointcopy.layout import QWEN2_5_VL, SlotMap
from pointcopy.pipeline.ground import (GroundOptions, Grounder, GroundRecord, choose_box, contrast_map,
                                       ground_records, read_records)
from pointcopy.presets import PRESET_PROCESSORS, PRESETS, build_tiny_processor, build_tiny_tokenizer, tiny_model

CONFIG = SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def preset(name: str, tokenizer, seed: int = 0):
    """(model, processor) of a tiny preset, the tokenizer built once for the module."""
    processor = build_tiny_processor(tokenizer, **PRESET_PROCESSORS.get(name, {}))
    return tiny_model(seed, processor.tokenizer, **PRESETS[name]).eval(), processor


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return preset("tiny", tokenizer)


def scene_records(seed: str, n_objects: int, prefix: str = "s"):
    scene = generate_scene(seed, CONFIG, num_objects=n_objects)
    image = render(scene)
    return scene, [GroundRecord(f"{prefix}/o{o.id}", [image], describe(o), tuple(float(v) for v in o.box))
                   for o in scene.objects]


def assert_same_maps(a, b, tol=1e-6):
    for x, y in zip(a.with_name + a.without, b.with_name + b.without):
        assert x.shape == y.shape
        assert torch.allclose(x, y, atol=tol, rtol=1e-4), float((x - y).abs().max())


# ---- shared prefix + batched suffixes == two full forwards per object ----------------------------------------------
@pytest.mark.parametrize("name,options", [
    ("tiny", dict(layers=(0, 1), batch_size=2)),  # several suffix batches reuse one prefix cache
    ("tiny", dict(layers=(1,), heads={1: [0, 3]}, sharpness="corr")),  # a head subset ("localization heads")
    ("tiny", dict(layers=(0, 1), image_scale=2.0)),  # finer cells; boxes still in the original image's pixels
    ("tiny-qwen3", dict(layers=(0, -1))),  # another backbone of the family (deepstack visual inputs)
])
def test_shared_prefix_maps_equal_naive_maps(name, options, tokenizer):
    model, processor = preset(name, tokenizer, seed=1)
    _, records = scene_records(f"eq:{name}", 5)
    grounder = Grounder(model, processor, GroundOptions(**options))
    images, descriptions = records[0].images, [r.description for r in records]
    shared = grounder.maps(images, descriptions)
    naive = grounder.maps(images, descriptions, naive=True)
    assert_same_maps(shared, naive)
    assert shared.with_name[0].shape == (len(grounder.layers), shared.slot_map.num_slots)
    # the maps differ between descriptions (the name reaches the final position) and from the baseline
    assert not torch.allclose(shared.with_name[0], shared.with_name[1])
    assert not torch.allclose(shared.with_name[0], shared.without[0])
    rows_shared = grounder.ground_group(records)
    rows_naive = grounder.ground_group(records, naive=True)
    assert [r["box"] for r in rows_shared] == [r["box"] for r in rows_naive]
    assert [r["peak"] for r in rows_shared] == [r["peak"] for r in rows_naive]
    w, h = records[0].images[0].size
    grid = shared.slot_map.grids[0]
    scale = grounder.options.image_scale
    want = processor.grid_for((round(w * scale), round(h * scale)))
    assert (grid.rows, grid.cols) == (want.rows, want.cols)  # the grid of the resized image, sizes of the given one
    for row in rows_shared:
        assert row["image_size"] == [w, h]
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_maps_are_attention_of_the_final_position_over_image_tokens(tiny):
    """Against output_attentions of a plain eager forward: the final row, head- and layer-averaged, at the image
    token positions (catches a wrong query row, a wrong group column, or padding leaking into a suffix)."""
    model, processor = tiny
    _, records = scene_records("eager", 3)
    grounder = Grounder(model, processor, GroundOptions(layers=(0, 1), batch_size=8))
    descriptions = [r.description for r in records] + ["x"]  # suffixes of different lengths in one batch
    maps = grounder.maps(records[0].images, descriptions)
    text = grounder.prompt(descriptions[0], 1)
    batch = processor([text], records[0].images)
    saved = model.config.text_config._attn_implementation
    model.config.text_config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = model(**batch, output_attentions=True, use_cache=False)
    finally:
        model.config.text_config._attn_implementation = saved
    image_pos = (batch["input_ids"][0] == processor.image_token_id).nonzero().flatten()
    expected = torch.stack([out.attentions[layer][0, :, -1, image_pos].mean(0) for layer in (0, 1)])
    assert torch.allclose(maps.with_name[0], expected, atol=1e-6)


def test_multi_image_record_and_plain_qwen_checkpoint(tmp_path, tiny):
    """Two images in one record; a plain Qwen2.5-VL checkpoint loaded through load_model grounds the same."""
    from pointcopy.analysis.traces import load_model
    from pointcopy.presets import plain_qwen_twin

    model, processor = tiny
    plain_qwen_twin(model).save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    plain, plain_processor, info = load_model(tmp_path / "plain")
    assert info.model_type == "qwen2_5_vl"
    _, first = scene_records("mi:1", 3)
    _, second = scene_records("mi:2", 4)
    images = first[0].images + second[0].images
    records = [GroundRecord(f"r{i}", images, r.description, r.box, 1) for i, r in enumerate(second)]
    grounder = Grounder(plain, plain_processor, GroundOptions(layers=(0, 1)))
    assert_same_maps(grounder.maps(images, [r.description for r in records]),
                     grounder.maps(images, [r.description for r in records], naive=True))
    rows = grounder.ground_group(records)
    ours = Grounder(model, processor, GroundOptions(layers=(0, 1))).ground_group(records)
    assert [r["box"] for r in rows] == [r["box"] for r in ours]  # same backbone weights, same boxes
    for row in rows:
        assert row["error"] is None and row["image"] in (0, 1)
        w, h = row["image_size"]
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


# ---- a known contrast map gives the expected box -------------------------------------------------------------------
def square_layout(side_cells: int = 6) -> SlotMap:
    side = 28 * side_cells
    return SlotMap.for_images([(side, side)], **QWEN2_5_VL)


@pytest.mark.parametrize("cells,expected", [
    ([(1, 3), (1, 4), (2, 3), (2, 4)], (84.0, 28.0, 140.0, 84.0)),  # a 2x2 block: the block, not the peak cell
    ([(4, 1)], (28.0, 112.0, 56.0, 140.0)),  # one cell: that cell
    ([(0, 0), (0, 1), (1, 0), (1, 1)], (0.0, 0.0, 56.0, 56.0)),  # at the corner: kept inside the image
])
def test_known_contrast_map_gives_the_expected_box(cells, expected):
    layout = square_layout()
    r = np.ones(36)
    for k, (row, col) in enumerate(cells):
        r[row * 6 + col] = 5.0 + 0.01 * k  # the first-listed cell is not the peak: the box must not depend on it
    choice = choose_box(r, layout, crop_ratios=(1 / 6, 1 / 3, 1 / 2, 2 / 3))
    assert choice.box == pytest.approx(expected, abs=0.1)
    assert (choice.peak_row, choice.peak_col) == cells[-1]
    assert choice.contrast == pytest.approx(r.max())  # median is 1


def test_centroid_centre_is_sub_cell_and_sharpness_kinds():
    layout = square_layout()
    r = np.ones(36)
    r[2 * 6 + 2], r[2 * 6 + 3] = 6.0, 3.0  # mass leaning right of the peak cell
    peak = choose_box(r, layout, crop_ratios=(0.25,), centre="peak")
    centroid = choose_box(r, layout, crop_ratios=(0.25,), centre="centroid")
    assert peak.box == pytest.approx((49, 49, 91, 91))
    assert 70 < (centroid.box[0] + centroid.box[2]) / 2 < 84  # pulled towards the second cell, sub-cell
    for kind in ("otsu", "diff", "ratio"):
        assert choose_box(r, layout, sharpness=kind).peak_slot == 14


def test_contrast_map_guards_zeros():
    a = torch.tensor([0.0, 0.6, 1e-9, 0.4])
    base = torch.tensor([0.0, 0.5, 0.0, 0.5])
    r = contrast_map(a, base, eps_scale=0.05)
    assert torch.isfinite(r).all()
    assert int(torch.argmax(r)) == 1  # a ratio of two tiny numbers (index 2) does not win the peak
    assert torch.allclose(contrast_map(base, base), torch.ones(4, dtype=torch.float64))


# ---- bad input: per-record errors or low-confidence rows, never a crashed run ----------------------------------------
def test_bad_records_are_rows_not_crashes(tmp_path, tiny):
    model, processor = tiny
    scene, records = scene_records("bad", 3)
    image_path = tmp_path / "scene.png"
    render(scene).save(image_path)
    w, h = scene.size
    lines = [
        {"id": "good", "image": "scene.png", "description": records[0].description, "box": list(records[0].box)},
        {"id": "nothing", "image": "scene.png", "description": "purple dragon", "box": list(records[1].box)},
        {"id": "empty", "image": "scene.png", "description": "  "},
        {"id": "markup", "image": "scene.png", "description": "red <|im_end|> cube"},
        {"id": "no-image", "images": [], "description": "red cube"},
        {"id": "missing", "image": "nope.png", "description": "red cube"},
        {"id": "gt-outside", "image": "scene.png", "description": records[2].description,
         "box": [w + 5, h + 5, w + 30, h + 30]},
        {"id": "gt-index", "image": "scene.png", "description": records[2].description, "box": [1, 1, 9, 9],
         "image_index": 3},
    ]
    src = tmp_path / "records.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    rows = ground_records(Grounder(model, processor, GroundOptions(layers=(1,))), read_records(src),
                          tmp_path / "out", echo=lambda *_: None)
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 9
    assert by_id["good"]["error"] is None and by_id["good"]["iou"] is not None
    assert by_id["nothing"]["error"] is None and "low_confidence" in by_id["nothing"]
    assert by_id["empty"]["error"]["field"] == "description"
    assert by_id["markup"]["error"]["field"] == "description"
    assert by_id["no-image"]["error"]["field"] == "images"
    assert by_id["missing"]["error"]["field"] == "images"
    assert by_id["gt-outside"]["box"] is not None and "outside" in by_id["gt-outside"]["gt_error"]
    assert "image_index" in by_id["gt-index"]["gt_error"]
    assert by_id["line9"]["error"]["field"] == "line"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["errors"] == 5 and report["gt_errors"] == 2 and report["scored"] == 2


# ---- resume: a killed run loses and duplicates nothing ---------------------------------------------------------------
class Killed(Exception):
    pass


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny):
    model, processor = tiny
    records = []
    for i, n in enumerate((3, 4, 3)):
        records += scene_records(f"resume:{i}", n, prefix=f"s{i}")[1]
    grounder = Grounder(model, processor, GroundOptions(layers=(0, 1)))
    clean = ground_records(grounder, records, tmp_path / "clean", echo=lambda *_: None)

    def kill_after_first(k):
        if k == 0:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        ground_records(grounder, records, out, after_group=kill_after_first, echo=lambda *_: None)
    written = (out / "boxes.jsonl").read_text().splitlines()
    assert len(written) == 3
    with (out / "boxes.jsonl").open("a") as fh:  # a kill in the middle of writing the next row
        fh.write('{"id": "s1/o1", "box": [1, 2')
    resumed = ground_records(grounder, records, out, echo=lambda *_: None)
    lines = [json.loads(x) for x in (out / "boxes.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(r.id for r in records)  # each record once
    assert [r["box"] for r in resumed] == [r["box"] for r in clean]
    assert json.loads((out / "report.json").read_text())["model_all"] == \
        json.loads((tmp_path / "clean" / "report.json").read_text())["model_all"]
    with pytest.raises(ValueError, match="other settings"):
        ground_records(Grounder(model, processor, GroundOptions(layers=(1,))), records, out, echo=lambda *_: None)


# ---- the command, from a shapes split, with the shipped model ----------------------------------------------------
def test_command_on_a_shapes_split(tmp_path, capsys):
    from pointcopy.cli import main
    from pointcopy.data.shapes.build import build_split

    build_split(tmp_path / "split", 2, seed=5, config=CONFIG, tokenizer=None, variants_="copy")
    model = "src/pointcopy/embedded/assets/shapes-tiny"
    assert main(["ground", "--model", model, "--records", str(tmp_path / "split"), "--out", str(tmp_path / "o"),
                 "--layers", "1,3", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o" / "boxes.jsonl").read_text().splitlines()]
    assert rows and all(r["error"] is None and r["iou"] is not None for r in rows)
    assert {"peak", "contrast", "crop_ratio", "sharpness"} <= set(rows[0])
    assert "mean IoU" in capsys.readouterr().out
