"""`pointcopy demo`: draw a scene, ask a question, answer it with the embedded point-and-copy model, and write
demo.html (regions outlined on the image, trace with regions highlighted, the answer) + demo_overlay.png."""

from __future__ import annotations

import argparse

from .args import existing_file, nonnegative_int, output_dir, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=output_dir, default=".", help="directory for demo.html and demo_overlay.png (default: .)")
    parser.add_argument("--seed", type=nonnegative_int, help="scene number (default: a random one)")
    parser.add_argument("--image", type=existing_file, help="your own image instead of a generated scene")
    parser.add_argument("--question", help="your own question (default: the generated scene's question)")
    parser.add_argument("--model", help="model directory (default: the shipped shapes-tiny checkpoint)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=640)
    parser.add_argument("--threads", type=positive_int, default=2)


def run(args: argparse.Namespace) -> int:
    from pointcopy.embedded.demo import run_demo

    run_demo(args.out, seed=args.seed, image_path=args.image, question=args.question, model_dir=args.model,
             max_new_tokens=args.max_new_tokens, threads=args.threads)
    return 0
