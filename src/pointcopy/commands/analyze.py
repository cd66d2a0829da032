"""`pointcopy analyze {focus,copy-use,faithfulness}`: attention and intervention analyses of one or more models.

    pointcopy analyze focus --items runs/shapes/data/test --model copy=runs/shapes/runs/copy-seed0/final \\
        --model nocopy=runs/shapes/runs/nocopy-seed0/final --out runs/analysis/focus

Items: a shapes split directory, a v1g file, or a simple JSONL of image + question/expression + box
(`pointcopy.analysis.items`). Models: `LABEL=PATH` (repeat a label for seeds of one condition; the first label is
compared with the others) or `PATH`. Writes OUT/<analysis>.json, .md and .png figures; per model, resumable
per-item files under OUT/models/.

Under torchrun / accelerate launch each rank generates and analyses every N-th batch of items into
OUT/models/<model>/ranks/R-of-N/ (resumable); rank 0 merges them in item order into the files one process writes,
then writes the report (`analysis.run.analyse_models`):

    torchrun --nproc-per-node 8 -m pointcopy.cli analyze focus --items ... --model ... --out OUT
"""

from __future__ import annotations

import argparse

from ..decoding import add_decoding_arguments, decoding_from_args
from ..ranks import add_rank_timeout_argument
from .args import output_dir, positive_int

ANALYSES = {
    "focus": "attention on the image, the evidence boxes and the copies, step by step, with statistics",
    "copy-use": "attention to copied tokens vs their source image tokens, by distance from the copy",
    "faithfulness": "does the model read what it copies? copy swaps, and pointing quality along the trace",
}


def _layers(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {value!r}") from None


def _model(value: str):
    from pointcopy.analysis.run import parse_model_spec

    try:
        return parse_model_spec(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", required=True, metavar="{" + ",".join(ANALYSES) + "}")
    for name, help_text in ANALYSES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--items", required=True, help="shapes split dir, v1g file, or JSONL of image + box items")
        p.add_argument("--model", dest="models", action="append", type=_model, required=True,
                       help="LABEL=PATH or PATH (repeat; same label = seeds of one condition)")
        p.add_argument("--out", type=output_dir, required=True, help="output directory")
        p.add_argument("--limit", type=positive_int, help="first N items only")
        p.add_argument("--layers", type=_layers, help="decoder layers, e.g. 2,14,27 (default: early, middle, last)")
        if name != "faithfulness":
            p.add_argument("--traces", choices=["generated", "given"], default="generated",
                           help="analyse the model's own traces (decoded as the decoding flags say; default "
                                "greedy), or teacher-force the items' given traces")
        if name == "faithfulness":
            p.add_argument("--events-per-item", type=positive_int, default=3,
                           help="copies per item to intervene on (spread over the trace: first, middle, last)")
        p.add_argument("--batch-size", type=positive_int, default=8)
        p.add_argument("--pointing", choices=["auto", "on", "off"], default="auto",
                       help="pointer logits at generation (auto: the checkpoint's setting, off for base checkpoints)")
        p.add_argument("--threads", type=positive_int,
                       help="torch CPU threads (on a machine busy with other jobs, 1 is much faster than 2)")
        p.add_argument("--device", help="torch device (default: cpu; under torchrun / accelerate: cuda:LOCAL_RANK "
                       "when CUDA is there, else cpu)")
        add_rank_timeout_argument(p)
        p.add_argument("--no-progress", action="store_true")
        add_decoding_arguments(p, max_new_tokens=640)


def options(args):
    from pointcopy.analysis.run import RunOptions
    from pointcopy.ranks import local_device, rank_and_world

    ranks = rank_and_world()
    device = args.device or (local_device() if ranks is not None else None)
    decoding = decoding_from_args(args, device=device, echo=print)  # the report goes to stdout too
    return RunOptions(items=args.items, out=args.out, models=args.models, limit=args.limit, layers=args.layers,
                      traces=getattr(args, "traces", "generated"), batch_size=args.batch_size,
                      max_new_tokens=decoding.max_new_tokens,
                      pointing={"auto": None, "on": True, "off": False}[args.pointing], threads=args.threads,
                      progress=not args.no_progress and (ranks is None or ranks[0] == 0),
                      extra={"events_per_item": args.events_per_item} if hasattr(args, "events_per_item") else {},
                      decoding=decoding, device=device, ranks=ranks, rank_timeout=args.rank_timeout)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    started = time.perf_counter()
    opts = options(args)
    if args.analysis == "focus":
        from pointcopy.analysis.focus import run_focus

        result = run_focus(opts)
        report = Path(opts.out) / "focus.md"
    elif args.analysis == "copy-use":
        from pointcopy.analysis.copy_use import run_copy_use

        result = run_copy_use(opts)
        report = Path(opts.out) / "copy_use.md"
    else:
        from pointcopy.analysis.faithfulness import run_faithfulness

        result = run_faithfulness(opts)
        report = Path(opts.out) / "faithfulness.md"
    if result is None:  # a rank other than 0: its share is done, rank 0 merges and writes the report
        print(f"rank {opts.ranks[0]}/{opts.ranks[1]}: share done in {time.perf_counter() - started:.0f} s")
        return 0
    print(report.read_text())
    print(f"wrote {report.parent} in {time.perf_counter() - started:.0f} s")
    return 0
