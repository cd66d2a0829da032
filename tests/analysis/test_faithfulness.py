"""`pointcopy analyze faithfulness`: the copy-memory hook, the swap pieces, the counterfactual answers, the pointing
bins, and the command end to end on the shipped shapes-tiny model (a split built here)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pointcopy.analysis import faithfulness as F
from pointcopy.analysis.traces import Traced
from pointcopy.layout import QWEN2_5_VL, SlotMap

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "src/pointcopy/embedded/assets/shapes-tiny"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from pointcopy.data.shapes.build import build_split
    from pointcopy.data.shapes.scene import SceneConfig

    root = tmp_path_factory.mktemp("faith")
    build_split(root / "test", 6, 2, config=SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True))
    return root / "test"


# ---- (i) the hook ---------------------------------------------------------------------------------------------------
def _image():
    im = Image.new("RGB", (112, 84), (235, 235, 235))
    d = ImageDraw.Draw(im)
    d.rectangle([5, 5, 30, 30], fill=(200, 30, 30))
    d.ellipse([60, 40, 100, 80], fill=(30, 30, 200))
    return im


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_hook_changes_exactly_the_copied_embeddings(backbone):
    """Catches: a hook run after the pointer positions gathered (nothing changes), one that edits the image
    tokens or text too, edits landing on the wrong batch row, per-layer (deepstack) values left unswapped, an edit
    that does not persist into cached decoding, and a handle whose remove() leaves the hook on."""
    from pointcopy.model.memory import PointCopyCache
    from pointcopy.presets import QWEN3_VL_PROCESSOR, build_tiny_processor, tiny_model

    proc = build_tiny_processor(**(QWEN3_VL_PROCESSOR if backbone == "qwen3_vl" else {}))
    model = tiny_model(seed=0, tokenizer=proc.tokenizer, backbone=backbone)
    start = model.config.copy_token_start
    chat = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}])
    one = proc([chat], [_image()])
    k = int((one["input_ids"] == proc.image_token_id).sum())
    s, other, s2 = 1, 2, k - 1
    trace = [40, start + s, 41, start + s, start + other, 42, start + s2]
    ids = torch.cat([one["input_ids"], torch.tensor([trace])], 1).repeat(2, 1)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=one["pixel_values"].repeat(2, 1),
                  image_grid_thw=one["image_grid_thw"].repeat(2, 1), use_cache=False)
    seen = []

    def capture(module, args, kwargs):
        embeds = kwargs["inputs_embeds"].detach().clone()
        deep = []
        for layer in kwargs.get("deepstack_visual_embeds") or []:  # (n_visual, D) at visual_pos_masks -> (B, L, D)
            full = torch.zeros_like(embeds)
            full[kwargs["visual_pos_masks"]] = layer
            deep.append(full)
        seen.append((embeds, deep))

    spy = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        plain = model(**inputs)
        handle = model.register_copy_memory_hook(F.memory_edit_hook([[], [([s], [s2])]]))
        hooked = model(**inputs)
        handle.remove()
        again = model(**inputs)
    (e0, d0), (e1, d1), (e2, d2) = seen
    assert torch.equal(e0, e2) and all(torch.equal(a, b) for a, b in zip(d0, d2)), "remove() left the hook on"
    assert torch.equal(e1[0], e0[0]), "row 0 had no edit"
    p = one["input_ids"].shape[1]
    at_s = (ids[1] == start + s).nonzero().flatten().tolist()
    assert at_s == [p + 1, p + 3]
    changed = (e1[1] != e0[1]).any(-1).nonzero().flatten().tolist()
    assert changed == at_s, "only the pointer positions that copy slot s may change"
    image_pos = (ids[1] == proc.image_token_id).nonzero().flatten()
    for t in at_s:
        assert torch.equal(e1[1, t], e0[1, p + 6])  # what a pointer at s2 copies, unhooked
        assert torch.equal(e1[1, t], e0[1, image_pos[s2]])  # = slot s2's image-token embedding
    assert torch.equal(hooked.copy_memory.keys, plain.copy_memory.keys), "pointer keys must stay the real image's"
    if backbone == "qwen3_vl":
        assert d0, "a Qwen3-VL tiny model has deepstack inputs"
        for a, b in zip(d0, d1):
            assert (b[1] != a[1]).any(-1).nonzero().flatten().tolist() == at_s
            assert all(torch.equal(b[1, t], a[1, p + 6]) for t in at_s)

    # cached decoding: the edit made at prefill holds for a pointer generated later
    seen.clear()
    cut = p + 1
    cache = PointCopyCache(config=model.config.get_text_config(decoder=True))
    handle = model.register_copy_memory_hook(F.memory_edit_hook([[([s], [s2])]]))
    with torch.no_grad():
        model(input_ids=ids[:1, :cut], attention_mask=torch.ones(1, cut, dtype=torch.long), cache=cache,
              pixel_values=one["pixel_values"], image_grid_thw=one["image_grid_thw"], use_cache=True)
        handle.remove()
        model(input_ids=torch.tensor([[start + s]]), attention_mask=torch.ones(1, cut + 1, dtype=torch.long),
              cache=cache, use_cache=True)
    assert torch.equal(seen[-1][0][0, 0], e0[0, p + 6])
    spy.remove()


# ---- (ii) partner, blank slot, cell mapping, words ------------------------------------------------------------------
def _row(objects, family="count", steps=None, **extra):
    objs = [dict(zip(("id", "size", "color", "material", "shape", "box"), o)) for o in objects]
    return {"id": "hand", "family": family, "answer": None, "steps": steps or [],
            "scene": {"width": 112, "height": 112, "objects": objs}, **extra}


HAND = _row([(1, "small", "red", "rubber", "cube", [2, 2, 20, 20]),       # cell 0
             (2, "large", "blue", "metal", "sphere", [50, 20, 82, 52]),   # cells 1, 2, 5, 6 (mostly cell 6)
             (3, "small", "red", "metal", "cube", [86, 86, 104, 104])])   # cell 15


def test_partner_blank_and_cell_mapping_on_a_hand_made_scene():
    """Catches: a partner that is not the most different object (or ignores the tie rules), a cell mapping that
    takes the partner's first cell instead of its main one or does not repeat it, a blank slot inside an object or
    not the farthest from them, and an event owned by two objects (or half in the background) counted as one's."""
    from pointcopy.eval.shapes import object_cells

    layout = SlotMap.for_images([(112, 112)], **QWEN2_5_VL)
    assert layout.num_slots == 16  # 4 x 4 cells of 28 px
    cells, _ = object_cells(HAND, layout)
    assert cells == {1: {0}, 2: {1, 2, 5, 6}, 3: {15}}
    objs = HAND["scene"]["objects"]
    assert F.choose_partner(objs, 1, cells, 1) == 2  # differs in 4 attributes (obj 3 only in material)
    assert F.choose_partner(objs, 2, cells, 4) == 1  # 4 differences beat obj 3's 3
    assert F.choose_partner(objs, 3, cells, 1) == 2  # obj 2: 3 differences, obj 1: 1
    tie = [dict(o) for o in objs] + [dict(objs[0], id=4, box=[86, 2, 104, 20])]  # a twin of obj 1 in cell 3
    cells_tie = {**cells, 4: {3}}
    assert F.choose_partner(tie, 3, cells_tie, 1) == 2
    assert F.choose_partner([dict(o, color="blue", size="large", material="metal", shape="sphere") if o["id"] == 1
                             else o for o in tie], 3, cells_tie, 1) == 1  # 1 and 2 tie: same cell count as the event
    assert F.map_cells([0], [1, 2, 5, 6], objs[1]["box"], layout) == [6]  # the main cell, covered most
    assert F.map_cells([5, 6], [1, 2, 5, 6], objs[1]["box"], layout) == [2, 6]  # the two most covered, slot order
    assert F.map_cells([1, 2, 5, 6], [0], objs[0]["box"], layout) == [0, 0, 0, 0]
    assert F.map_cells([1, 2, 5, 6], [0, 15], objs[0]["box"], layout) == [0, 15, 0, 0]
    assert F.blank_slot(layout, cells) == 12  # distance 2 from every object; 13 ties, 12 is lower
    assert F.blank_slot(layout, {0: set(range(16))}) is None
    assert F.event_object([1, 5], cells) == 2 and F.event_object([0], cells) == 1
    assert F.event_object([0, 1], cells) is None and F.event_object([4], cells) is None
    assert F.choose_events(7, 3) == [0, 3, 6] and F.choose_events(2, 3) == [0, 1] and F.choose_events(5, 1) == [0]


def test_attribute_words_and_their_classes():
    """Catches: words taken before the detect call closes (markup or ids as words), marks after ':' read as
    attributes, more than four words, and a shared attribute counted as following the swap."""
    assert F.attribute_words('</region>"]) small purple shiny cylinder: small small equal yes 1\nnext') == \
        ["small", "purple", "shiny", "cylinder"]
    assert F.attribute_words('<|copy_7|></region>"]) large cyan: x') == ["large", "cyan"]
    assert F.attribute_words("\nThere are 3 objects.") == []
    assert F.attribute_words('"]) a b c d e f') == ["a", "b", "c", "d"]
    assert F.object_words(HAND["scene"]["objects"][1]) == ["large", "blue", "shiny", "sphere"]
    orig, partner = ["small", "red", "matte", "cube"], ["large", "red", "shiny", "sphere"]
    assert F.classify_words(["large", "red", "matte", "cylinder"], orig, partner) == \
        ["partner", "shared", "original", "neither"]
    assert F.classify_words(["small", "red"], orig, None) == ["original", "original", "neither", "neither"]


# ---- (iii) counterfactual answers -----------------------------------------------------------------------------------
def _q(family, steps, **extra):
    return {**HAND, "family": family, "steps": steps, **extra}


def _step(**attrs):
    return {"query": "q", "attrs": attrs, "objects": []}


def test_counterfactual_answers_by_hand(split):
    """Catches: a subtraction that removes the second hop's matches twice (n - |A| - |B| instead of
    n - |A ∪ B|), a comparison relation read backwards, an attribute question answered although its description
    no longer names one object, and an edit that does not reach the executed scene."""
    from pointcopy.data.shapes.build import read_items

    blue = {"size": "large", "color": "blue", "material": "metal", "shape": "sphere"}
    assert F.counterfactual_answer(_q("count", [_step(color="red")])) == "2"
    assert F.counterfactual_answer(_q("count", [_step(color="red")]), 1, blue) == "1"
    sub = _q("subtraction", [_step(color="red"), _step(material="metal")])
    assert F.counterfactual_answer(sub) == "0"  # 3 - |{1, 3} ∪ {2, 3}|
    small_metal = {"size": "small", "color": "green", "material": "metal", "shape": "cube"}
    assert F.counterfactual_answer(sub, 1, small_metal) == "0"
    sub1 = _q("subtraction", [_step(color="red")])
    assert F.counterfactual_answer(sub1, 3, blue) == "2"
    cmp_ = _q("compare", [_step(color="red"), _step(shape="sphere")], relation="more")
    assert F.counterfactual_answer(cmp_) == "yes"  # 2 red > 1 sphere
    assert F.counterfactual_answer(cmp_, 1, blue) == "no"  # 1 red vs 2 spheres
    assert F.counterfactual_answer(dict(cmp_, relation="fewer"), 1, blue) == "yes"
    assert F.counterfactual_answer(dict(cmp_, relation="same"), 3, blue) == "no"  # 1 red vs 2 spheres
    att = _q("attribute", [_step(material="rubber")], asked="color")
    assert F.counterfactual_answer(att) == "red"
    assert F.counterfactual_answer(att, 2, dict(blue, material="rubber", color="gray")) is None  # two rubber things
    assert F.counterfactual_answer(att, 1, blue) is None  # no rubber thing left
    assert F.counterfactual_answer(att, 1, dict(blue, material="rubber")) == "blue"
    for row in read_items(split):  # without an edit, every built item's own answer
        assert F.counterfactual_answer(row) == row["answer"], row["id"]


# ---- (iv) pointing by position --------------------------------------------------------------------------------------
def test_pointing_events_and_their_bins():
    """Catches: precision over distinct instead of all slots, IoU against the raw box instead of the cell-union
    box, positions not normalised by the trace length, events pooled over items instead of averaged per item, seeds
    not averaged, and a slope of the wrong sign."""
    layout = SlotMap.for_images([(112, 112)], **QWEN2_5_VL)
    start = 1000
    trace = [5] * 40
    trace[4] = start + 0                                    # obj 1 exactly: precision 1, IoU 1
    trace[10:12] = [start + 1, start + 2]                   # half of obj 2's cells: IoU 2/4 = 0.5
    trace[20:22] = [start + 15, start + 14]                 # obj 3 + background: precision 0.5, IoU 1/2
    trace[30] = start + 11                                  # background: precision 0, IoU 0
    t = Traced(item=None, ids=[1, 2] + trace, prompt_len=2, pixel_values=None, image_grid_thw=None,
               slot_map=layout, image_positions=[], copy_token_start=start)
    from pointcopy.eval.shapes import object_cells

    cells, boxes = object_cells(HAND, layout)
    ev = F.pointing_events(t, cells, {i: (0, b) for i, b in boxes.items()})
    assert [e["pos"] for e in ev] == [0.1, 0.25, 0.5, 0.75]
    assert [e["precision"] for e in ev] == [1.0, 1.0, 0.5, 0.0]
    assert [e["index"] for e in ev] == [0, 1, 2, 3]
    assert [round(e["iou"], 6) for e in ev] == [1.0, 0.5, 0.5, 0.0]
    assert F.position_bin([0.0, 0.19, 0.2, 0.99, 1.0]).tolist() == [0, 0, 1, 4, 4]
    got = F.binned_means([0, 0, 2, 9], [1.0, 0.5, 0.25, 3.0], 4)
    assert got[:3].tolist()[0] == 0.75 and math.isnan(got[1]) and got[2] == 0.25 and got[3] == 3.0

    def run(label, name, rows):
        return SimpleNamespace(spec=SimpleNamespace(label=label), name=name, rows=rows)

    def row(events):
        return {"steps": 10, "correct": None, "events": [dict(pos=p, index=i, precision=1.0, iou=v)
                                                          for i, (p, v) in enumerate(events)]}
    a = [(0.05, 1.0), (0.15, 0.5), (0.5, 0.5), (0.9, 0.0)]   # bin 0: 0.75, bin 2: 0.5, bin 4: 0
    b = [(0.1, 0.0)]                                          # bin 0: 0
    a2 = [(0.05, 1.0), (0.15, 1.0), (0.5, 0.5), (0.9, 0.2)]   # second seed of a: bin 0: 1, bin 4: 0.2
    res = F.aggregate([run("x", "x-1", {"A": row(a), "B": row(b)}), run("x", "x-2", {"A": row(a2), "B": row(b)})],
                      ["A", "B"])
    iou = res["conditions"]["x"]["pointing"]["iou"]
    assert iou["by_position"]["mean"][0] == pytest.approx((0.875 + 0.0) / 2)  # item A: seeds (0.75, 1) averaged
    assert iou["by_position"]["mean"][4] == pytest.approx(0.1) and iou["by_position"]["mean"][1] is None
    assert iou["by_index"]["mean"][0] == pytest.approx(0.5) and iou["by_index"]["mean"][3] == pytest.approx(0.1)
    assert iou["events_by_position"] == [6, 0, 2, 0, 2]
    slope_a = np.polyfit([0.05, 0.15, 0.5, 0.9], [1.0, 0.5, 0.5, 0.0], 1)[0]
    slope_a2 = np.polyfit([0.05, 0.15, 0.5, 0.9], [1.0, 1.0, 0.5, 0.2], 1)[0]
    assert iou["slope"]["mean"] == pytest.approx((slope_a + slope_a2) / 2, rel=1e-5)  # B has < 3 events
    assert iou["slope"]["mean"] < 0 and iou["items_with_slope"] == 1


# ---- (v) end to end -------------------------------------------------------------------------------------------------
def test_command_end_to_end_and_resume(split, tmp_path, monkeypatch, capsys):
    """Catches: a missing output, swaps that do not reach the model (the shipped model reads its copies: its
    colour words follow the swap), a control that does not reproduce the baseline (the re-prefill is not the
    baseline's), and a rerun that generates or intervenes again instead of resuming."""
    from pointcopy.cli import main

    out = tmp_path / "out"
    argv = ["analyze", "faithfulness", "--items", str(split), "--model", f"tiny={SHIPPED}", "--out", str(out),
            "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    for name in ("faithfulness.json", "faithfulness.png", "faithfulness.md"):
        assert (out / name).stat().st_size > 0
    first = json.loads((out / "faithfulness.json").read_text())
    cond = first["conditions"]["tiny"]
    assert cond["n_items"] == 6 and cond["n_items_swapped"] == 6
    assert cond["control"]["words_as_baseline"]["pooled"]["mean"] == 1.0
    assert cond["swap"]["attributes"]["color"]["partner"]["pooled"]["mean"] > 0.5
    assert "## Pointing along the trace" in capsys.readouterr().out
    rows = (out / "models/tiny-1/items.jsonl").read_text()

    def boom(*a, **k):
        raise AssertionError("a rerun must not generate again")

    monkeypatch.setattr("pointcopy.inference.generate", boom)
    monkeypatch.setattr(F, "_continue", boom)
    assert main(argv) == 0
    assert (out / "models/tiny-1/items.jsonl").read_text() == rows
    assert json.loads((out / "faithfulness.json").read_text())["conditions"] == first["conditions"]


def test_a_model_that_never_copies_is_refused_with_every_item_recorded(split, tmp_path):
    """Catches: a non-copying model analysed as if it copied (empty rates), or failing without saying why."""
    from pointcopy.analysis.run import ModelSpec, RunOptions

    opts = RunOptions(items=str(split), out=str(tmp_path), models=[ModelSpec("off", str(SHIPPED))], pointing=False,
                      max_new_tokens=24, threads=1, progress=False)
    with pytest.raises(ValueError, match="no model copies"):
        F.run_faithfulness(opts, echo=lambda *a: None)
    skipped = [json.loads(x) for x in (tmp_path / "models/off-1/skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 6 and all("copies nothing" in s["reason"] for s in skipped)
