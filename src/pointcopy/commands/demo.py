"""`pointcopy demo`: draw a scene, ask a question, answer it with the embedded point-and-copy model, and write
demo.html (regions outlined on the image, trace with regions highlighted, the answer) + demo_overlay.png."""

from __future__ import annotations

import argparse

from ..decoding import add_decoding_arguments, decoding_from_args
from .args import existing_file, nonnegative_int, output_dir, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=output_dir, default=".", help="directory for demo.html and demo_overlay.png (default: .)")
    parser.add_argument("--seed", type=nonnegative_int, help="scene number (default: a random one); with "
                        "--do-sample also the sampling seed")
    parser.add_argument("--image", type=existing_file, help="your own image instead of a generated scene")
    parser.add_argument("--question", help="your own question (default: the generated scene's question)")
    parser.add_argument("--model", help="model directory (default: the shipped shapes-tiny checkpoint)")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text (for scripts)")
    add_decoding_arguments(parser, max_new_tokens=640, seed=False)


def run(args: argparse.Namespace) -> int:
    from pointcopy.embedded.demo import run_demo

    decoding = decoding_from_args(args)
    result = run_demo(args.out, seed=args.seed, image_path=args.image, question=args.question,
                      model_dir=args.model, max_new_tokens=decoding.max_new_tokens, threads=args.threads,
                      decoding=decoding,
                      **({"echo": lambda *_: None} if args.json else {}))
    if args.json:
        import json

        a = result.answer
        print(json.dumps({"seed": result.seed, "question": result.question, "expected": result.expected,
                          "answer": a.answer, "trace": result.trace, "warnings": result.warnings,
                          "regions": [{"object": None if r.obj_id is None else f"<obj{r.obj_id}>",
                                       "query": r.query, "cells": len(r.cells),
                                       "box": None if r.box is None else [round(v, 1) for v in r.box]}
                                      for r in a.objects],
                          "html": str(result.html_path), "png": str(result.png_path)}))
    return 0
