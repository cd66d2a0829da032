"""`MatmulPatchEmbed`: Qwen2.5-VL's patch embedding computed as one matrix product instead of a Conv3d.

Qwen's patch embedding is a Conv3d whose kernel equals its stride (2 x 14 x 14), applied to rows that each hold
exactly one flattened patch. That is a linear map of the row: ``patches (N, C*T*P*P) @ weight.view(D, -1).T``
with the Conv3d weight (D, C, T, P, P) flattened in the same (C, T, P, P) order as the row. On CPU the Conv3d
takes ~5x the time of the product over forward and backward (3,200 patches, 64 channels: 25.1 ms vs 5.0 ms), and
the shapes-tiny perception warm-up runs in 0.885x the time with the product (`benchmarks/patch_embed.py`).

The module keeps the Conv3d as `proj`, so parameter names, shapes and checkpoints are unchanged.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed


class MatmulPatchEmbed(Qwen2_5_VisionPatchEmbed):
    """Same parameters and outputs as `Qwen2_5_VisionPatchEmbed` (up to float summation order)."""

    @classmethod
    def from_conv(cls, embed: Qwen2_5_VisionPatchEmbed) -> "MatmulPatchEmbed":
        """A `MatmulPatchEmbed` that shares `embed`'s Conv3d (`proj`) and settings."""
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.patch_size, new.temporal_patch_size = embed.patch_size, embed.temporal_patch_size
        new.in_channels, new.embed_dim = embed.in_channels, embed.embed_dim
        new.proj = embed.proj
        return new

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, C*T*P*P) flattened patches (or anything that views as such) -> (N, embed_dim)."""
        weight = self.proj.weight  # (D, C, T, P, P)
        patches = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
        return F.linear(patches, weight.view(weight.shape[0], -1), self.proj.bias)
