"""`pointcopy train`: train on v1g data (one process, LoRA, or `accelerate launch` data parallel).

Every field of `pointcopy.training.run.TrainOptions` is a flag (`--max-steps 200`, `--lora`, `--no-resume`, ...).
Examples:
    pointcopy train --model tiny --train-data data/train.jsonl --output-dir runs/tiny
    accelerate launch --num_processes 2 --cpu -m pointcopy.cli train --model DIR --train-data ... --output-dir ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pointcopy.training.run import TrainOptions

    hints = typing.get_type_hints(TrainOptions)
    for f in dataclasses.fields(TrainOptions):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)  # `X | None` -> X
        if base is bool:  # --x / --no-x (unset: the default, None for `bool | None`); type=bool reads "False" as True
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.name in ("train_data", "eval_data"):
            parser.add_argument(flag, nargs="+", required=required,
                                default=None if required else [], help="v1g JSONL/JSON/parquet files")
        elif f.name == "model_overrides":
            parser.add_argument(flag, type=json.loads, default={},
                                help='JSON object of config fields, e.g. \'{"pointing_enabled": false}\'')
        else:
            parser.add_argument(flag, type=base, required=required, default=None if required else f.default)


def run(args: argparse.Namespace) -> int:
    from pointcopy.training.run import TrainOptions, close_process_group, train

    names = {f.name for f in dataclasses.fields(TrainOptions)}
    try:
        summary = train(TrainOptions(**{k: v for k, v in vars(args).items() if k in names}))
    finally:
        close_process_group()  # under `accelerate launch`: before interpreter shutdown, see its docstring
    last = next((h for h in reversed(summary["log_history"]) if "loss" in h), {})
    print(json.dumps({"global_step": summary["global_step"], "train_loss": summary["train_loss"],
                      **{k: last[k] for k in ("gen_loss", "copy_loss", "z_loss", "copy_acc") if k in last}}))
    return 0
