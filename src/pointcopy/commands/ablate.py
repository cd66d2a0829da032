"""`pointcopy ablate`: the controlled ablation of the embedded default (see pointcopy.embedded.ablation).

Default budget (3 seeds x 3 trainings of --steps each + 4 evaluations per seed) fits in about 40 minutes on
2 cores; raise --steps/--eval-items/--seeds to scale it up. Writes ROOT/ablation/{results.json,table.md,ablation.png}.
"""

from __future__ import annotations

import argparse

from .shapes import add_recipe_arguments, recipe_from

ABLATION_DEFAULTS = dict(steps=600, test_items=120)  # ~38 min on 2 cores (9 trainings of ~3.8 min, 12 evaluations)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="runs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_recipe_arguments(parser)
    parser.set_defaults(**ABLATION_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from pointcopy.embedded.ablation import run_ablation

    run_ablation(args.root, recipe_from(args), seeds=tuple(args.seeds))
    return 0
