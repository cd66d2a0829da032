"""Clear errors for bad inputs and checkpoints; conversion from a base Qwen2.5-VL; save/reload."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import DynamicCache, Qwen2_5_VLForConditionalGeneration

from pointcopy import PointCopyConfig, PointCopyForConditionalGeneration
from pointcopy.presets import build_tiny_processor, plain_qwen_config, save_tiny, tiny_config

from model_helpers import chat, scene


def _batch(processor, sizes=((112, 84), (56, 56))):
    return processor([chat(processor, f"q{i}") for i in range(len(sizes))],
                     [scene(w, h, i) for i, (w, h) in enumerate(sizes)])


def test_image_token_count_mismatch_names_sample(model, processor):
    batch = _batch(processor)
    ids = batch["input_ids"].clone()
    first_image_token = (ids[1] == processor.image_token_id).nonzero()[0, 0]
    ids[1, first_image_token] = 17  # sample 1 loses one image token
    with pytest.raises(ValueError, match="sample 1: 3 image tokens"):
        model(input_ids=ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
              image_grid_thw=batch["image_grid_thw"])


def test_grid_that_does_not_match_pixel_values(model, processor):
    batch = _batch(processor)
    with pytest.raises(ValueError, match="pixel_values has"):
        model(**{**batch, "pixel_values": batch["pixel_values"][:-4]})


def test_pointer_beyond_sample_image_tokens(model, processor):
    batch = _batch(processor)
    start = model.config.copy_token_start
    ids = torch.cat([batch["input_ids"], torch.tensor([[start + 5], [start + 4]])], dim=1)  # sample 1 has 4 slots
    mask = torch.cat([batch["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1)
    with pytest.raises(ValueError, match=r"sample 1: input_ids\[1, \d+\] = \d+ is pointer slot 4, but the sample "
                                         r"has only 4 image tokens"):
        model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"],
              image_grid_thw=batch["image_grid_thw"])


def test_image_tokens_without_pixel_values(model, processor):
    batch = _batch(processor)
    with pytest.raises(ValueError, match="sample 0: 12 image tokens in input_ids but pixel_values is None"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_wrong_cache_type_and_embeds(model, processor):
    batch = _batch(processor)
    with pytest.raises(TypeError, match="PointCopyCache"):
        model(**batch, cache=DynamicCache(), use_cache=True)
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, 64))


def test_unknown_checkpoint_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama' is neither"):
        PointCopyForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        PointCopyForConditionalGeneration.from_pretrained(tmp_path / "..")


def test_text_only_batch_has_no_pointer_columns(model, processor):
    batch = processor(["just text", "more text here"])
    out = model(**batch)
    assert out.logits.shape[-1] == model.config.copy_token_start


def test_convert_base_qwen(tmp_path):
    """A base Qwen2.5-VL checkpoint (+ tokenizer) becomes a pointcopy model with identity/sqrt(D) heads whose
    vocabulary logits equal the base model's."""
    processor = build_tiny_processor()
    torch.manual_seed(1)
    base = Qwen2_5_VLForConditionalGeneration(plain_qwen_config(tiny_config(processor.tokenizer))).eval()
    base.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model = PointCopyForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert model.config.copy_token_start == len(processor.tokenizer)
    assert model.config.region_token_id == processor.tokenizer.convert_tokens_to_ids("<|fim_pad|>")
    d = model.config.text_config.hidden_size
    assert torch.allclose(model.pointer.q_proj.weight, torch.eye(d) / math.sqrt(d))
    assert torch.count_nonzero(model.pointer.k_proj.bias) == 0
    batch = _batch(processor)
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = base(**batch).logits
    assert (ours[..., : model.config.copy_token_start] - theirs[..., : model.config.copy_token_start]).abs().max() < 1e-5


def test_copy_fields_override_on_load(tmp_path):
    save_tiny(tmp_path)
    model = PointCopyForConditionalGeneration.from_pretrained(tmp_path, pointing_enabled=False,
                                                              copy_position="source_patch")
    assert model.config.pointing_enabled is False and model.config.copy_position == "source_patch"
    with pytest.raises(ValueError, match="copy_position"):
        tiny_config(copy_position="diagonal")


def test_official_config_variants(oracles_path, tmp_path):
    from pointcopy.model.convert import config_from_official

    d = json.loads((oracles_path / "official-v1-tiny" / "config.json").read_text())
    cfg = config_from_official(d)
    assert isinstance(cfg, PointCopyConfig) and cfg.copy_token_start == 2000 and cfg.region_token_id == 1987
    assert cfg.text_config.rope_parameters["mrope_section"] == [4, 6, 6]
    with pytest.raises(ValueError, match="copy_extraction_layer"):
        config_from_official({**d, "copy_extraction_layer": 3})
    tied = PointCopyForConditionalGeneration(config_from_official({**d, "tie_copy_heads": True, "use_gate": True}))
    assert {n.split(".")[1] for n, _ in tied.pointer.named_parameters(prefix="pointer")} == {"shared_proj", "gate"}
