"""Generation equivalences on a tiny random model: incremental = full forward, batch = one by one, beam search
with copies, several images per sample."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from pointcopy.model.memory import PointCopyCache

from model_helpers import (InterleavePointers, assert_points_into_second_image, chat, full_forward_logits,
                           generate_interleaved, scene)

TOL = 1e-4


def test_incremental_decoding_equals_full_forward(model, processor):
    batch = processor([chat(processor, "How many objects are left?")], [scene(112, 84, 1)])
    out = generate_interleaved(model, batch)
    new = out.sequences[:, batch["input_ids"].shape[1]:]
    assert (new >= model.config.copy_token_start).sum() >= 3, "the trace must contain pointers"
    incremental = torch.stack(out.logits, dim=1)  # raw model logits at every step
    full = full_forward_logits(model, batch, out.sequences)
    assert incremental.shape == full.shape
    assert (incremental - full).abs().max().item() < TOL


@pytest.mark.parametrize("copy_position", ["sequential", "source_patch"])
def test_manual_cached_steps_equal_full_forward(processor, copy_position):
    """Feed arbitrary ids (text and pointers, several at a time) through the cache step by step."""
    from pointcopy.presets import tiny_model

    model = tiny_model(seed=3, copy_position=copy_position)
    batch = processor([chat(processor, "Count the cubes.")], [scene(112, 112, 5)])
    start = model.config.copy_token_start
    cont = torch.tensor([[17, start + 3, start + 4, 99, start + 15, 250, start + 0, 31]])
    ids = torch.cat([batch["input_ids"], cont], dim=1)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"],
                     image_grid_thw=batch["image_grid_thw"], use_cache=False).logits
        cache = PointCopyCache(config=model.config.get_text_config(decoder=True))
        p = batch["input_ids"].shape[1]
        step = [model(input_ids=ids[:, :p], attention_mask=mask[:, :p], pixel_values=batch["pixel_values"],
                      image_grid_thw=batch["image_grid_thw"], cache=cache, use_cache=True).logits]
        for lo, hi in [(p, p + 1), (p + 1, p + 3), (p + 3, p + 8)]:  # 1, 2 and 5 tokens per call
            step.append(model(input_ids=ids[:, lo:hi], attention_mask=mask[:, :hi], cache=cache,
                              use_cache=True).logits)
    assert (torch.cat(step, dim=1) - full).abs().max().item() < TOL


def test_source_patch_positions_change_the_output(processor):
    from pointcopy.presets import tiny_model

    batch = processor([chat(processor, "Count the cubes.")], [scene(112, 112, 5)])
    start = tiny_model(seed=3).config.copy_token_start
    ids = torch.cat([batch["input_ids"], torch.tensor([[start + 5, 40]])], dim=1)
    logits = {}
    for mode in ("sequential", "source_patch"):
        with torch.no_grad():
            logits[mode] = tiny_model(seed=3, copy_position=mode)(
                input_ids=ids, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]).logits
    p = batch["input_ids"].shape[1]
    assert torch.equal(logits["sequential"][:, :p], logits["source_patch"][:, :p])  # prompt unaffected
    assert (logits["sequential"][:, p:] - logits["source_patch"][:, p:]).abs().max() > 1e-3


def test_batch_with_left_padding_equals_one_by_one(model, processor):
    questions = ["How many objects are left?", "What color is the big cube on the left side?", "Count."]
    images = [scene(112, 84, 1), scene(168, 112, 2), scene(56, 84, 3)]
    texts = [chat(processor, q) for q in questions]
    batch = processor(texts, images)
    assert (batch["attention_mask"] == 0).any(), "the batch must be left padded"
    out = generate_interleaved(model, batch)
    batched, batched_logits = out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits, 1)
    for i, (text, image) in enumerate(zip(texts, images)):
        single = processor([text], [image])
        one = generate_interleaved(model, single)
        alone = one.sequences[:, single["input_ids"].shape[1]:]
        assert batched[i].tolist() == alone[0].tolist(), f"sample {i}"
        assert (alone >= model.config.copy_token_start).any()
        # same numbers, not just the same argmax (pointer columns beyond this sample's slots are masked)
        width = torch.stack(one.logits, 1).shape[-1]
        assert (batched_logits[i, :, :width] - torch.stack(one.logits, 1)[0]).abs().max().item() < TOL


def test_beam_search_emits_copies_and_matches_single(model, processor):
    texts = [chat(processor, "How many objects are left?"), chat(processor, "Count.")]
    images = [scene(112, 84, 1), scene(84, 84, 7)]
    batch = processor(texts, images)
    out = generate_interleaved(model, batch, num_beams=3, num_return_sequences=2, period=2)
    new = out.sequences[:, batch["input_ids"].shape[1]:]
    assert new.shape[0] == 4
    assert ((new >= model.config.copy_token_start).sum(-1) > 0).all()
    # pointers never exceed each sample's own image tokens (sample 1 has fewer slots than sample 0)
    slots = (batch["input_ids"] == processor.image_token_id).sum(-1).repeat_interleave(2)
    ptr = (new - model.config.copy_token_start).masked_fill(new < model.config.copy_token_start, -1)
    assert (ptr.max(-1).values < slots).all()
    single = processor([texts[1]], [images[1]])
    alone = generate_interleaved(model, single, num_beams=3, num_return_sequences=2, period=2)
    assert new[2:].tolist() == alone.sequences[:, single["input_ids"].shape[1]:].tolist()


def test_cache_reorders_copy_memory_with_beams(model, processor):
    batch = processor([chat(processor, "a"), chat(processor, "bb")], [scene(56, 56, 1), scene(84, 56, 2)])
    cache = PointCopyCache(config=model.config.get_text_config(decoder=True))
    with torch.no_grad():
        model(**batch, cache=cache, use_cache=True)
    keys, values = cache.copy_memory.keys.clone(), cache.copy_memory.values.clone()
    kv = cache.layers[0].keys.clone()
    order = torch.tensor([1, 0])
    cache.reorder_cache(order)
    assert torch.equal(cache.copy_memory.keys, keys[order]) and torch.equal(cache.copy_memory.values, values[order])
    assert torch.equal(cache.layers[0].keys, kv[order])
    assert cache.copy_memory.mask.sum(-1).tolist() == [6, 4]  # 84x56 -> 3x2 cells, 56x56 -> 2x2 cells


def test_multi_image_sample_points_into_second_image(model, processor):
    assert_points_into_second_image(model, processor, scene(112, 84, 1), scene(84, 84, 2), TOL)


def test_sampling_runs_and_respects_slots(model, processor):
    batch = processor([chat(processor, "q")], [scene(56, 56, 4)])
    torch.manual_seed(0)
    rule = InterleavePointers(model.config.copy_token_start, batch["input_ids"].shape[1], 2)
    out = model.generate(**batch, do_sample=True, top_k=0, max_new_tokens=10, min_new_tokens=10,
                         logits_processor=LogitsProcessorList([rule]))
    new = out[0, batch["input_ids"].shape[1]:]
    ptr = new[new >= model.config.copy_token_start] - model.config.copy_token_start
    assert len(ptr) == 5 and (ptr < 4).all()


def test_pointing_disabled_never_points(processor):
    from pointcopy.presets import tiny_model

    model = tiny_model(seed=0, pointing_enabled=False)
    with torch.no_grad():
        model.pointer.q_proj.weight.mul_(20)  # a model that would otherwise point at every step
        model.pointer.k_proj.weight.mul_(20)
    batch = processor([chat(processor, "q")], [scene(112, 84, 1)])
    out = model.generate(**batch, do_sample=False, max_new_tokens=8)
    assert (out[0, batch["input_ids"].shape[1]:] < model.config.copy_token_start).all()
    model.config.pointing_enabled = True
    out = model.generate(**batch, do_sample=False, max_new_tokens=8)
    assert (out[0, batch["input_ids"].shape[1]:] >= model.config.copy_token_start).all()


def test_absorbed_query_path_equals_training_path(processor):
    """Decoding folds Lq into the keys; the numbers must match the plain q·k path used in training."""
    from pointcopy.presets import tiny_model

    model = tiny_model(seed=2, normalize_copy_states=True)
    with torch.no_grad():
        model.pointer.q_proj.bias.normal_()
    batch = processor([chat(processor, "q"), chat(processor, "longer q")], [scene(84, 56, 1), scene(56, 84, 2)])
    with torch.no_grad():
        fast = model(**batch).logits
    slow = model(**batch).logits.detach()
    assert (fast - slow).abs().max().item() < 1e-5
