"""The attention probe reads what the model computes, and the sequences it reads are the ones training read.

    exactness        a forward under the probe gives the same logits (its eager attention = the usual kernel)
    known attention  layers made uniform by construction give masses that can be written down exactly
    step by step     rows collected during cached generation == rows of one teacher-forced forward
    given traces     teacher-forced ids == the ids the training collator builds for the same record
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from pointcopy.analysis.attention import model_inputs, step_masses
from pointcopy.analysis.focus import focus_groups
from pointcopy.analysis.items import AnalysisItem, load_items
from pointcopy.analysis.probe import PROBE_IMPLEMENTATION, AttentionProbe, default_layers, text_config
from pointcopy.analysis.traces import given_trace_ids, load_model, traced
from pointcopy.presets import build_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import InterleavePointers, scene  # noqa: E402

SHAPES_TINY = Path(__file__).resolve().parents[2] / "src" / "pointcopy" / "embedded" / "assets" / "shapes-tiny"
QUESTIONS = ["How many red things are there?",
             "Subtract all red things. How many objects are left? Think step by step and answer."]


def two_items(trace_ids=(5, 6, 7)):
    """Two items of different prompt lengths and image sizes (so a batch of them is right-padded)."""
    items = [AnalysisItem("short", QUESTIONS[0], [(0, (10.0, 10.0, 60.0, 50.0))], [scene(112, 84, 1)]),
             AnalysisItem("long", QUESTIONS[1], [(0, (30.0, 20.0, 90.0, 80.0))], [scene(140, 112, 2)])]
    return items, list(trace_ids)


def text_layers(model):
    return model.model.language_model.layers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes_tiny():
    return load_model(SHAPES_TINY)


@pytest.fixture(scope="module")
def shapes_split(tmp_path_factory):
    from pointcopy.data.shapes.build import build_split
    from pointcopy.data.shapes.scene import SceneConfig

    split = tmp_path_factory.mktemp("shapes") / "test"
    build_split(split, 4, seed=11, config=SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True),
                progress=False)
    return split


# ---------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3"])
def test_a_forward_under_the_probe_gives_the_same_logits(preset):
    # Catches any difference between the probe's eager attention of an analysed layer and the kernel it replaces:
    # a wrong scale, a missing / misaligned mask (causal or padding), GQA heads paired with the wrong kv head, the
    # output's (B, L, H, Dh) layout, a chunk boundary dropping or repeating rows -- and a probe that silently
    # never runs (rows checked), or leaves the decoder on its implementation after the block.
    model, processor = build_preset(preset)
    items, trace = two_items()
    batch = [traced(processor, it, trace) for it in items]
    inputs = model_inputs(processor, batch)
    assert inputs["attention_mask"].sum(1).tolist()[0] < inputs["input_ids"].shape[1]  # row 0 right-padded
    n_layers = len(text_layers(model))
    width = inputs["input_ids"].shape[1]
    groups = torch.rand(2, width, 3, generator=torch.Generator().manual_seed(0))
    before = text_config(model)._attn_implementation
    with torch.no_grad():
        plain = model(**inputs, use_cache=False).logits
        with AttentionProbe(model, [0, -1], groups, query_chunk=7) as probe:
            assert text_config(model)._attn_implementation == PROBE_IMPLEMENTATION
            probed = model(**inputs, use_cache=False).logits
        with AttentionProbe(model, [0, -1], groups, query_chunk=4096) as one_chunk:
            model(**inputs, use_cache=False)
    assert text_config(model)._attn_implementation == before
    real = inputs["attention_mask"].bool()
    assert (probed - plain)[real].abs().max().item() < 1e-5
    masses = probe.masses()
    assert sorted(masses) == [0, n_layers - 1]
    for layer, m in masses.items():
        assert m.shape == (2, width, 3)
        assert torch.allclose(m, one_chunk.masses()[layer], atol=1e-6)  # chunking changes nothing


# ---------------------------------------------------------------------------------------------- known attention


def _uniform_heads(model, layers, heads=None):
    """Zero the query projection of `heads` (all if None) of `layers`: their scores are all 0, so their attention
    is uniform over the keys the mask allows."""
    cfg = text_config(model)
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for layer in layers:
            q = text_layers(model)[layer].self_attn.q_proj
            for h in range(cfg.num_attention_heads) if heads is None else heads:
                q.weight[h * dh:(h + 1) * dh] = 0
                if q.bias is not None:
                    q.bias[h * dh:(h + 1) * dh] = 0


def _known_groups(batch, width):
    """(B, width, 5) groups: image tokens, a random 0/1 set, random weights, the padding keys, every real key."""
    rng = np.random.default_rng(3)
    g = np.zeros((len(batch), width, 5))
    for b, t in enumerate(batch):
        n = len(t.ids)
        g[b, t.image_positions, 0] = 1
        g[b, :n, 1] = rng.integers(0, 2, n)
        g[b, :n, 2] = rng.random(n)
        g[b, n:, 3] = 1
        g[b, :n, 4] = 1
    return g


def _expected_uniform(g, n):
    """Masses of a uniform causal row over the first n (real) keys: query i gives mass sum(g[:i+1]) / (i + 1)."""
    csum = np.cumsum(g[:n], axis=0)
    return csum / np.arange(1, n + 1)[:, None]


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen3"])
def test_uniform_attention_gives_masses_known_in_closed_form(preset):
    # Catches: group weights read at the wrong key positions (an off-by-one, keys not absolute), the causal mask
    # not applied or shifted (query i must see keys 0..i, i + 1 of them), padding keys receiving mass, rows not in
    # query order, probabilities not normalised, a sum over heads instead of the mean.
    model, processor = build_preset(preset)
    n_layers = len(text_layers(model))
    layers = [0, n_layers - 1]
    _uniform_heads(model, layers)
    items, trace = two_items()
    batch = [traced(processor, it, trace) for it in items]
    inputs = model_inputs(processor, batch)
    width = inputs["input_ids"].shape[1]
    g = _known_groups(batch, width)
    with torch.no_grad(), AttentionProbe(model, layers, torch.from_numpy(g), query_chunk=5) as probe:
        model(**inputs, use_cache=False)
    lengths = [len(t.ids) for t in batch]
    assert lengths[0] < width == lengths[1]
    for layer, m in probe.masses().items():
        m = m.double().numpy()
        for b, n in enumerate(lengths):
            np.testing.assert_allclose(m[b, :n], _expected_uniform(g[b], n), atol=1e-5, err_msg=f"layer {layer}")
            assert np.abs(m[b, :, 3]).max() == 0.0  # padding keys get nothing, from any query
            np.testing.assert_allclose(m[b, :n, 4], 1.0, atol=1e-5)  # all of a row's mass is on real keys


def test_heads_option_averages_only_the_chosen_heads():
    # Catches a `heads` option that is ignored (all heads averaged: not uniform here), indexes another axis than
    # the head axis, or applies one layer's heads to another layer.
    model, processor = build_preset("tiny")
    n_layers = len(text_layers(model))
    layers = [0, n_layers - 1]
    _uniform_heads(model, layers, heads=[1, 3])  # only heads 1 and 3 are uniform
    items, trace = two_items()
    batch = [traced(processor, it, trace) for it in items]
    inputs = model_inputs(processor, batch)
    g = _known_groups(batch, inputs["input_ids"].shape[1])
    with torch.no_grad():
        with AttentionProbe(model, layers, torch.from_numpy(g), heads={0: [1, 3], -1: [3, 1]}) as chosen:
            model(**inputs, use_cache=False)
        with AttentionProbe(model, layers, torch.from_numpy(g)) as every:
            model(**inputs, use_cache=False)
    for layer in layers:
        for b, t in enumerate(batch):
            n = len(t.ids)
            want = _expected_uniform(g[b], n)
            np.testing.assert_allclose(chosen.masses()[layer][b, :n].double().numpy(), want, atol=1e-5)
            assert np.abs(every.masses()[layer][b, :n].double().numpy() - want).max() > 1e-3


# ---------------------------------------------------------------------------------- teacher-forced == step by step


def _compare_generation_with_teacher_forcing(model, processor, item, layers, generate_kwargs):
    """Generate greedily (plain, then under the probe with groups over the final sequence) and compare the probe's
    rows with `step_masses` on the final sequence. Returns the Traced of the generated sequence."""
    prompt = traced(processor, item, [])
    inputs = model_inputs(processor, [prompt])
    p = prompt.prompt_len
    with torch.no_grad():
        seq = model.generate(**inputs, do_sample=False, **generate_kwargs)
    full = traced(processor, item, seq[0, p:].tolist())
    # groups: the focus groups, random weights, and one group per key position (the whole attention row)
    s = len(full.ids)
    groups = torch.cat([focus_groups(full), torch.rand(s, 2, generator=torch.Generator().manual_seed(1)),
                        torch.eye(s)], dim=1)
    with torch.no_grad(), AttentionProbe(model, layers, groups[None], query_chunk=16) as probe:
        again = model.generate(**inputs, do_sample=False, **generate_kwargs)
    assert torch.equal(again, seq), "the probe changed the greedy output"
    stepped = probe.masses()
    forced = step_masses(model, processor, [full], layers, lambda t: groups)[0]
    for layer in probe.layers:
        # one prefill call (prompt rows) + one row per later step; the last token is never fed back
        assert stepped[layer].shape[1] == s - 1, "generation made more (or fewer) decoder calls than steps"
        rows = stepped[layer][0, p - 1:].numpy()
        assert forced[layer].shape == rows.shape == (full.steps, groups.shape[1])
        err = np.abs(rows - forced[layer]).max(axis=1)  # per trace step
        assert err.max() < 1e-4, f"layer {layer}: steps {np.flatnonzero(err >= 1e-4).tolist()} differ"
    return full


@pytest.mark.parametrize("preset,overrides", [("tiny", {}), ("tiny", {"copy_position": "source_patch"}),
                                              ("tiny-qwen3", {"copy_deepstack": "source"})])
def test_rows_during_generation_equal_teacher_forced_rows_random_model(preset, overrides):
    # Catches a teacher-forced forward that reads a pointer token otherwise than generation fed it (its copied
    # embedding, its M-RoPE position, Qwen3-VL's deepstack features at the copy), rows taken at the wrong
    # positions (`prompt_len - 1 + t`), keys of a cached call weighed at the wrong absolute positions, the
    # decode-step mask (None / one row) handled wrongly, or extra decoder calls inside generate.
    model, processor = build_preset(preset, **overrides)
    item = AnalysisItem("a", QUESTIONS[0], [(0, (10.0, 10.0, 60.0, 50.0))], [scene(112, 84, 1)])
    n = 16
    rule = InterleavePointers(processor.copy_token_start, traced(processor, item, []).prompt_len, period=3)
    full = _compare_generation_with_teacher_forcing(
        model, processor, item, [0, -1],
        dict(max_new_tokens=n, min_new_tokens=n, logits_processor=LogitsProcessorList([rule])))
    events = full.copy_events()
    assert len(events) >= 4 and all(start + 1 < full.steps for start, _ in events)  # steps after pointers compared


def test_rows_during_generation_equal_teacher_forced_rows_shapes_tiny(shapes_tiny, shapes_split):
    # The same on the shipped model's own trace of a held-out shapes item (it points by itself), at the layers
    # `analyze focus` reads by default.
    model, processor, info = shapes_tiny
    items, errors = load_items(shapes_split)
    assert not errors
    full = _compare_generation_with_teacher_forcing(model, processor, items[0], default_layers(info.num_layers),
                                                    dict(max_new_tokens=80))
    events = full.copy_events()
    assert len(events) >= 2 and events[1][0] + len(events[1][1]) < full.steps  # steps after pointers compared


# ------------------------------------------------------------------------------------------------- given traces


def test_given_trace_and_prompt_are_what_training_read(shapes_tiny, shapes_split):
    # Catches teacher forcing on other ids than the model was trained on: the official region rendering instead
    # of the checkpoint's recipe (RECIPE.json: keep keys, first occurrence, no box text), the end-of-turn left in
    # or cut twice, an image resized otherwise (other slots, other pixels), or a prompt built unlike the
    # collator's (system block, image pads, generation prompt).
    from pointcopy.collate import GroundedCollator
    from pointcopy.embedded.recipe import load_recipe, train_options
    from pointcopy.tokens import encode_with_pointers

    model, processor, info = shapes_tiny
    options = train_options(load_recipe(SHAPES_TINY), shapes_split / "copy.jsonl", "unused", seed=0,
                            model=SHAPES_TINY)
    # built as training/run.py builds it
    collator = GroundedCollator(processor, label_policy=options.label_policy,
                                region_key_mode=options.region_key_mode, max_side=options.max_side,
                                region_occurrences=options.region_occurrences, box_text=options.box_text,
                                max_length=options.max_length)
    end = encode_with_pointers(processor.tokenizer, "<|im_end|>\n", processor.copy_token_start)
    items, _ = load_items(shapes_split)
    assert all(it.record is not None for it in items)
    official = dict(region_key_mode="replace", region_occurrences="all", box_text=True)
    for it in items[:2]:
        encoded = collator.prepare(it.record)
        n_prompt = next(i for i, label in enumerate(encoded.labels) if label != -100)
        assert all(label != -100 for label in encoded.labels[n_prompt:])
        train_prompt, train_answer = encoded.ids[:n_prompt], encoded.ids[n_prompt:]
        given = given_trace_ids(processor, it, info.render)
        assert given + end == train_answer
        assert any(i >= processor.copy_token_start for i in given)
        t = traced(processor, it, given)
        assert t.ids[:t.prompt_len] == train_prompt
        assert t.trace_ids == given
        assert torch.equal(t.pixel_values, encoded.pixel_values)
        assert torch.equal(t.image_grid_thw, encoded.image_grid_thw)
        # the recipe's rendering matters here (the test could tell the official one apart)
        assert given_trace_ids(processor, it, official) != given
