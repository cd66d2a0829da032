"""`pointcopy ablate`: the controlled ablation of the embedded default (see pointcopy.embedded.ablation).

Default budget: 3 seeds x (one vision warm-up + 3 trainings of --steps each + 4 evaluations). The default
400 steps fit the ~40 minutes the issue asks for on 2 cores, but at that budget the copy and no-copy models tie;
use --steps 1300 (over three times as long) to compare them (measurements: docs/embedded-world.md#ablation-budget).
Raise --steps/--test-items/--seeds to scale it up.
Writes ROOT/ablation/{results.json,table.md,ablation.png}.
"""

from __future__ import annotations

import argparse

from .args import nonnegative_int, output_dir
from .shapes import add_recipe_arguments, recipe_from

# 400 steps fit the ~40-minute budget on 2 cores (measurements: docs/embedded-world.md#ablation-budget).
ABLATION_DEFAULTS = dict(max_steps=400, test_items=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=output_dir, default="runs/ablation")
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    add_recipe_arguments(parser)
    parser.set_defaults(**ABLATION_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from pointcopy.embedded.ablation import run_ablation

    run_ablation(args.root, recipe_from(args), seeds=tuple(args.seeds))
    return 0
