"""Decode throughput: pointcopy generation vs plain Qwen2.5-VL generation with the same weights.

Same prompts, same images, greedy, a fixed number of new tokens; runs of the two models are interleaved in one
process and the median tokens/s of each is compared. Prints a table, then `figure decode_ratio_batch{1,8} <x>`
(pointcopy tokens/s divided by plain tokens/s; 1.0 = no overhead).

    .venv/bin/python benchmarks/decode.py [--repeats 7] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from PIL import Image, ImageDraw
from pointcopy.presets import build_tiny_processor, plain_qwen_twin, tiny_model


def scene(w, h, seed):
    rng = random.Random(seed)
    im = Image.new("RGB", (w, h), (235, 235, 235))
    d = ImageDraw.Draw(im)
    for _ in range(5):
        x, y = rng.randrange(0, w - 30), rng.randrange(0, h - 30)
        d.rectangle([x, y, x + 24, y + 24], fill=tuple(rng.randrange(256) for _ in range(3)))
    return im


def build_pair(hidden: int, layers: int):
    processor = build_tiny_processor()
    ours = tiny_model(0, processor.tokenizer, hidden_size=hidden, layers=layers, heads=8, kv_heads=4,
                      vision_hidden=128, vision_depth=2)
    return processor, ours, plain_qwen_twin(ours)


def make_batch(processor, batch_size: int):
    sizes = [(168, 112), (112, 112), (140, 84), (112, 168)]
    texts, images = [], []
    for i in range(batch_size):
        content = [{"type": "image"}, {"type": "text", "text": "Subtract all red things. How many objects are left?"
                                       + " think" * (i % 3)}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}]))
        images.append(scene(*sizes[i % len(sizes)], i))
    return processor(texts, images)


@torch.no_grad()
def tokens_per_second(model, batch, new_tokens: int) -> float:
    t0 = time.perf_counter()
    out = model.generate(**batch, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    elapsed = time.perf_counter() - t0
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return out.shape[0] * new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    processor, ours, plain = build_pair(args.hidden, args.layers)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"model: hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.1f}M parameters; "
          f"{args.new_tokens} new tokens; {args.repeats} interleaved repeats; {args.threads} thread(s)")
    figures = {}
    print(f"{'batch':>5} {'plain tok/s':>12} {'pointcopy tok/s':>16} {'ratio':>7}")
    for batch_size in (1, 8):
        batch = make_batch(processor, batch_size)
        tokens_per_second(ours, batch, 4), tokens_per_second(plain, batch, 4)  # warm-up
        ours_runs, plain_runs = [], []
        for r in range(args.repeats):
            # alternate the order so drift on a shared machine hits both equally
            pair = [(ours, ours_runs), (plain, plain_runs)][:: 1 if r % 2 == 0 else -1]
            for model, runs in pair:
                runs.append(tokens_per_second(model, batch, args.new_tokens))
        o, p = statistics.median(ours_runs), statistics.median(plain_runs)
        figures[batch_size] = o / p
        print(f"{batch_size:>5} {p:>12.1f} {o:>16.1f} {o / p:>7.3f}")
    for batch_size, ratio in figures.items():
        print(f"figure decode_ratio_batch{batch_size} {ratio:.3f}")


if __name__ == "__main__":
    main()
