"""Attention summaries reduced as they are computed: where a decoder layer's query rows put their attention mass.

An analysis never needs a full attention matrix, only how much each query row gives to a few *key groups* (all
image tokens, the image tokens inside a box, the copied tokens, one copy event's tokens, ...). `AttentionProbe`
computes exactly that, inside the forward pass, for the layers it is asked about:

    groups (B, S, G) float, S = every position a forward may attend to (prompt + trace), weight of key s in group g
    layer l analysed:  p = softmax(q kᵀ·scale + mask)      per chunk of C query rows: (B, H, C, S_k), never more
                       masses[l] += [ mean_heads(p) @ groups[:, :S_k] ]    (B, C, G)
    other layers:      the model's usual SDPA kernel, with the mask SDPA would get anyway

so what is kept grows with queries x groups x analysed layers, and the transient with C x keys x heads of one layer
-- never with queries x keys x heads x layers as `output_attentions=True` does.

It works through transformers' attention registry: inside `with AttentionProbe(model, ...)` the text decoder's
`config._attn_implementation` is "pointcopy_probe" (the vision tower keeps its own kernel), whose masks are SDPA's.
Every forward call inside the block appends its query rows, so a teacher-forced forward over a whole sequence and
a step-by-step generation produce the same rows (tests/analysis/test_probe.py checks they agree).

Key positions are absolute: with a cache, a call's keys are the cached positions 0.. followed by its new tokens,
and `groups[:, :n_keys]` weighs them. A model with sliding-window layers is fine (the mask carries the window).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping, Sequence

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["PROBE_IMPLEMENTATION", "AttentionProbe", "text_config", "num_text_layers", "default_layers"]

PROBE_IMPLEMENTATION = "pointcopy_probe"
_ACTIVE: contextvars.ContextVar["AttentionProbe | None"] = contextvars.ContextVar("pointcopy_probe", default=None)


def _probe_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    probe = _ACTIVE.get()
    layer = getattr(module, "layer_idx", None)
    if probe is None or layer not in probe.layers:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return probe._attend(layer, module, query, key, value, attention_mask, scaling)


ALL_ATTENTION_FUNCTIONS.register(PROBE_IMPLEMENTATION, _probe_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(PROBE_IMPLEMENTATION, sdpa_mask)


def text_config(model):
    """The decoder's config (the one whose `_attn_implementation` its attention layers read)."""
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def num_text_layers(model) -> int:
    return int(text_config(model).num_hidden_layers)


def default_layers(n_layers: int) -> list[int]:
    """An early, a middle and the last layer: the paper's 2 / 14 / 27 of 28 (scaled; fewer for tiny models)."""
    picks = [round(2 * (n_layers - 1) / 27), round(14 * (n_layers - 1) / 27), n_layers - 1]
    return sorted(set(picks))


class AttentionProbe:
    """Collects, for each analysed layer, every query row's attention mass on each key group (head-averaged).

    Args:
        model: a transformers model whose text decoder uses the attention registry (Qwen2.5-VL, Qwen3-VL, our
            point-and-copy models, ...).
        layers: decoder layer indices to analyse (negative counts from the end).
        groups: (B, S, G) key weights (usually 0/1) for every key position any call inside the block can see.
        heads: optional {layer: [head indices]} averaged instead of all heads (e.g. "localization heads").
        query_chunk: query rows per softmax block of an analysed layer (bounds the transient memory).

    After the block, `masses()` -> {layer: (B, Q, G) float32}: the rows of every call, in call order.
    """

    def __init__(self, model, layers: Iterable[int], groups: torch.Tensor, *,
                 heads: Mapping[int, Sequence[int]] | None = None, query_chunk: int = 128):
        n = num_text_layers(model)
        resolved = []
        for layer in layers:
            idx = layer + n if layer < 0 else layer
            if not 0 <= idx < n:
                raise ValueError(f"layer {layer} does not exist: the text decoder has {n} layers (0..{n - 1})")
            resolved.append(idx)
        if not resolved:
            raise ValueError("no layer to analyse")
        if groups.dim() != 3:
            raise ValueError(f"groups must be (batch, positions, groups), got shape {tuple(groups.shape)}")
        if query_chunk < 1:
            raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
        self.model = model
        self.layers = tuple(sorted(set(resolved)))
        self.groups = groups.float()
        self.heads = {(h + n if h < 0 else h): list(v) for h, v in (heads or {}).items()}
        self.query_chunk = query_chunk
        self._rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self._config = text_config(model)
        self._saved = None
        self._token = None

    # ---- context -------------------------------------------------------------------------------------------
    def __enter__(self) -> "AttentionProbe":
        if _ACTIVE.get() is not None:
            raise RuntimeError("an AttentionProbe is already active")
        self._saved = self._config._attn_implementation
        self._config._attn_implementation = PROBE_IMPLEMENTATION
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        self._config._attn_implementation = self._saved
        _ACTIVE.reset(self._token)

    # ---- results -------------------------------------------------------------------------------------------
    def masses(self) -> dict[int, torch.Tensor]:
        """{layer: (B, Q, G)}: Q = query rows of all calls inside the block, in order."""
        return {layer: torch.cat(rows, dim=1) if rows else self.groups.new_zeros(self.groups.shape[0], 0,
                                                                                   self.groups.shape[2])
                for layer, rows in self._rows.items()}

    # ---- the analysed layers' attention ----------------------------------------------------------------------
    def _attend(self, layer, module, query, key, value, attention_mask, scaling):
        """Eager attention (same result as the usual kernel) for query (B, H, Lq, Dh), key/value (B, Hkv, Lk, Dh),
        reducing each chunk of probabilities to group masses. Returns (output (B, Lq, H, Dh), None)."""
        b, h, lq, dh = query.shape
        lk = key.shape[2]
        if lk > self.groups.shape[1]:
            raise ValueError(f"layer {layer}: {lk} key positions but the probe's groups cover "
                             f"{self.groups.shape[1]}: build groups over the whole sequence")
        rep = h // key.shape[1]
        key = key.repeat_interleave(rep, dim=1) if rep > 1 else key
        value = value.repeat_interleave(rep, dim=1) if rep > 1 else value
        scale = scaling if scaling is not None else dh ** -0.5
        weights = self.groups[:, :lk].to(query.device)  # (B, Lk, G)
        head_idx = self.heads.get(layer)
        outputs = []
        for start in range(0, lq, self.query_chunk):
            stop = min(lq, start + self.query_chunk)
            scores = torch.matmul(query[:, :, start:stop].float(), key.float().transpose(2, 3)) * scale
            scores = _apply_mask(scores, attention_mask, start, stop, lq, lk)
            probs = torch.softmax(scores, dim=-1)  # (B, H, C, Lk)
            probs = probs.nan_to_num(0.0)  # a row with every key masked (a padding query) attends to nothing
            outputs.append(torch.matmul(probs.to(value.dtype), value))
            chosen = probs[:, head_idx] if head_idx is not None else probs
            self._rows[layer].append(torch.matmul(chosen.mean(1), weights))  # (B, C, G)
            del scores, probs, chosen
        out = torch.cat(outputs, dim=2).transpose(1, 2).contiguous()
        return out, None


def _apply_mask(scores, mask, start: int, stop: int, lq: int, lk: int):
    """Add the call's mask for query rows start:stop: SDPA's boolean (B, 1, Lq, Lk), a float additive one, or None
    (plain causal, aligned to the last key: query i of Lq sees keys 0 .. lk - lq + i)."""
    if mask is None:
        rows = torch.arange(start, stop, device=scores.device)[:, None] + (lk - lq)
        allowed = torch.arange(lk, device=scores.device)[None, :] <= rows
        return scores.masked_fill(~allowed, float("-inf"))
    part = mask[..., start:stop, :lk]
    if part.dtype == torch.bool:
        return scores.masked_fill(~part, float("-inf"))
    return scores + part.float()
