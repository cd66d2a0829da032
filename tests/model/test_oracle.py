"""The official implementation's outputs on its own tiny checkpoint (shared/oracles/official-v1-tiny)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointcopy import PointCopyForConditionalGeneration


@pytest.fixture(scope="module")
def oracle(oracles_path):
    root = oracles_path / "official-v1-tiny"
    model = PointCopyForConditionalGeneration.from_pretrained(root).eval()
    return root, model


def _tensors(npz, *keys):
    return {k: torch.from_numpy(npz[k]) for k in keys}


def test_case_a_teacher_forcing_logits_and_loss(oracle):
    root, model = oracle
    a = np.load(root / "case_A.npz")
    inputs = _tensors(a, "input_ids", "attention_mask", "pixel_values", "image_grid_thw", "labels")
    with torch.no_grad():
        out = model(**inputs, use_cache=False)
    assert out.logits.shape == a["logits"].shape
    assert (out.logits - torch.from_numpy(a["logits"])).abs().max().item() < 1e-4
    assert abs(out.loss.item() - float(a["loss"])) < 1e-5
    assert abs(out.ce_loss.item() - float(a["gen_loss"])) < 1e-5  # official "gen_loss" is the joint CE
    assert abs(out.z_loss.item() - float(a["z_loss"])) < 1e-7
    assert abs((out.gen_loss + out.copy_loss).item() - out.ce_loss.item()) < 1e-5
    # the intermediate tensors the oracle recorded: copy memory in slot order, M-RoPE offset
    assert out.rope_deltas.tolist() == a["rope_deltas"].tolist()
    mem = out.copy_memory
    assert (mem.values - torch.from_numpy(a["copy_v_memory"])).abs().max().item() < 1e-5
    assert (mem.keys - torch.from_numpy(a["copy_k_memory"])).abs().max().item() < 1e-4


def test_case_b_greedy_generation_ids(oracle):
    root, model = oracle
    b = np.load(root / "case_B.npz")
    inputs = _tensors(b, "input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    out = model.generate(**inputs, do_sample=False, max_new_tokens=40, output_scores=True,
                         return_dict_in_generate=True)
    assert out.sequences.tolist() == b["sequences"].tolist()
    scores = torch.stack(out.scores)  # (40, 1, 2016)
    assert (scores - torch.from_numpy(b["scores"])).abs().max().item() < 1e-4


def test_official_checkpoint_resaves_in_own_format(oracle, tmp_path):
    root, model = oracle
    model.save_pretrained(tmp_path)
    import json

    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "pointcopy"
    again = PointCopyForConditionalGeneration.from_pretrained(tmp_path)
    for (name, p), (name2, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name
    a = np.load(root / "case_A.npz")
    inputs = _tensors(a, "input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
