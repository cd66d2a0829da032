"""The matrix-product patch embedding equals Qwen's Conv3d one: outputs, weight gradients, parameter names."""

from __future__ import annotations

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

from pointcopy.model.patch_embed import MatmulPatchEmbed


def test_same_outputs_and_gradients_as_conv3d():
    torch.manual_seed(0)
    conv = Qwen2_5_VisionPatchEmbed(patch_size=14, temporal_patch_size=2, in_channels=3, embed_dim=48)
    matmul = MatmulPatchEmbed.from_conv(conv)
    assert matmul.proj is conv.proj and [n for n, _ in matmul.named_parameters()] == ["proj.weight"]
    patches = torch.randn(37, 3 * 2 * 14 * 14)  # the processor's rows: one flattened patch each

    expected = conv(patches)
    expected.square().sum().backward()
    conv_grad = conv.proj.weight.grad.clone()
    conv.proj.weight.grad = None
    got = matmul(patches)
    got.square().sum().backward()

    assert got.shape == (37, 48)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.proj.weight.grad, conv_grad, atol=1e-4, rtol=1e-5)


def test_model_uses_it_and_keeps_checkpoint_keys(model):
    assert isinstance(model.model.visual.patch_embed, MatmulPatchEmbed)
    assert "model.visual.patch_embed.proj.weight" in model.state_dict()
