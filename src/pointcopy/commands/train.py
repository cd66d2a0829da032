"""`pointcopy train`: train on v1g data (one process, LoRA, or `accelerate launch` data parallel).

Every field of `pointcopy.training.run.TrainOptions` is a flag (`--max-steps 200`, `--lora`, `--no-resume`, ...).
Examples:
    pointcopy train --model tiny --train-data data/train.jsonl --output-dir runs/tiny
    accelerate launch --num_processes 2 --cpu -m pointcopy.cli train --model DIR --train-data ... --output-dir ...
"""

from __future__ import annotations

import argparse
import json

from .args import add_dataclass_arguments, dataclass_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pointcopy.training.options import TrainOptions

    add_dataclass_arguments(parser, TrainOptions, helps={
        "train_data": "v1g JSONL/JSON/parquet files", "eval_data": "v1g JSONL/JSON/parquet files",
        "model_overrides": 'JSON object of config fields, e.g. \'{"pointing_enabled": false}\''})


def run(args: argparse.Namespace) -> int:
    from pointcopy.training.run import TrainOptions, close_process_group, train

    try:
        summary = train(dataclass_from_args(TrainOptions, args))
    finally:
        close_process_group()  # under `accelerate launch`: before interpreter shutdown, see its docstring
    last = next((h for h in reversed(summary["log_history"]) if "loss" in h), {})
    print(json.dumps({"global_step": summary["global_step"], "train_loss": summary["train_loss"],
                      **{k: last[k] for k in ("gen_loss", "copy_loss", "z_loss", "copy_acc") if k in last}}))
    return 0
