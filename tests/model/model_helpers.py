"""Fixtures for model tests: a tiny processor, scene images, tiny random models, and a logits processor that
makes a random model interleave text and pointers deterministically (a random model otherwise never points
or points forever), and the generation checks every backbone shares."""

from __future__ import annotations

import random

import torch
from PIL import Image, ImageDraw
from transformers import LogitsProcessor, LogitsProcessorList


def scene(width: int, height: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.randrange(0, width - 24), rng.randrange(0, height - 24)
        draw.rectangle([x, y, x + rng.randrange(8, 24), y + rng.randrange(8, 24)],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def chat(processor, question: str, n_images: int = 1) -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}])


class InterleavePointers(LogitsProcessor):
    """Every `period`-th generated step only pointer columns may win (the model still decides *which* slot);
    other steps only text columns. Row-wise and stateless, so batched and single runs see the same rule."""

    def __init__(self, copy_token_start: int, prompt_length: int, period: int = 3, first_slot: int = 0):
        self.start, self.prompt_length, self.period, self.first_slot = copy_token_start, prompt_length, period, first_slot

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        scores = scores.clone()
        low = torch.finfo(scores.dtype).min
        if step % self.period == self.period - 1:
            scores[:, : self.start + self.first_slot] = low
        else:
            scores[:, self.start:] = low
        return scores


def generate_interleaved(model, batch, max_new_tokens=12, period=3, first_slot=0, **kw):
    """Greedy `generate` under `InterleavePointers`, with per-step scores and logits."""
    rule = InterleavePointers(model.config.copy_token_start, batch["input_ids"].shape[1], period, first_slot)
    return model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                          logits_processor=LogitsProcessorList([rule]), output_scores=True,
                          output_logits=True, return_dict_in_generate=True, **kw)


def full_forward_logits(model, batch, sequences):
    """Logits of one cache-free forward over prompt + generated ids."""
    n_new = sequences.shape[1] - batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones_like(sequences[:, -n_new:])], dim=1)
    with torch.no_grad():
        out = model(input_ids=sequences, attention_mask=mask, pixel_values=batch["pixel_values"],
                    image_grid_thw=batch["image_grid_thw"], use_cache=False)
    return out.logits[:, -n_new - 1:-1]  # position t predicts token t + 1


def assert_points_into_second_image(model, processor, first, second, tol: float):
    """A two-image sample whose pointers may only win among the second image's slots: they do, the copied
    values are exactly the second image's (as when it is alone), and cached decoding equals a full forward.
    Returns (copy memory of the pair, copy memory of the second image alone, its first slot, slot count)."""
    batch = processor([chat(processor, "Compare the two pictures.", n_images=2)], [first, second])
    n_first = int(batch["image_grid_thw"][0].prod()) // processor.merge_size ** 2
    n_total = int((batch["input_ids"] == processor.image_token_id).sum())
    out = generate_interleaved(model, batch, first_slot=n_first)
    new = out.sequences[0, batch["input_ids"].shape[1]:]
    ptr = new[new >= model.config.copy_token_start] - model.config.copy_token_start
    assert len(ptr) >= 3 and ((ptr >= n_first) & (ptr < n_total)).all()
    alone = processor([chat(processor, "x")], [second])
    with torch.no_grad():
        mem, mem_second = model(**batch).copy_memory, model(**alone).copy_memory
    assert torch.allclose(mem.values[0, n_first:n_total], mem_second.values[0], atol=1e-5)
    assert (torch.stack(out.logits, 1) - full_forward_logits(model, batch, out.sequences)).abs().max().item() < tol
    return mem, mem_second, n_first, n_total
