"""Pointer heads: score decoder states against copy keys.

    logit_ptr[b, t, k] = Lq(h[b, t]) · Lk(c[b, k]) / sqrt(D)

D is the *text hidden size* (official code), also when the heads are narrower. Backbone-agnostic: it only sees
tensors of width `hidden_size`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PointerHeads(nn.Module):
    """Query/key projections (Lq, Lk) and the optional official gate.

    Parameters are named so that the official `_copy_q_head` / `_copy_k_head` / `_copy_head` / `gate` weights map
    onto `q_proj` / `k_proj` / `shared_proj` / `gate` one to one (see `convert.py`).
    """

    def __init__(self, hidden_size: int, head_size: int, tied: bool = False, normalize: bool = False,
                 use_gate: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.normalize = normalize
        self.scale = 1.0 / math.sqrt(hidden_size)
        if tied:
            self.shared_proj = nn.Linear(hidden_size, head_size)
        else:
            self.q_proj = nn.Linear(hidden_size, head_size)
            self.k_proj = nn.Linear(hidden_size, head_size)
        self.gate = nn.Linear(hidden_size, 1, bias=False) if use_gate else None

    @property
    def tied(self) -> bool:
        return hasattr(self, "shared_proj")

    def _project(self, proj: nn.Linear, states: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            states = F.normalize(states, dim=-1)
        return proj(states)

    def queries(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, D) final hidden states -> (B, L, Dh)."""
        return self._project(self.shared_proj if self.tied else self.q_proj, hidden)

    def keys(self, states: torch.Tensor) -> torch.Tensor:
        """(B, K, D) states at image-token positions -> (B, K, Dh)."""
        return self._project(self.shared_proj if self.tied else self.k_proj, states)

    def scores(self, hidden: torch.Tensor, keys: torch.Tensor, slot_mask: torch.Tensor,
               absorbed: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Pointer logits (B, L, K); slots where `slot_mask` (B, K) is False get the dtype minimum.

        With `absorbed` (from `absorb_query`), the query projection is folded into the keys, which saves a D x D
        matmul per decoding step when K < D (same numbers up to float rounding).
        """
        if absorbed is not None:
            weight, bias = absorbed
            states = F.normalize(hidden, dim=-1) if self.normalize else hidden
            logits = (torch.matmul(states, weight.transpose(1, 2)) + bias[:, None, :]) * self.scale
        else:
            logits = torch.matmul(self.queries(hidden), keys.transpose(1, 2)) * self.scale
        return logits.masked_fill(~slot_mask[:, None, :], torch.finfo(logits.dtype).min)

    def absorb_query(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold Lq into the keys: q·k = h·(Wqᵀk) + bq·k  ->  ((B, K, D) Wqᵀk, (B, K) bq·k)."""
        proj = self.shared_proj if self.tied else self.q_proj
        return torch.matmul(keys, proj.weight), torch.matmul(keys, proj.bias)

    def gate_values(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """(B, L, 1) copy share g in (0, 1), or None without a gate."""
        return None if self.gate is None else torch.sigmoid(self.gate(hidden))

    @torch.no_grad()
    def init_identity(self) -> None:
        """Official initialisation: W = I / sqrt(D), b = 0 (the pointer logit starts as h_t·h_k / D^1.5)."""
        for proj in ([self.shared_proj] if self.tied else [self.q_proj, self.k_proj]):
            out_f, in_f = proj.weight.shape
            if out_f != in_f:
                raise ValueError(f"identity init needs square heads, got {out_f}x{in_f} (copy_hidden_size != hidden)")
            proj.weight.copy_(torch.eye(in_f, dtype=proj.weight.dtype) / math.sqrt(in_f))
            proj.bias.zero_()
        if self.gate is not None:
            self.gate.weight.zero_()
