"""The sample's vision layout (`SlotMap`): slot k <-> (image, row, col) <-> pixel box, box -> slots, tokens per
image; and that the processor, collate, generate, the grounded-answer parser and the demo renderer all use it.

Grids are non-square (3 rows x 5 cols) so a row/column swap cannot pass, and the boxes span several cells so
a box made of the first cell alone cannot pass.
"""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from pointcopy import geometry
from pointcopy.collate import IGNORE_INDEX, GroundedCollator, GroundedSample
from pointcopy.demo.render import PALETTE, _rgb, overlay, page
from pointcopy.grounded import GroundedAnswer
from pointcopy.inference import PointedCell, generate
from pointcopy.layout import QWEN2_5_VL, SlotMap, tokens_per_image
from pointcopy.presets import build_tiny_processor, tiny_model
from pointcopy.processing import PointCopyProcessor
from pointcopy.trace import parse

WIDE = (140, 84)  # (width, height) -> smart_resize keeps it -> 3 rows x 5 cols of 28 px
SQUARE = (56, 56)  # 2 x 2
RESIZED = (100, 60)  # -> 112 x 56 for the vision tower: 2 rows x 4 cols, cells of 25 x 30 original px


def layout(*sizes) -> SlotMap:
    return SlotMap.for_images(list(sizes), **QWEN2_5_VL)


def chat(processor, question: str, n_images: int = 1) -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}])


# ---------------------------------------------------------------- slot -> (image, row, col)


def test_row_major_order_on_a_non_square_grid():
    m = layout(WIDE)
    assert (m.grids[0].rows, m.grids[0].cols) == (3, 5) and m.num_slots == len(m) == 15
    assert [m.locate(k) for k in (0, 4, 5, 7, 14)] == [(0, 0, 0), (0, 0, 4), (0, 1, 0), (0, 1, 2), (0, 2, 4)]
    assert all(m.locate(k) == (0, k // 5, k % 5) for k in range(15))
    assert all(m.slot(*m.locate(k)) == k for k in range(15))
    assert m.slot(0, 2, 1) == 11
    with pytest.raises(IndexError):
        m.slot(0, 4, 1)  # row 4 does not exist (only 3 rows), although column 4 does
    # the pixel box follows the same order: slot 7 is row 1 (y 28..56), column 2 (x 56..84)
    assert m.slot_box(7) == (56.0, 28.0, 84.0, 56.0)
    assert m.box_to_slots((0, 56, 28, 84)) == [10]  # bottom-left cell = row 2, col 0


def test_multi_image_offsets():
    m = layout(SQUARE, WIDE)
    assert m.tokens_per_image == (4, 15) and m.offsets == (0, 4) and m.num_slots == 19
    assert m.image_slots(1) == range(4, 19)
    assert m.locate(3) == (0, 1, 1) and m.locate(4) == (1, 0, 0) and m.locate(11) == (1, 1, 2)
    assert m.slot(1, 1, 2) == 11 and m.slot(0, 1, 1) == 3
    assert m.box_to_slots((0, 0, 28, 28), image=0) == [0]
    assert m.box_to_slots((0, 0, 28, 28), image=1) == [4]
    assert m.slot_box(11) == (56.0, 28.0, 84.0, 56.0)  # in image 1's own pixels
    assert 18 in m and 19 not in m and -1 not in m
    for bad in (19, -1):
        with pytest.raises(IndexError):
            m.locate(bad)
    with pytest.raises(IndexError):
        m.box_to_slots((0, 0, 1, 1), image=2)


def test_tokens_per_image_from_grids():
    assert tokens_per_image(torch.tensor([[1, 4, 4], [1, 6, 10]]), merge_size=2) == [4, 15]
    assert tokens_per_image([[1, 8, 8]], merge_size=4) == [4]
    with pytest.raises(ValueError, match="t=2"):
        tokens_per_image([[2, 4, 4]], merge_size=2)
    with pytest.raises(ValueError, match="divisible"):
        tokens_per_image([[1, 5, 4]], merge_size=2)
    with pytest.raises(ValueError, match="2 grids but 1 image sizes"):
        SlotMap(layout(SQUARE, WIDE).grids, (SQUARE,))


# ---------------------------------------------------------------- boxes


def test_a_box_spanning_several_cells_gets_all_of_them_and_their_union_box():
    m = layout(SQUARE, WIDE)
    # cols 1..3 (x 30 -> floor 1, x 90 -> ceil 4), rows 0..1 (y 40 -> ceil 2), then image 1's offset 4
    slots = m.box_to_slots((30, 10, 90, 40), image=1)
    assert slots == [4 + k for k in (1, 2, 3, 6, 7, 8)]
    assert m.union_box(slots) == (28.0, 0.0, 112.0, 56.0)  # all six cells, not the first one's (28, 0, 56, 28)
    assert m.union_box([slots[0], slots[-1]]) == (28.0, 0.0, 112.0, 56.0)  # a min/max box
    assert m.union_box([]) is None
    with pytest.raises(ValueError, match="images"):
        m.union_box([0, 4])


def test_box_to_slots_is_the_official_rule():
    # the official example (test_v1g): 112 x 84 image, box [30, 0, 60, 30] -> cells 1, 2, 5, 6
    assert layout((112, 84)).box_to_slots([30, 0, 60, 30]) == [1, 2, 5, 6]
    # its float artefact is kept (geometry.box_to_cell_rect): y1 = 252 of 308 px gains a row unless exact
    thin = layout((28, 308))
    assert thin.box_to_slots((0, 0, 28, 252)) == list(range(10))
    assert thin.box_to_slots((0, 0, 28, 252), exact=True) == list(range(9))
    # identical ids to the per-image rule plus the image's offset, on random boxes of several images
    rng = random.Random(0)
    sizes = [(640, 480), WIDE, (1000, 500), RESIZED]
    m = layout(*sizes)
    for _ in range(300):
        i = rng.randrange(len(sizes))
        w, h = sizes[i]
        x0, x1 = sorted(rng.uniform(-10, w + 10) for _ in range(2))
        y0, y1 = sorted(rng.uniform(-10, h + 10) for _ in range(2))
        want = [m.offsets[i] + k for k in geometry.box_to_cells((x0, y0, x1, y1), sizes[i])]
        assert m.box_to_slots((x0, y0, x1, y1), image=i) == want


def test_slot_boxes_are_in_the_original_pixels_of_a_resized_image():
    m = layout(RESIZED)
    g = m.grids[0]
    assert (g.rows, g.cols, g.resized_size) == (2, 4, (112, 56))
    assert m.slot_box(5) == (25.0, 30.0, 50.0, 60.0)  # row 1, col 1: 28 px cells scaled by 100/112, 60/56
    assert m.slot_box(3) == (75.0, 0.0, 100.0, 30.0)
    assert m.union_box(range(8)) == (0.0, 0.0, 100.0, 60.0)
    assert all(m.box_to_slots(m.slot_box(k), exact=True) == [k] for k in range(8))
    assert m.box_to_slots((26, 31, 49, 59)) == [5]  # a box inside that original-pixel cell


# ---------------------------------------------------------------- the processor builds it


def test_processor_returns_one_slot_map_per_text():
    proc = build_tiny_processor()
    images = [Image.new("RGB", SQUARE), Image.new("RGB", WIDE), Image.new("RGB", RESIZED)]
    batch = proc([chat(proc, "two", 2), chat(proc, "one")], images).to("cpu")
    first, second = batch.slot_maps
    assert first.image_sizes == (SQUARE, WIDE) and first.tokens_per_image == (4, 15)
    assert second.image_sizes == (RESIZED,) and (second.grids[0].rows, second.grids[0].cols) == (2, 4)
    assert first == layout(SQUARE, WIDE) and second == layout(RESIZED)
    counts = (batch["input_ids"] == proc.image_token_id).sum(-1).tolist()
    assert counts == [first.num_slots, second.num_slots]
    assert "slot_maps" not in batch  # not a model input: generate(**batch) never sees it
    assert proc.slot_map(batch["image_grid_thw"][2:], [RESIZED]) == second
    assert proc([chat(proc, "none", 0)]).slot_maps == [SlotMap.empty()]


def _processor_16px(tokenizer) -> PointCopyProcessor:
    """A Qwen3-VL-like vision geometry: 16-px patches, merge 2 -> 32-px cells."""
    ip = Qwen2VLImageProcessorPil(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 256, patch_size=16,
                                  temporal_patch_size=2, merge_size=2)
    return PointCopyProcessor(tokenizer, ip)


def test_collate_takes_patch_and_merge_sizes_from_the_processor():
    proc = _processor_16px(build_tiny_processor().tokenizer)
    image = Image.new("RGB", (128, 96))  # 32-px cells: 3 rows x 4 cols (28-px geometry would give 3 x 5)
    m = proc.encode_images([image])[1]
    assert (m.grids[0].cell, m.grids[0].rows, m.grids[0].cols) == (32, 3, 4)
    box = [33, 33, 63, 63]  # exactly cell (1, 1) of the 32-px grid
    assert m.box_to_slots(box) == [5]
    assert geometry.box_to_cells(box, image.size) != [5]  # what the 28-px default would have said
    sample = GroundedSample("s", [image], "q", 'detect(query="x", objects=["<obj1>"])', [{"<obj1>": box}])
    batch = GroundedCollator(proc, max_side=None)([sample])
    labels = [i for i in batch["labels"][0].tolist() if i != IGNORE_INDEX]
    text = proc.decode(labels).removesuffix("<|im_end|>\n")
    assert [r.copy_ids for r in parse(text).regions] == [(5,)]
    assert int((batch["input_ids"][0] == proc.image_token_id).sum()) == 12


def test_collate_offsets_of_a_second_image_come_from_the_slot_map():
    proc = build_tiny_processor()
    trace = 'detect(query="a", objects=["<obj1>"]) detect(query="b", objects=["<obj2>"])'
    box = (30, 10, 90, 40)
    sample = GroundedSample("m", [Image.new("RGB", SQUARE), Image.new("RGB", WIDE)], "q", trace,
                            [{"<obj1>": [0, 0, 56, 56]}, {"<obj2>": box}])
    batch = GroundedCollator(proc, max_side=None)([sample])
    labels = [i for i in batch["labels"][0].tolist() if i != IGNORE_INDEX]
    regions = parse(proc.decode(labels).removesuffix("<|im_end|>\n")).regions
    m = layout(SQUARE, WIDE)
    assert [list(r.copy_ids) for r in regions] == [[0, 1, 2, 3], m.box_to_slots(box, image=1)]


# ---------------------------------------------------------------- generate carries it


class _ForceIds(LogitsProcessor):
    """Row b generates `plan[b][t]` at step t (pointer ids included), then end of turn."""

    def __init__(self, plan, prompt_length, end_id):
        self.plan, self.prompt_length, self.end_id = plan, prompt_length, end_id

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        out = torch.full_like(scores, torch.finfo(scores.dtype).min)
        for b, ids in enumerate(self.plan):
            out[b, ids[step] if step < len(ids) else self.end_id] = 0
        return out


def test_generate_locates_pointers_on_the_slot_map_it_used():
    proc = build_tiny_processor()
    model = tiny_model(seed=0).eval()
    images = [[Image.new("RGB", SQUARE), Image.new("RGB", WIDE)], [Image.new("RGB", RESIZED)]]
    start = model.config.copy_token_start
    dot = proc.tokenizer.convert_tokens_to_ids(".") if "." in proc.tokenizer.get_vocab() else 0
    plan = [[start + 3, dot, start + 11], [start + 5, dot]]
    flat = [im for imgs in images for im in imgs]
    prompt_len = proc([chat(proc, "q", 2), chat(proc, "q")], flat)["input_ids"].shape[1]
    end = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    gens = generate(model, proc, ["q", "q"], images, max_new_tokens=5,
                    logits_processor=LogitsProcessorList([_ForceIds(plan, prompt_len, end)]))
    assert gens[0].slot_map == layout(SQUARE, WIDE) and gens[1].slot_map == layout(RESIZED)
    assert gens[0].cells == [PointedCell(3, 0, 1, 1), PointedCell(11, 1, 1, 2)]  # image 1 starts at slot 4
    assert gens[1].cells == [PointedCell(5, 0, 1, 1)]
    assert gens[0].grounded().slot_map is gens[0].slot_map


# ---------------------------------------------------------------- the grounded answer and its drawing

SIX = "".join(f"<|copy_{k}|>" for k in (1, 2, 3, 6, 7, 8))  # cols 1..3 x rows 0..1 of the 3 x 5 grid
TEXT = f'detect(query="object", objects=["<obj1><region>[0.21, 0.12, 0.64, 0.48]{SIX}</region>"]) Answer: 1'


def test_grounded_region_box_is_the_union_of_all_its_cells():
    answer = GroundedAnswer.from_text(TEXT, layout(WIDE))
    (region,) = answer.regions
    assert region.cells == [(0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 1, 1), (0, 1, 2), (0, 1, 3)]
    assert region.image == 0 and region.box == (28.0, 0.0, 112.0, 56.0)
    assert region.cell_boxes[0] == (28.0, 0.0, 56.0, 28.0) and region.cell_boxes[-1] == (84.0, 28.0, 112.0, 56.0)
    assert answer.answer == "1" and answer.slot_map == layout(WIDE)


def test_grounded_region_on_a_resized_image_and_across_images():
    text = "<region><|copy_1|><|copy_6|><|copy_99|></region> <region><|copy_3|><|copy_4|><|copy_10|></region>"
    answer = GroundedAnswer.from_text(text, layout(RESIZED, SQUARE))  # slots 0-7 on image 0, 8-11 on image 1
    first, second = answer.regions
    assert first.cells == [(0, 0, 1), (0, 1, 2)] and first.invalid_slots == (99,)
    assert first.box == (25.0, 0.0, 75.0, 60.0)  # original pixels of the 100 x 60 image
    assert second.cells == [(0, 0, 3), (0, 1, 0), (1, 1, 0)]
    assert second.image == 0 and second.box == (0.0, 0.0, 100.0, 60.0)  # image-0 cells only, all of them
    assert second.cell_boxes[-1] == (0.0, 28.0, 28.0, 56.0)  # image 1's own pixels


def test_overlay_outlines_the_union_of_all_cells_and_page_reports_it():
    image = Image.new("RGB", WIDE, "white")
    answer = GroundedAnswer.from_text(TEXT, layout(WIDE))
    pic = overlay(image, answer, scale=2)
    colour = _rgb(PALETTE[0])
    # the outline runs along the union box (28, 0)-(112, 56) at 2x: right edge x = 223, bottom edge y = 111
    assert pic.getpixel((223, 60)) == colour
    assert pic.getpixel((150, 111)) == colour
    assert pic.getpixel((250, 60)) == (255, 255, 255)  # outside every copied cell: untouched
    html = page(pic, "q", answer)
    assert "<td>6</td><td>[28, 0, 112, 56]</td>" in html
    with pytest.raises(ValueError, match="100x60"):
        overlay(Image.new("RGB", WIDE), GroundedAnswer.from_text(TEXT, layout(RESIZED)))


def test_generate_refuses_a_processor_whose_patches_are_not_the_models():
    proc = build_tiny_processor()
    model = tiny_model(seed=0).eval()
    assert model.vision_layout() == QWEN2_5_VL == {"patch_size": proc.patch_size, "merge_size": proc.merge_size}
    with pytest.raises(ValueError, match="patch_size"):
        generate(model, _processor_16px(proc.tokenizer), ["q"], [[Image.new("RGB", SQUARE)]], max_new_tokens=1)
