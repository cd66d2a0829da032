"""A plain Qwen2.5-VL checkpoint as the analyses' baseline: it loads with pointing off, and the attention masses
the analysis measures through our class equal those of the stock transformers model on the same sequence."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from pointcopy.analysis.attention import step_masses
from pointcopy.analysis.focus import focus_groups
from pointcopy.analysis.items import load_items
from pointcopy.analysis.traces import load_model, traced
from pointcopy.embedded.demo import ASSET
from pointcopy.model import PointCopyForConditionalGeneration
from pointcopy.presets import plain_qwen_twin
from pointcopy.processing import PointCopyProcessor


def _base_checkpoint(path):
    """The shipped model's backbone saved as a plain Qwen2.5-VL checkpoint (no pointer heads) + its processor."""
    ours = PointCopyForConditionalGeneration.from_pretrained(ASSET).eval()
    plain = plain_qwen_twin(ours).eval()
    plain.save_pretrained(path)
    PointCopyProcessor.from_pretrained(ASSET).save_pretrained(path)
    return plain


def _simple_items(tmp_path):
    image = Image.new("RGB", (112, 84), (230, 230, 230))
    image.paste((200, 30, 30), (10, 10, 40, 40))
    image.save(tmp_path / "scene.png")
    rows = [{"id": "red", "image": "scene.png", "expression": "the red square", "box": [10, 10, 40, 40],
             "trace": "There is a red square in the top left corner. Answer: red"}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "items.jsonl"


def test_base_checkpoint_is_analysed_without_pointing_and_like_the_stock_model(tmp_path):
    # catches: a base checkpoint analysed with its fresh (identity) pointer heads switched on, and any difference
    # between the masses measured through our class and the stock transformers model it was converted from
    plain = _base_checkpoint(tmp_path / "base")
    model, processor, info = load_model(tmp_path / "base")
    assert info.model_type == "qwen2_5_vl" and not info.pointing_enabled
    items, errors = load_items(_simple_items(tmp_path))
    assert not errors
    item = items[0]
    ids = processor.tokenizer.encode(item.trace, add_special_tokens=False)
    t = traced(processor, item, ids)
    ours = step_masses(model, processor, [t], [0, 3], focus_groups)[0]
    stock = step_masses(plain, processor, [t], [0, 3], focus_groups)[0]
    for layer in (0, 3):
        assert ours[layer].shape == (len(ids), 4)
        np.testing.assert_allclose(ours[layer], stock[layer], atol=1e-5)
        # the relevant cells are a subset of the image tokens; a trace without copies gives no copy mass
        assert np.all(ours[layer][:, 1] <= ours[layer][:, 0] + 1e-6)
        assert np.all(ours[layer][:, 2] == 0)
    # the box covers the top-left cells only: fewer relevant slots than image tokens, but some
    assert 0 < len(t.relevant_slots()) < len(t.image_positions)


def test_probe_leaves_the_stock_model_outputs_unchanged(tmp_path):
    # catches: the probe's eager path (or the SDPA path of the other layers) computing a different attention
    plain = _base_checkpoint(tmp_path / "base")
    processor = PointCopyProcessor.from_pretrained(tmp_path / "base")
    items, _ = load_items(_simple_items(tmp_path))
    t = traced(processor, items[0], processor.tokenizer.encode(items[0].trace, add_special_tokens=False))
    from pointcopy.analysis.attention import model_inputs
    from pointcopy.analysis.probe import AttentionProbe

    inputs = model_inputs(processor, [t])
    with torch.no_grad():
        ref = plain(**inputs).logits
        with AttentionProbe(plain, [1, 2], torch.ones(1, len(t.ids), 1)) as probe:
            got = plain(**inputs).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # every query row of an analysed layer spends all of its attention on some key
    for m in probe.masses().values():
        torch.testing.assert_close(m[0, :, 0], torch.ones(len(t.ids)), atol=1e-5, rtol=0)
