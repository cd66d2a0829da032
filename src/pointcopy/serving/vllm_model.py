"""`PointCopyVLLM`: point-and-copy inside vLLM, as a subclass of vLLM's Qwen2.5-VL model.

The mechanism is the one of `pointcopy.model.core` (sequential copy positions), mapped onto vLLM's flattened
batches (T scheduled tokens of all requests in one row, R requests, S = memory slots per request, D text width):

    embed_input_ids(ids (T,))            pointer ids -> region placeholder before the embedding lookup;
                                         image tokens' embeddings -> values[row, slot]            (prefill chunks)
                                         pointer tokens <- values[row, id - copy_token_start]      (any step)
    forward(...) -> hidden (T, D)        image tokens' final states -> keys, stored with the query projection
                                         folded in (PointerHeads.absorb_query), as our HF generate does
    compute_logits(hidden (R, D))        [ vocab logits[:, :copy_token_start] | pointer logits (R, S_fixed) ]
                                         S_fixed = copy_token_num (30,000 in the official config); columns past
                                         a request's own image tokens hold the dtype minimum, so vLLM's samplers
                                         and penalties work unchanged on the wider logits

The model cannot see which request a token belongs to (vLLM flattens the batch and calls embedding and logits
outside its forward context), so the worker's model runner (`vllm_worker.py`) sets `self.copy_batch` before
every step and clears it after. Memory rows are allocated when a request arrives and freed when it finishes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..model.heads import PointerHeads
from .compat import use_pil_qwen_image_processor

use_pil_qwen_image_processor()  # before vLLM's Qwen2-VL module imports transformers' torchvision processor

from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration  # noqa: E402
from vllm.model_executor.models.utils import WeightsMapper  # noqa: E402


@dataclass
class CopyBatch:
    """Which memory row and slot every scheduled token (and every logits row) of one step belongs to."""

    token_rows: torch.Tensor  # (T,) long: memory row of the token's request
    token_slots: torch.Tensor  # (T,) long: image-token slot k of the token, -1 for other tokens
    image_tokens: torch.Tensor  # (n_img,) long: indices t with token_slots[t] >= 0
    logits_rows: torch.Tensor  # (R,) long: memory row of each logits row (one per request, batch order)
    max_slots: int  # largest number of slots among the batch's requests (pointer columns actually computed)


class CopyMemoryPool:
    """Preallocated copy memory of up to `max_requests` live requests with up to `slots` image tokens each.

    values   (rows, S, D)  image-token input embeddings (what a pointer copies)
    weight   (rows, S, D)  keys with the query projection folded in: logit = h . weight[k] + bias[k], / sqrt(D)
    bias     (rows, S)
    num_slots (rows,)      image tokens of the request (pointer k is valid for k < num_slots)
    with rows = `max_requests` (vLLM's max_num_seqs): a request holds one row from arrival until it finishes.
    """

    def __init__(self, max_requests: int, slots: int, hidden: int, dtype, device):
        rows = max_requests
        self.slots = slots
        self.values = torch.zeros(rows, slots, hidden, dtype=dtype, device=device)
        self.weight = torch.zeros(rows, slots, hidden, dtype=dtype, device=device)
        self.bias = torch.zeros(rows, slots, dtype=dtype, device=device)
        self.num_slots = torch.zeros(rows, dtype=torch.long, device=device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.weight, self.bias, self.num_slots))


def _pointer_key_mapping() -> dict[str, str]:
    # official v1 names (`_copy_q_head`, ...) and ours (`pointer.*`, kept as is) -> the `pointer` module
    return {"_copy_q_head.": "pointer.q_proj.", "_copy_k_head.": "pointer.k_proj.",
            "_copy_head.": "pointer.shared_proj.", "gate.": "pointer.gate."}


class PointCopyVLLM(Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL + pointer heads + copy memory. Loads our checkpoints and official v1 checkpoints."""

    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={
        **_pointer_key_mapping(),
        "pointer.": "pointer.",
        **Qwen2_5_VLForConditionalGeneration.hf_to_vllm_mapper.orig_to_new_prefix,
    })

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        cfg = self.config
        if getattr(cfg, "copy_position", "sequential") != "sequential":
            raise ValueError(f"copy_position={cfg.copy_position!r}: vLLM serving supports the official "
                             f"'sequential' copy positions only")
        text = cfg.get_text_config()
        self.copy_token_start = int(cfg.copy_token_start)
        self.copy_width = int(cfg.copy_token_num)  # pointer columns of every logits row (official: 30,000)
        self.pointer = PointerHeads(text.hidden_size, cfg.copy_hidden_size or text.hidden_size,
                                    tied=cfg.tie_copy_heads, normalize=cfg.normalize_copy_states,
                                    use_gate=cfg.use_gate)
        self.copy_batch: CopyBatch | None = None
        # allocated with the weights, so vLLM's memory profiling counts it before sizing the KV cache:
        # one row per schedulable request, slots for the longest prompt the engine admits
        param = next(self.pointer.parameters())
        self.memory = CopyMemoryPool(vllm_config.scheduler_config.max_num_seqs,
                                     min(self.copy_width, vllm_config.model_config.max_model_len),
                                     text.hidden_size, param.dtype, param.device)

    # ---- the three hooks ---------------------------------------------------------------------------------------
    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        is_ptr = input_ids >= self.copy_token_start
        ids = torch.where(is_ptr, self.config.region_token_id, input_ids)
        embeds = super().embed_input_ids(ids, multimodal_embeddings, is_multimodal=is_multimodal)
        batch, mem = self.copy_batch, self.memory
        if batch is None:  # dummy / profiling run
            return embeds
        n = input_ids.shape[0]
        rows = batch.token_rows[:n]
        if batch.image_tokens.numel():
            img = batch.image_tokens
            mem.values[rows[img], batch.token_slots[img]] = embeds[img].to(mem.values.dtype)
            if self.config.use_embeddings_as_keys:
                self._store_keys(rows[img], batch.token_slots[img], embeds[img])
        if bool(is_ptr.any()):
            where = is_ptr.nonzero(as_tuple=True)[0]
            slots = input_ids[where] - self.copy_token_start
            # a pointer past the request's image tokens cannot be sampled (its logit is the minimum); one in a
            # prompt is refused by the engine before it gets here, so this clamp only guards the memory index
            slots = torch.minimum(slots, (mem.num_slots[rows[where]] - 1).clamp(min=0))
            embeds = embeds.clone()
            embeds[where] = mem.values[rows[where], slots].to(embeds.dtype)
        return embeds

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        hidden = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        batch = self.copy_batch
        if batch is not None and batch.image_tokens.numel() \
                and not self.config.use_embeddings_as_keys:
            img = batch.image_tokens
            self._store_keys(batch.token_rows[img], batch.token_slots[img], hidden[img])
        return hidden

    def _store_keys(self, rows, slots, states) -> None:
        """Keys of the image tokens, folded with the query projection exactly as our HF decoding folds them."""
        keys = self.pointer.keys(states[None])  # (1, n, Dh)
        weight, bias = self.pointer.absorb_query(keys)
        self.memory.weight[rows, slots] = weight[0].to(self.memory.weight.dtype)
        self.memory.bias[rows, slots] = bias[0].to(self.memory.bias.dtype)

    def compute_logits(self, hidden_states):
        vocab = super().compute_logits(hidden_states)
        if vocab is None:
            return None
        start, n = self.copy_token_start, hidden_states.shape[0]
        gen = vocab[:, :start]
        lowest = torch.finfo(gen.dtype).min
        logits = gen.new_full((n, start + self.copy_width), lowest)
        batch, mem = self.copy_batch, self.memory
        if not self.config.do_copy:
            logits[:, :start] = gen
            return logits
        gate = self.pointer.gate_values(hidden_states)
        if batch is None or batch.max_slots == 0 or batch.logits_rows.shape[0] != n:
            logits[:, :start] = gen if gate is None else gen * (1 - gate)
            return logits
        k = batch.max_slots
        rows = batch.logits_rows
        mask = torch.arange(k, device=rows.device)[None, :] < mem.num_slots[rows][:, None]
        absorbed = (mem.weight[rows, :k].to(hidden_states.dtype), mem.bias[rows, :k].to(hidden_states.dtype))
        ptr = self.pointer.scores(hidden_states[:, None], None, mask, absorbed=absorbed)[:, 0].to(gen.dtype)
        if gate is not None:
            gen, ptr = gen * (1 - gate), ptr * gate
        if not self.config.pointing_enabled:
            ptr = torch.full_like(ptr, lowest)
        logits[:, :start] = gen
        logits[:, start:start + k] = ptr
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)
        missing = {f"pointer.{name}" for name, _ in self.pointer.named_parameters()} - loaded
        if missing:
            raise ValueError(f"checkpoint has no pointer-head weights {sorted(missing)}: not a point-and-copy "
                             f"checkpoint (convert a base model with pointcopy first)")
        return loaded
