"""`pointcopy ablate`: the controlled ablation of the embedded default (see pointcopy.embedded.ablation).

Default budget: 3 seeds x (one vision warm-up + 3 trainings of --steps each + 4 evaluations). Measured on 2 cores
with nothing else running: 65.5 minutes (600 steps, 0.52-0.78 s/step), over the ~40 minutes the issue asks for;
fewer steps learn too little to compare anything. Raise --steps/--test-items/--seeds to scale it up.
Writes ROOT/ablation/{results.json,table.md,ablation.png}.
"""

from __future__ import annotations

import argparse

from .shapes import add_recipe_arguments, recipe_from

ABLATION_DEFAULTS = dict(steps=600, test_items=120)  # 9 trainings of ~6 min + 3 warm-ups of ~1 min + 12 evaluations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="runs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_recipe_arguments(parser)
    parser.set_defaults(**ABLATION_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from pointcopy.embedded.ablation import run_ablation

    run_ablation(args.root, recipe_from(args), seeds=tuple(args.seeds))
    return 0
