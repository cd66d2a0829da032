"""Fixtures for model tests: a tiny processor, scene images, tiny random models, and a logits processor that
makes a random model interleave text and pointers deterministically (a random model otherwise never points
or points forever)."""

from __future__ import annotations

import random

import torch
from PIL import Image, ImageDraw
from transformers import LogitsProcessor


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
