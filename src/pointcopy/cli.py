"""Command line entry point: `pointcopy <command> ...`.

Each command lives in its own module and exposes `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command is chosen, so `pointcopy score` never imports torch. A command that
raises ValueError or OSError (bad input) ends with one line on stderr and exit status 2.
To add a command, add one line to COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pointcopy.commands.demo", "answer a question about a generated scene with the embedded model; "
             "writes demo.html"),
    "app": ("pointcopy.commands.app", "web app: ask about your images or a drawn scene, trace streamed, regions shown"),
    "shapes": ("pointcopy.commands.shapes", "the embedded default's recipe: build data, train, evaluate"),
    "ablate": ("pointcopy.commands.ablate", "controlled ablation: pointing vs no pointing vs text-only controls"),
    "run": ("pointcopy.commands.run", "run a tiny locally built model on a generated image and print the trace"),
    "train": ("pointcopy.commands.train", "train a point-and-copy model on v1g data"),
    "score": ("pointcopy.eval.score_cli", "score a predictions file against a benchmark (MathVista, MATH-V, MathVerse)"),
    "eval": ("pointcopy.eval.eval_cli", "generate on a benchmark with a model (resumable), then score the run"),
    "analyze": ("pointcopy.commands.analyze", "attention and faithfulness analyses: focus decay, copy use, copy swaps"),
    "ground": ("pointcopy.commands.ground", "boxes for object descriptions by attention contrast (Algorithm 1), with IoU"),
    "serve": ("pointcopy.commands.serve", "OpenAI-compatible server (vLLM) for a point-and-copy checkpoint; needs "
              "scripts/setup_vllm"),
    "pipeline": ("pointcopy.commands.pipeline", "build v1g training data from text-only reasoning traces "
                 "(decompose, filter, ground)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the chosen sub-parser when possible: keeps `pointcopy score` free of torch imports.
    if argv and argv[0] in COMMANDS:
        module_name, help_text = COMMANDS[argv[0]]
        parser = argparse.ArgumentParser(prog=f"pointcopy {argv[0]}", description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        try:
            return int(module.run(args) or 0)
        except (ValueError, OSError) as exc:
            # bad input (a missing or unreadable file, a malformed checkpoint, a refused option): one line naming
            # it, not a traceback; POINTCOPY_DEBUG=1 shows the traceback
            if os.environ.get("POINTCOPY_DEBUG"):
                raise
            print(f"pointcopy {argv[0]}: error: {exc}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="pointcopy", description="point-and-copy grounded reasoning")
    parser.add_argument("command", nargs="?", choices=sorted(COMMANDS), help="; ".join(
        f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return main([args.command])


if __name__ == "__main__":
    raise SystemExit(main())
