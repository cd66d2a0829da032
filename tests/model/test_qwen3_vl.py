"""Qwen3-VL as a second backbone (model/qwen3_vl.py, preset "tiny-qwen3"): the same equivalences as for
Qwen2.5-VL (plain backbone logits, incremental = full forward, batch = one by one, beams, several images), and
deepstack for copied tokens (`copy_deepstack`), on a tiny random model with 16-px patches."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForImageTextToText, Qwen3VLForConditionalGeneration

from pointcopy import PointCopyForConditionalGeneration
from pointcopy.model import PointCopyQwen3VLConfig, PointCopyQwen3VLForConditionalGeneration
from pointcopy.model.convert import COPY_FIELDS
from pointcopy.model.memory import PointCopyCache
from pointcopy.presets import (QWEN3_VL_PROCESSOR, build_preset, build_tiny_processor, plain_qwen_config,
                               plain_qwen_twin, tiny_config, tiny_model)

from model_helpers import assert_points_into_second_image, chat, full_forward_logits, generate_interleaved, scene

TOL = 1e-4
QWEN3 = dict(backbone="qwen3_vl", hidden_size=64, layers=3, heads=4, kv_heads=2, vision_hidden=32, vision_depth=3)


@pytest.fixture(scope="module")
def proc3():
    return build_tiny_processor(**QWEN3_VL_PROCESSOR)


def _model(proc, seed=0, **fields):
    return tiny_model(seed, proc.tokenizer, **{**QWEN3, **fields})


@pytest.fixture(scope="module")
def model3(proc3):
    return _model(proc3)


def test_preset_is_qwen3_with_16px_layout():
    model, processor = build_preset("tiny-qwen3")
    assert isinstance(model, PointCopyQwen3VLForConditionalGeneration)
    assert isinstance(model, Qwen3VLForConditionalGeneration)
    assert model.config.model_type == "pointcopy_qwen3_vl" and model.config.copy_deepstack == "source"
    assert model.vision_layout() == {"patch_size": 16, "merge_size": 2}
    assert processor.patch_size == 16
    batch = processor([chat(processor, "q")], [scene(100, 70, 0)])
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6]] and batch["pixel_values"].shape[1] == 3 * 2 * 16 * 16
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 6 == batch.slot_maps[0].num_slots


def test_vocab_logits_equal_plain_qwen3(model3, proc3):
    """Pointing never used: the vocabulary logits are plain transformers Qwen3-VL's on the same weights (deepstack
    at image tokens included), in a left-padded batch with different image sizes."""
    plain = plain_qwen_twin(model3).eval()
    assert type(plain) is Qwen3VLForConditionalGeneration
    batch = proc3([chat(proc3, "How many objects?"), chat(proc3, "What color is the cube on the left?")],
                  [scene(100, 70, 1), scene(64, 130, 2)])
    assert (batch["attention_mask"] == 0).any()
    start = model3.config.copy_token_start
    with torch.no_grad():
        ours, theirs = model3(**batch).logits, plain(**batch).logits
    real = batch["attention_mask"].bool()
    assert ours.shape[-1] == start + 8
    assert (ours[..., :start] - theirs[..., :start])[real].abs().max().item() < 1e-5


@pytest.mark.parametrize("copy_deepstack", ["none", "source"])
@pytest.mark.parametrize("copy_position", ["sequential", "source_patch"])
def test_manual_cached_steps_equal_full_forward(proc3, copy_position, copy_deepstack):
    """Text and pointers, several at a time, through the cache (batch of 2, left padded) = one full forward."""
    model = _model(proc3, seed=3, copy_position=copy_position, copy_deepstack=copy_deepstack)
    batch = proc3([chat(proc3, "Count the cubes."), chat(proc3, "Which one is red?")],
                  [scene(128, 96, 5), scene(64, 96, 6)])
    start = model.config.copy_token_start
    cont = torch.tensor([[17, start + 3, start + 4, 99, start + 11, 250, start + 0, 31],
                         [start + 5, 17, start + 2, start + 2, 99, 250, start + 1, 31]])
    ids = torch.cat([batch["input_ids"], cont], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(cont)], dim=1)
    p = batch["input_ids"].shape[1]
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"],
                     image_grid_thw=batch["image_grid_thw"], use_cache=False).logits
        cache = PointCopyCache(config=model.config.get_text_config(decoder=True))
        step = [model(input_ids=ids[:, :p], attention_mask=mask[:, :p], pixel_values=batch["pixel_values"],
                      image_grid_thw=batch["image_grid_thw"], cache=cache, use_cache=True).logits]
        for lo, hi in [(p, p + 1), (p + 1, p + 3), (p + 3, p + 8)]:
            step.append(model(input_ids=ids[:, lo:hi], attention_mask=mask[:, :hi], cache=cache,
                              use_cache=True).logits)
        # copies already in the prompt (teacher forcing / a continued conversation): prefill over everything
        cache2 = PointCopyCache(config=model.config.get_text_config(decoder=True))
        prefilled = model(input_ids=ids[:, :p + 5], attention_mask=mask[:, :p + 5],
                          pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"], cache=cache2,
                          use_cache=True).logits
        rest = model(input_ids=ids[:, p + 5:], attention_mask=mask, cache=cache2, use_cache=True).logits
    real = mask.bool()
    assert (torch.cat(step, dim=1) - full)[real].abs().max().item() < TOL
    assert (torch.cat([prefilled, rest], dim=1) - full)[real].abs().max().item() < TOL
    assert (cache.copy_memory.layer_values is not None) == (copy_deepstack == "source")


def test_copy_deepstack_changes_only_copied_tokens_and_after(proc3):
    batch = proc3([chat(proc3, "Count the cubes.")], [scene(128, 96, 5)])
    start = tiny_config(proc3.tokenizer, **QWEN3).copy_token_start
    ids = torch.cat([batch["input_ids"], torch.tensor([[40, start + 5, 40]])], dim=1)
    logits, hidden = {}, {}
    for mode in ("none", "source"):
        with torch.no_grad():
            out = _model(proc3, seed=3, copy_deepstack=mode)(input_ids=ids, pixel_values=batch["pixel_values"],
                                                             image_grid_thw=batch["image_grid_thw"],
                                                             output_hidden_states=True)
        logits[mode], hidden[mode] = out.logits, out.hidden_states
    p = batch["input_ids"].shape[1]
    assert torch.equal(logits["none"][:, :p + 1], logits["source"][:, :p + 1])  # before the copy: identical
    assert (logits["none"][:, p + 1:] - logits["source"][:, p + 1:]).abs().max() > 1e-3
    # the addition happens after layer 0 at the copied token (hidden_states[1] is recorded before it)
    assert torch.equal(hidden["none"][1], hidden["source"][1])
    assert not torch.allclose(hidden["none"][2][:, p + 1], hidden["source"][2][:, p + 1])


def test_memory_holds_each_slots_deepstack_features(proc3):
    """CopyMemory.layer_values[:, b, k] is slot k's deepstack features as the vision tower gives them, detached
    like the values."""
    model = _model(proc3, seed=4, copy_deepstack="source", copy_position="source_patch")
    batch = proc3([chat(proc3, "q")], [scene(96, 64, 8)])
    start, k = model.config.copy_token_start, 2
    ids = torch.cat([batch["input_ids"], torch.tensor([[start + k]])], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                    output_hidden_states=True)
        mem = out.copy_memory
        feats = model._encode_images(batch["pixel_values"], batch["image_grid_thw"])
    assert torch.allclose(mem.values[0, k], feats.embeds[k])
    assert mem.layer_values.shape == (2, 1, 6, 64)
    assert torch.equal(mem.layer_values[:, 0, k], torch.stack(feats.layer_inputs)[:, k])
    assert not mem.layer_values.requires_grad and not mem.values.requires_grad


def test_batch_with_left_padding_equals_one_by_one(model3, proc3):
    questions = ["How many objects are left?", "What color is the big cube on the left side?"]
    images = [scene(100, 70, 1), scene(64, 130, 2)]
    texts = [chat(proc3, q) for q in questions]
    batch = proc3(texts, images)
    assert (batch["attention_mask"] == 0).any()
    out = generate_interleaved(model3, batch, max_new_tokens=9)
    batched, batched_logits = out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits, 1)
    incremental = full_forward_logits(model3, batch, out.sequences)
    assert (batched_logits - incremental).abs().max().item() < TOL  # incremental decoding = full forward
    for i, (text, image) in enumerate(zip(texts, images)):
        single = proc3([text], [image])
        one = generate_interleaved(model3, single, max_new_tokens=9)
        alone = one.sequences[:, single["input_ids"].shape[1]:]
        assert batched[i].tolist() == alone[0].tolist(), f"sample {i}"
        assert (alone >= model3.config.copy_token_start).sum() >= 3
        width = torch.stack(one.logits, 1).shape[-1]
        assert (batched_logits[i, :, :width] - torch.stack(one.logits, 1)[0]).abs().max().item() < TOL


def test_beam_search_with_copies_matches_single(model3, proc3):
    texts = [chat(proc3, "How many objects are left?"), chat(proc3, "Count.")]
    images = [scene(128, 96, 1), scene(64, 64, 7)]
    batch = proc3(texts, images)
    out = generate_interleaved(model3, batch, max_new_tokens=8, num_beams=3, num_return_sequences=2, period=2)
    new = out.sequences[:, batch["input_ids"].shape[1]:]
    assert new.shape[0] == 4 and ((new >= model3.config.copy_token_start).sum(-1) > 0).all()
    slots = (batch["input_ids"] == proc3.image_token_id).sum(-1).repeat_interleave(2)
    ptr = (new - model3.config.copy_token_start).masked_fill(new < model3.config.copy_token_start, -1)
    assert (ptr.max(-1).values < slots).all()
    single = proc3([texts[1]], [images[1]])
    alone = generate_interleaved(model3, single, max_new_tokens=8, num_beams=3, num_return_sequences=2, period=2)
    assert new[2:].tolist() == alone.sequences[:, single["input_ids"].shape[1]:].tolist()


def test_cache_reorders_deepstack_memory(model3, proc3):
    """After a beam reorder, a copied token must get *its* row's deepstack features: the step after
    reorder_cache([1, 0]) equals the same step on a cache prefilled in the swapped order (this fails if
    CopyMemory.layer_values is not reordered with the rows: the values and keys alone would still match)."""
    texts, images = [chat(proc3, "a"), chat(proc3, "bb")], [scene(96, 64, 1), scene(64, 96, 2)]
    fwd, rev = proc3(texts, images), proc3(texts[::-1], images[::-1])
    start = model3.config.copy_token_start
    step = torch.tensor([[start + 1], [start + 1]])

    def run(batch, reorder):
        cache = PointCopyCache(config=model3.config.get_text_config(decoder=True))
        with torch.no_grad():
            model3(**batch, cache=cache, use_cache=True)
            mask = batch["attention_mask"]
            if reorder:
                cache.reorder_cache(torch.tensor([1, 0]))
                mask = mask[[1, 0]]
            mask = torch.cat([mask, torch.ones_like(step)], 1)
            return model3(input_ids=step, attention_mask=mask, cache=cache, use_cache=True).logits, cache

    reordered, cache = run(fwd, True)
    swapped, reference = run(rev, False)
    assert torch.equal(cache.copy_memory.layer_values, reference.copy_memory.layer_values)
    assert (reordered - swapped).abs().max().item() < TOL
    # and the reordering is what makes the difference: without it the step differs
    unordered, _ = run(fwd, False)
    assert (unordered[:, :, :start] - swapped[:, :, :start]).abs().max().item() > 1e-3


def test_multi_image_slot_copies_second_image_patch(model3, proc3):
    mem, mem_second, n_first, n_total = assert_points_into_second_image(model3, proc3, scene(128, 96, 1),
                                                                         scene(96, 64, 2), TOL)
    # the deepstack features a copy carries are the second image's too
    assert torch.allclose(mem.layer_values[:, 0, n_first:n_total], mem_second.layer_values[:, 0], atol=1e-5)


def test_save_load_round_trip(model3, proc3, tmp_path):
    model3.save_pretrained(tmp_path)
    proc3.save_pretrained(tmp_path)
    # any adapter's from_pretrained (and the Auto class) picks the adapter by model_type
    loaded = PointCopyForConditionalGeneration.from_pretrained(tmp_path).eval()
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    for m in (loaded, auto):
        assert type(m) is PointCopyQwen3VLForConditionalGeneration
        assert m.config.model_type == "pointcopy_qwen3_vl"
        assert {k: getattr(m.config, k) for k in COPY_FIELDS} == {k: getattr(model3.config, k) for k in COPY_FIELDS}
        assert m.config.vision_config.deepstack_visual_indexes == [0, 1]
    batch = proc3([chat(proc3, "q")], [scene(100, 70, 3)])
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model3(**batch).logits)
    other = PointCopyForConditionalGeneration.from_pretrained(tmp_path, copy_deepstack="none",
                                                              copy_position="source_patch")
    assert other.config.copy_deepstack == "none" and other.config.copy_position == "source_patch"


def test_base_qwen3_checkpoint_converts(proc3, tmp_path):
    torch.manual_seed(1)
    base = Qwen3VLForConditionalGeneration(plain_qwen_config(tiny_config(proc3.tokenizer, **QWEN3))).eval()
    base.save_pretrained(tmp_path)
    proc3.save_pretrained(tmp_path)
    model = PointCopyQwen3VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(model.config, PointCopyQwen3VLConfig) and model.config.copy_deepstack == "source"
    assert model.config.copy_token_start == len(proc3.tokenizer)
    assert model.config.region_token_id == proc3.tokenizer.convert_tokens_to_ids("<|fim_pad|>")
    d = model.config.text_config.hidden_size
    assert torch.allclose(model.pointer.q_proj.weight, torch.eye(d) / math.sqrt(d))
    assert torch.count_nonzero(model.pointer.k_proj.bias) == 0
    batch = proc3([chat(proc3, "q0"), chat(proc3, "q1 longer")], [scene(100, 70, 0), scene(64, 64, 1)])
    with torch.no_grad():
        ours, theirs = model(**batch).logits, base(**batch).logits
    start = model.config.copy_token_start
    real = batch["attention_mask"].bool()
    assert (ours[..., :start] - theirs[..., :start])[real].abs().max() < 1e-5
    model.save_pretrained(tmp_path / "converted")  # saves in our layout, model_type pointcopy_qwen3_vl
    again = PointCopyQwen3VLForConditionalGeneration.from_pretrained(tmp_path / "converted").eval()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, ours)


def test_generate_refuses_14px_processor(model3, proc3):
    from pointcopy.inference import generate

    with pytest.raises(ValueError, match="patch_size': 14"):
        generate(model3, build_tiny_processor(), ["q"], [[scene(64, 64, 0)]], max_new_tokens=2)
    out = generate(model3, proc3, ["q"], [[scene(64, 64, 0)]], max_new_tokens=2)
    assert len(out) == 1 and out[0].slot_map.num_slots == 4


def test_copy_deepstack_validation(proc3, tmp_path):
    with pytest.raises(ValueError, match="copy_deepstack must be one of"):
        tiny_config(proc3.tokenizer, **QWEN3, copy_deepstack="both")
    with pytest.raises(ValueError, match="no per-layer visual inputs"):
        tiny_config(copy_deepstack="source")  # Qwen2.5-VL has no deepstack
    from pointcopy.presets import save_tiny

    save_tiny(tmp_path)
    with pytest.raises(ValueError, match="copy_deepstack='source' needs"):
        PointCopyForConditionalGeneration.from_pretrained(tmp_path, copy_deepstack="source")


# ---- training on the Qwen3 preset (the toy grounded set of tests/training: 16 cells, two coloured squares) ----
def _toy(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from toy_grounded import write_toy

    return write_toy(tmp_path / "train.jsonl", 256, seed=0), write_toy(tmp_path / "test.jsonl", 64, seed=1)


def test_pointing_learns_on_qwen3_preset(tmp_path):
    """As tests/training's toy run: chance 1/16, 0.5 for either square, 0.75 needs the colour (300 steps reach
    1.0 held out; the 112-px images become 4 x 4 cells of 32 px under the 16-px processor)."""
    from pointcopy.collate import GroundedCollator
    from pointcopy.data.v1g import read_v1g
    from pointcopy.processing import PointCopyProcessor
    from pointcopy.training.run import TrainOptions, train

    train_file, test_file = _toy(tmp_path)
    train(TrainOptions(model="tiny-qwen3", train_data=[str(train_file)], output_dir=str(tmp_path / "out"),
                       batch_size=8, learning_rate=3e-3, save_steps=1000, logging_steps=100, progress=False,
                       resume=False, max_steps=300))
    model = PointCopyForConditionalGeneration.from_pretrained(tmp_path / "out" / "final").eval()
    processor = PointCopyProcessor.from_pretrained(tmp_path / "out" / "final")
    assert type(model) is PointCopyQwen3VLForConditionalGeneration and processor.patch_size == 16
    with torch.no_grad():
        out = model(**GroundedCollator(processor)(read_v1g(test_file).records))
    assert out.copy_accuracy.item() >= 0.75


def test_cli_train_run_and_eval_on_qwen3_preset(tmp_path, benchmarks_path):
    """The same commands as for Qwen2.5-VL: `pointcopy train`, then `pointcopy run` and `pointcopy eval` on the
    trained Qwen3-VL checkpoint."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    train_file, _ = _toy(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "pointcopy.cli", "train", "--model", "tiny-qwen3", "--train-data",
                           str(train_file), "--output-dir", str(tmp_path / "out"), "--batch-size", "4",
                           "--max-steps", "3", "--no-progress"], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stdout[-1000:], done.stderr[-3000:])
    config = json.loads((tmp_path / "out" / "final" / "config.json").read_text())
    assert config["model_type"] == "pointcopy_qwen3_vl" and config["copy_deepstack"] == "source"
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["global_step"] == 3
    final = tmp_path / "out" / "final"
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.new("RGB", (120, 90), (200, 40, 40)).save(image)
    ran = subprocess.run([sys.executable, "-m", "pointcopy.cli", "run", "--model", str(final), "--image", str(image),
                          "--question", "How many objects are there?", "--max-new-tokens", "8"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0 and "trace:" in ran.stdout, ran.stderr[-3000:]
    out = tmp_path / "eval"
    evaluated = subprocess.run([sys.executable, "-m", "pointcopy.cli", "eval", "mathvision", "--model", str(final),
                                "--data", str(benchmarks_path / "mathvision"), "--split", "testmini", "--limit", "2",
                                "--max-new-tokens", "8", "--out", str(out), "--no-progress"],
                               env=env, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["response"], str) for r in rows)
    assert json.loads((out / "summary.json").read_text())["coverage"]["predictions"] == 2
