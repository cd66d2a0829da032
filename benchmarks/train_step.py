"""Training-step time: point-and-copy loss vs plain Qwen2.5-VL SFT on the same batches.

The plain model has the same weights (minus the pointer heads); its batches are ours with every pointer id
replaced by the region placeholder text token (ids and labels), i.e. the same sequence lengths. Each step is
forward + backward + AdamW update; the two are interleaved in one process and median step times compared.
Prints a table, then `figure train_step_ratio <x>` (pointcopy seconds / plain seconds; 1.0 = no overhead).

    .venv/bin/python benchmarks/train_step.py [--steps 15] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from PIL import Image, ImageDraw
from pointcopy.collate import GroundedCollator, GroundedSample
from pointcopy.presets import build_tiny_processor, plain_qwen_twin, tiny_model


def grounded_samples(n: int, seed: int = 0) -> list[GroundedSample]:
    """Scenes of 3-6 squares with a trace that copies every square (about 25% of the trace tokens are copies)."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        w, h = rng.choice([(168, 112), (112, 112), (168, 168)])
        image = Image.new("RGB", (w, h), (235, 235, 235))
        draw = ImageDraw.Draw(image)
        regions, parts = {}, []
        for j in range(rng.randint(3, 6)):
            x, y, s = rng.randrange(0, w - 40), rng.randrange(0, h - 40), rng.randrange(14, 40)
            draw.rectangle([x, y, x + s, y + s], fill=tuple(rng.randrange(256) for _ in range(3)))
            regions[f"<obj{j + 1}>"] = [x, y, x + s, y + s]
            parts.append(f'detect(query="square", objects=["<obj{j + 1}>"]) a square')
        trace = "\n".join(parts) + f"\nThere are {len(regions)} squares.\nAnswer: {len(regions)}"
        samples.append(GroundedSample(i, [image], "How many squares are there?", trace, [regions]))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    processor = build_tiny_processor()
    ours = tiny_model(0, processor.tokenizer, hidden_size=args.hidden, layers=args.layers, heads=8, kv_heads=4,
                      vision_hidden=128, vision_depth=2).train()
    plain = plain_qwen_twin(ours)

    collate = GroundedCollator(processor, region_key_mode="keep")
    samples = grounded_samples(args.batch_size * 4)
    batches = [collate(samples[i:i + args.batch_size]) for i in range(0, len(samples), args.batch_size)]
    start, region = ours.config.copy_token_start, ours.config.region_token_id
    plain_batches = []
    for b in batches:
        pb = dict(b)
        pb["input_ids"] = b["input_ids"].masked_fill(b["input_ids"] >= start, region)
        pb["labels"] = b["labels"].masked_fill(b["labels"] >= start, region)
        plain_batches.append(pb)
    n_ptr = sum(int((b["labels"] >= start).sum()) for b in batches)
    n_lab = sum(int((b["labels"] != -100).sum()) for b in batches)

    opts = {id(ours): torch.optim.AdamW(ours.parameters(), lr=1e-4),
            id(plain): torch.optim.AdamW(plain.parameters(), lr=1e-4)}

    def step(model, batch) -> float:
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opts[id(model)].step()
        opts[id(model)].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for i in range(2):  # warm-up
        step(ours, batches[i]), step(plain, plain_batches[i])
    times = {"pointcopy": [], "plain": []}
    for s in range(args.steps):
        i = s % len(batches)
        order = [("pointcopy", ours, batches[i]), ("plain", plain, plain_batches[i])]
        for name, model, batch in order[:: 1 if s % 2 == 0 else -1]:
            times[name].append(step(model, batch))
    o, p = statistics.median(times["pointcopy"]), statistics.median(times["plain"])
    print(f"model: hidden {args.hidden}, {args.layers} layers; batch {args.batch_size}, "
          f"~{batches[0]['input_ids'].shape[1]} tokens; {n_ptr}/{n_lab} supervised tokens are pointers; "
          f"{args.steps} interleaved steps")
    print(f"{'':>10} {'median s/step':>14}")
    print(f"{'plain':>10} {p:>14.4f}\n{'pointcopy':>10} {o:>14.4f}")
    print(f"figure train_step_ratio {o / p:.3f}")


if __name__ == "__main__":
    main()
