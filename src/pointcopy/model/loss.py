"""Joint point-and-copy loss (backbone-agnostic).

One cross-entropy over the concatenated [vocab | pointer] logits (official, `separate_copy_loss=False`) plus the
top-k z-loss `w * mean(logsumexp(topk(logits, k))**2)` over supervised positions (k <= 0: all logits, i.e.
Chameleon's full partition function). The returned components are
diagnostics that add up: `gen_loss + copy_loss == ce_loss` (each is the CE summed over text-target resp.
pointer-target positions divided by the number of supervised positions), `loss = ce_loss + z_loss`.

With `separate_copy_loss=True`: gen CE over vocab logits at text targets (mean over those), copy CE over pointer
logits at pointer targets (mean over those), `loss = gen_loss + copy_loss + z_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class LossParts:
    loss: torch.Tensor
    ce_loss: torch.Tensor
    gen_loss: torch.Tensor
    copy_loss: torch.Tensor
    z_loss: torch.Tensor
    copy_accuracy: torch.Tensor  # argmax == target over pointer targets (nan if none)


def point_copy_loss(logits: torch.Tensor, labels: torch.Tensor, copy_token_start: int, *, z_loss_weight: float,
                    z_loss_top_k: int, label_smoothing: float = 0.0, separate_copy_loss: bool = False) -> LossParts:
    """logits (B, L, V' + K) with V' = copy_token_start; labels (B, L) ids, pointer ids = V' + k, -100 ignored.

    Position t predicts label t + 1 (causal shift happens here).
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_target = target.reshape(-1)
    valid = flat_target != IGNORE_INDEX
    is_copy = valid & (flat_target >= copy_token_start)
    is_text = valid & ~is_copy
    n_valid = valid.sum().clamp(min=1)
    smoothing = float(label_smoothing or 0.0)

    if separate_copy_loss:
        gen_ce = F.cross_entropy(flat_logits[is_text][:, :copy_token_start], flat_target[is_text],
                                 label_smoothing=smoothing, reduction="sum") / is_text.sum().clamp(min=1)
        copy_ce = F.cross_entropy(flat_logits[is_copy][:, copy_token_start:],
                                  flat_target[is_copy] - copy_token_start, label_smoothing=smoothing,
                                  reduction="sum") / is_copy.sum().clamp(min=1)
        ce = gen_ce + copy_ce
    else:
        per_pos = F.cross_entropy(flat_logits, flat_target.clamp(min=0), label_smoothing=smoothing,
                                  reduction="none")
        per_pos = per_pos * valid
        ce = per_pos.sum() / n_valid
        gen_ce = (per_pos * is_text).sum().detach() / n_valid
        copy_ce = (per_pos * is_copy).sum().detach() / n_valid

    if z_loss_weight:
        scored = flat_logits[valid]
        if 0 < z_loss_top_k < scored.shape[-1]:
            scored = scored.topk(z_loss_top_k, dim=-1).values
        # k <= 0 or k >= width: the full partition function (no top-k: on CPU the top-k costs ~10x the logsumexp)
        z = z_loss_weight * torch.logsumexp(scored, dim=-1).pow(2).mean() if scored.numel() else ce.new_zeros(())
    else:
        z = ce.new_zeros(())

    with torch.no_grad():
        if is_copy.any():
            acc = (flat_logits[is_copy].argmax(-1) == flat_target[is_copy]).float().mean()
        else:
            acc = ce.new_tensor(float("nan"))
    return LossParts(loss=ce + z, ce_loss=ce, gen_loss=gen_ce, copy_loss=copy_ce, z_loss=z, copy_accuracy=acc)
