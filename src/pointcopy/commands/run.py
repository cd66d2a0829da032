"""`pointcopy run`: generate a grounded trace for an image and a question.

Without `--model` it builds a tiny *untrained* model locally (no download) and a generated scene, to show the
whole path (processor -> generate with copy memory -> pointer decoding) works on this machine; its text is
noise. With `--model` (official v1 checkpoint, pointcopy checkpoint, or base Qwen2.5-VL; a directory or hub id)
it runs that model.
"""

from __future__ import annotations

import argparse
import random
import time

from .args import existing_file, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint directory or hub id (default: a tiny untrained local model)")
    parser.add_argument("--image", type=existing_file, help="image file (default: a generated scene of coloured shapes)")
    parser.add_argument("--question", default="Subtract all red things. How many objects are left?")
    parser.add_argument("--max-new-tokens", type=positive_int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official-prompt", action="store_true",
                        help="append the official 'long-chain reasoning' instruction to the question")


def _scene(seed: int):
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (168, 112), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    colours = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 210), "yellow": (240, 200, 0)}
    for name in rng.sample(sorted(colours), 3):
        x, y, s = rng.randrange(4, 130), rng.randrange(4, 76), rng.randrange(16, 32)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + s, y + s], fill=colours[name])
    return image


def run(args: argparse.Namespace) -> int:
    import torch

    from pointcopy.inference import OFFICIAL_SUFFIX, generate

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.model:
        from pointcopy import PointCopyForConditionalGeneration
        from pointcopy.processing import PointCopyProcessor

        model = PointCopyForConditionalGeneration.from_pretrained(args.model).eval()
        processor = PointCopyProcessor.from_pretrained(args.model, copy_token_start=model.config.copy_token_start)
        what = args.model
    else:
        from pointcopy.presets import build_tiny_processor, tiny_model

        processor = build_tiny_processor()
        model = tiny_model(args.seed, processor.tokenizer)
        what = "tiny untrained local model (output text is noise; see README for trained models)"
    if args.image:
        from PIL import Image

        from pointcopy.images import open_rgb

        image = open_rgb(args.image)
    else:
        image = _scene(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {what} ({n_params / 1e6:.2f}M parameters, pointer ids from {model.config.copy_token_start})")
    print(f"image: {args.image or 'generated scene'} {image.size[0]}x{image.size[1]}")
    print(f"question: {args.question}")
    result = generate(model, processor, [args.question], [[image]], max_new_tokens=args.max_new_tokens,
                      suffix=OFFICIAL_SUFFIX if args.official_prompt else "")[0]
    print("trace:", result.text)
    if result.cells:
        print("copied cells (slot -> image, row, col):",
              ", ".join(f"{c.slot}->({c.image},{c.row},{c.col})" for c in result.cells))
    else:
        print("copied cells: none")
    print(f"generated {len(result.ids)} tokens in {time.perf_counter() - t0:.1f}s")
    return 0
