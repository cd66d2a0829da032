"""`pointcopy serve [MODEL]`: an OpenAI-compatible server (vLLM) for a point-and-copy checkpoint, on 127.0.0.1.

It runs `vllm serve` with the settings point-and-copy needs (`serving.engine.engine_arguments`): the plugin's
worker, prefix caching off, no video, and a tokenizer view with `<|copy_k|>` tokens so responses carry the trace.
`pointcopy.serving.client.copied_regions(text, images, processor)` turns a response's pointers into cells and boxes.
Needs vLLM's environment (`scripts/setup_vllm`; run `.venv-vllm/bin/pointcopy serve`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from .args import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="checkpoint directory: pointcopy (Qwen2.5-VL) or official v1 "
                        "(default: the shipped shapes-tiny)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=positive_int, default=8000, help="port (default: 8000)")
    parser.add_argument("--served-model-name", help="the model name clients send (default: the folder's name)")
    parser.add_argument("--max-num-seqs", type=positive_int, default=32, help="requests decoded together (each "
                        "holds one copy-memory row; default: 32)")
    parser.add_argument("--max-model-len", type=positive_int, default=None, help="longest prompt + answer (default: "
                        "the model's)")
    parser.add_argument("--max-images", type=positive_int, default=4, help="images per request (default: 4)")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="after --: further `vllm serve` options")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("vllm") is None:
        print("pointcopy serve: error: vLLM is not installed here; make its environment with scripts/setup_vllm and "
              "run .venv-vllm/bin/pointcopy serve", file=sys.stderr)
        return 2
    from pointcopy.embedded.demo import ensure_model
    from pointcopy.serving.engine import serve_command

    model = args.model or str(ensure_model())
    extra = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    argv = serve_command(model, host=args.host, port=args.port, served_model_name=args.served_model_name,
                         max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                         max_images=args.max_images, dtype=args.dtype, vllm_args=extra)
    print("pointcopy serve: " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    os.execv(argv[0], argv)
    return 0  # not reached
