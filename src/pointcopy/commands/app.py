"""`pointcopy app`: a web app (Gradio) to ask the model about your images or a drawn shapes scene, with the trace
streamed as it is generated and every copied region shown on the image. Needs the `app` extra (`.[app]`)."""

from __future__ import annotations

import argparse
import sys

from .args import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="default model: a checkpoint directory or hub id (default: the shipped "
                        "shapes-tiny); the page can switch models")
    parser.add_argument("--port", type=positive_int, default=7860, help="port to serve on (default: 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine "
                        "only; 0.0.0.0 for every interface)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=640, help="the page's default (default: 640)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: 2)")


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("pointcopy app: error: gradio is not installed; install the app extra: pip install -e '.[app]'",
              file=sys.stderr)
        return 2
    from pointcopy.app import launch, model_key

    if args.port > 65535:
        raise ValueError(f"--port must be <= 65535, got {args.port}")
    if args.model:
        model_key(args.model)  # a mistyped path or a damaged checkpoint: one line now, not a page full of errors
    launch(args.model, host=args.host, port=args.port, share=args.share, max_new_tokens=args.max_new_tokens,
           threads=args.threads)
    return 0
