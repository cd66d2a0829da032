"""Joint loss: components add up, separate mode, gradients reach the heads but not through copied values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pointcopy.model.loss import point_copy_loss
from pointcopy.presets import tiny_model

from model_helpers import chat, scene


def test_components_add_up_and_match_plain_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 13)
    labels = torch.tensor([[-100, 1, 10, 3, 12, -100], [-100, -100, 4, 11, 2, 0]])
    parts = point_copy_loss(logits, labels, copy_token_start=10, z_loss_weight=1e-5, z_loss_top_k=4)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(parts.ce_loss, ref)
    assert torch.allclose(parts.gen_loss + parts.copy_loss, parts.ce_loss)
    valid = labels[:, 1:].reshape(-1) != -100
    top = logits[:, :-1].reshape(-1, 13)[valid].topk(4, -1).values
    assert torch.allclose(parts.z_loss, 1e-5 * torch.logsumexp(top, -1).pow(2).mean())
    assert torch.allclose(parts.loss, parts.ce_loss + parts.z_loss)
    # k <= 0 or k >= the width: the full partition function
    every = logits[:, :-1].reshape(-1, 13)[valid]
    full = 1e-5 * torch.logsumexp(every, -1).pow(2).mean()
    for k in (0, -1, 13, 40):
        z = point_copy_loss(logits, labels, 10, z_loss_weight=1e-5, z_loss_top_k=k).z_loss
        assert torch.allclose(z, full) and not torch.allclose(z, parts.z_loss), k


def test_separate_copy_loss():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 13)
    labels = torch.tensor([[-100, 1, 10, 3, 12]])
    parts = point_copy_loss(logits, labels, 10, z_loss_weight=0.0, z_loss_top_k=4, separate_copy_loss=True)
    flat = logits[0, :-1]
    gen = F.cross_entropy(flat[[0, 2]][:, :10], torch.tensor([1, 3]))
    copy = F.cross_entropy(flat[[1, 3]][:, 10:], torch.tensor([0, 2]))
    assert torch.allclose(parts.gen_loss, gen) and torch.allclose(parts.copy_loss, copy)
    assert torch.allclose(parts.loss, gen + copy)


def test_training_step_gradients(processor):
    model = tiny_model(seed=0).train()
    batch = processor([chat(processor, "q")], [scene(84, 84, 1)])
    start = model.config.copy_token_start
    ids = torch.cat([batch["input_ids"], torch.tensor([[start + 2, 33, start + 8]])], dim=1)
    labels = ids.masked_fill(ids == processor.image_token_id, -100)
    out = model(input_ids=ids, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                labels=labels)
    out.loss.backward()
    assert model.pointer.q_proj.weight.grad.abs().sum() > 0 and model.pointer.k_proj.weight.grad.abs().sum() > 0
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert 0.0 <= out.copy_accuracy.item() <= 1.0 and out.copy_loss.item() > 0


def test_gate_and_tied_heads_forward(processor):
    model = tiny_model(seed=0, use_gate=True, tie_copy_heads=True)
    batch = processor([chat(processor, "q")], [scene(84, 84, 1)])
    out = model(**batch)
    assert torch.isfinite(out.logits[..., : model.config.copy_token_start + 9]).all()
    # zero gate weight -> g = 0.5 halves both parts
    plain = tiny_model(seed=0, tie_copy_heads=True)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "pointer.gate.weight"})
    ref = plain(**batch).logits
    assert torch.allclose(out.logits, ref * 0.5, atol=1e-5)
