"""Grounded collator: region expansion per sample, label policies, several images, official resizing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from pointcopy.collate import IGNORE_INDEX, GroundedCollator, GroundedSample
from pointcopy.data.v1g import V1GRecord
from pointcopy.presets import build_tiny_processor
from pointcopy.trace import parse


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(max_pixels=28 * 28 * 1024)


def _decode_labels(processor, labels):
    return processor.decode([i for i in labels.tolist() if i != IGNORE_INDEX])


def test_box_text_uses_each_samples_own_size(processor):
    trace = 'detect(query="dot", objects=["<obj1>"])'
    small = GroundedSample("a", [Image.new("RGB", (112, 56))], "q", trace, [{"<obj1>": [0, 0, 56, 28]}])
    big = GroundedSample("b", [Image.new("RGB", (224, 224))], "q", trace, [{"<obj1>": [0, 0, 56, 28]}])
    batch = GroundedCollator(processor)([small, big])
    texts = [_decode_labels(processor, l) for l in batch["labels"]]
    assert "[0.00, 0.00, 0.50, 0.50]<|copy_0|><|copy_1|></region>" in texts[0]  # 4x2 grid: cells 0, 1
    assert "[0.00, 0.00, 0.25, 0.12]<|copy_0|><|copy_1|></region>" in texts[1]  # 8x8 grid
    assert batch["labels"][0].tolist().count(IGNORE_INDEX) > 0


def test_label_policies(processor):
    sample = GroundedSample("a", [Image.new("RGB", (56, 56))], "Where?", "detect(query=\"x\", objects=[\"<obj1>\"])",
                            [{"<obj1>": [0, 0, 28, 28]}])
    assistant = GroundedCollator(processor)([sample])
    official = GroundedCollator(processor, label_policy="official")([sample])
    assert torch.equal(assistant["input_ids"], official["input_ids"])
    ids, lab_a, lab_o = assistant["input_ids"][0], assistant["labels"][0], official["labels"][0]
    image = ids == processor.image_token_id
    assert (lab_o[image] == IGNORE_INDEX).all() and (lab_a[image] == IGNORE_INDEX).all()
    assert (lab_o != IGNORE_INDEX).sum() > (lab_a != IGNORE_INDEX).sum()
    trained = _decode_labels(processor, lab_a)
    assert trained.startswith("detect(") and trained.endswith("<|im_end|>\n") and "Where?" not in trained
    assert "Where?" in _decode_labels(processor, lab_o)
    start = processor.copy_token_start
    assert lab_a.tolist().count(start) == 1  # the pointer is a label


def test_two_images_offset_pointers(processor):
    trace = 'detect(query="a", objects=["<obj1>"]) detect(query="b", objects=["<obj2>"])'
    sample = GroundedSample("m", [Image.new("RGB", (56, 56)), Image.new("RGB", (84, 56))], "q", trace,
                            [{"<obj1>": [30, 30, 50, 50]}, {"<obj2>": [0, 0, 20, 20]}])
    batch = GroundedCollator(processor)([sample])
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6]]
    parsed = parse(_decode_labels(processor, batch["labels"][0]).removesuffix("<|im_end|>\n"))
    assert [r.copy_ids for r in parsed.regions] == [(3,), (4,)]  # image 2 slots start after image 1's 4


def test_record_resized_like_the_official_trainer(processor, tmp_path):
    image = Image.new("RGB", (1344, 700), (0, 0, 0))
    record = V1GRecord("big", image, [{"from": "human", "value": "<image>\nq"},
                                      {"from": "gpt", "value": 'detect(query="x", objects=["<obj1>"])'}],
                       {"<obj1>": [0, 0, 100, 100]}, (1344, 700))
    batch = GroundedCollator(processor)([record])
    h, w = batch["image_grid_thw"][0, 1:].tolist()
    assert max(h, w) * 14 <= 672  # longer side capped at 672 before the processor
    text = _decode_labels(processor, batch["labels"][0])
    assert "[0.00, 0.00, 0.07, 0.14]" in text  # box rescaled with the image (50/672, 50/350)


def test_bad_region_names_sample(processor):
    sample = GroundedSample("s7", [Image.new("RGB", (56, 56))], "q", "no key here", [{"<obj1>": [0, 0, 9, 9]}])
    with pytest.raises(ValueError, match="sample 's7': field 'regions'"):
        GroundedCollator(processor)([sample])
    with pytest.raises(ValueError, match="label_policy"):
        GroundedCollator(processor, label_policy="all")


def _record(rid, image, size=(56, 56)):
    return V1GRecord(rid, image, [{"from": "human", "value": "<image>\nq"},
                                  {"from": "gpt", "value": 'detect(query="x", objects=["<obj1>"])'}],
                     {"<obj1>": [0, 0, 28, 28]}, size)


def test_prepare_names_record_and_field_for_images_that_fail_when_decoded(processor, tmp_path):
    """What passes the header check can still fail when decoded: a typed error naming the record and field
    (V1GError), not a bare PIL OSError from deep inside the processor."""
    from pointcopy.collate import EncodedSample, SampleError
    from pointcopy.data.v1g import V1GError

    Image.new("RGB", (56, 56), (200, 10, 10)).save(tmp_path / "ok.png")
    noise = Image.frombytes("RGB", (56, 56), bytes(range(256)) * 36 + bytes(192))
    noise.save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    collator = GroundedCollator(processor)
    with pytest.raises(V1GError, match=r"record 'cut': field 'image': cannot decode image"):
        collator.prepare(_record("cut", tmp_path / "cut.png"))
    with pytest.raises(V1GError, match=r"record 'gone': field 'image': cannot open image"):
        collator.prepare(_record("gone", tmp_path / "nope.png"))
    with pytest.raises(V1GError, match=r"record 'size': field 'image_size'"):
        collator.prepare(_record("size", tmp_path / "ok.png", size=(84, 56)))
    with pytest.raises(SampleError, match=r"sample 'long': field 'conversations': \d+ tokens exceed max_length=8"):
        GroundedCollator(processor, max_length=8).prepare(_record("long", tmp_path / "ok.png"))
    encoded = collator.prepare(_record("ok", tmp_path / "ok.png"))
    assert isinstance(encoded, EncodedSample)
    direct = collator([_record("ok", tmp_path / "ok.png")])
    assert all(torch.equal(direct[k], v) for k, v in collator([encoded]).items())  # prepared == collated directly
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
