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

from ..decoding import add_decoding_arguments, decoding_from_args
from .args import existing_file, output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint directory or hub id (default: a tiny untrained local model)")
    parser.add_argument("--image", type=existing_file, help="image file (default: a generated scene of coloured shapes)")
    parser.add_argument("--question", default="Subtract all red things. How many objects are left?")
    parser.add_argument("--seed", type=int, default=0, help="the generated scene, the tiny model's weights and "
                        "the sampling seed (with --do-sample)")
    parser.add_argument("--out", type=output_dir, help="also write answer.html and answer_overlay.png here (the "
                                                       "copied regions drawn on the image, as the demo does)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text (for scripts)")
    add_decoding_arguments(parser, max_new_tokens=48, seed=False)  # --official-prompt: an alias of --official-suffix


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

    from pointcopy.inference import generate

    decoding = decoding_from_args(args, echo=None if args.json else print)  # --json: stdout is the JSON only
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
    result = generate(model, processor, [args.question], [[image]], max_new_tokens=decoding.max_new_tokens,
                      suffix=decoding.suffix, seed=decoding.seed_for(), **decoding.generate_kwargs())[0]
    answer = result.grounded()  # boxes in the original image's pixels
    regions = [{"object": None if r.obj_id is None else f"<obj{r.obj_id}>", "query": r.query,
                "cells": len(r.cells), "box": None if r.box is None else [round(v, 1) for v in r.box]}
               for r in answer.objects]
    written = []
    if args.out:
        from pointcopy.demo.render import overlay, page

        args.out.mkdir(parents=True, exist_ok=True)
        picture = overlay(image, answer)
        picture.save(args.out / "answer_overlay.png")
        (args.out / "answer.html").write_text(page(picture, args.question, answer, title="pointcopy run",
                                                   model_note=f"model: {what}"), encoding="utf-8")
        written = [str(args.out / "answer.html"), str(args.out / "answer_overlay.png")]
    seconds = time.perf_counter() - t0
    if args.json:
        import json

        print(json.dumps({"model": args.model, "image": str(args.image) if args.image else None,
                          "image_size": list(image.size), "question": args.question, "trace": result.text,
                          "answer": answer.answer, "finished": result.finished, "regions": regions,
                          "tokens": len(result.ids), "seconds": round(seconds, 2), "written": written}))
        return 0
    print(f"model: {what} ({n_params / 1e6:.2f}M parameters, pointer ids from {model.config.copy_token_start})")
    print(f"image: {args.image or 'generated scene'} {image.size[0]}x{image.size[1]}")
    print(f"question: {args.question}")
    print("trace:", result.text)
    if regions:
        print("copied regions (box in image pixels):")
        for r in regions:
            box = "" if r["box"] is None else "[" + ", ".join(f"{v:.0f}" for v in r["box"]) + "]"
            print(f"  {r['object'] or '(no id)':8} {(r['query'] or '')[:28]:28} {r['cells']:>4} cells  {box}")
    else:
        print("copied regions: none")
    if written:
        print("wrote " + " and ".join(written))
    print(f"generated {len(result.ids)} tokens in {seconds:.1f}s")
    return 0
