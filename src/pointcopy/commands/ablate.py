"""`pointcopy ablate`: the controlled ablation of the embedded default (see pointcopy.embedded.ablation).

Default budget: 3 seeds x (one vision warm-up + 3 trainings of --steps each + 4 evaluations). With the default
400 steps it took 32 minutes on 2 cores with nothing else running (within the ~40 minutes the issue asks for),
but at that budget the copy and no-copy models tie (33.9% each; docs/results/ablation-400steps.md; on the
current recipe, 31.5 minutes, 32.2% vs 31.7%: docs/results/ablation-400steps-relcarry.md). Use
--steps 1300 to compare them: 100 minutes, copy 84.7% vs no-copy 63.3% with non-overlapping 95% intervals
(docs/results/ablation-1300steps.md). Raise --steps/--test-items/--seeds to scale it up.
Writes ROOT/ablation/{results.json,table.md,ablation.png}.
"""

from __future__ import annotations

import argparse

from .args import nonnegative_int, output_dir
from .shapes import add_recipe_arguments, recipe_from

ABLATION_DEFAULTS = dict(steps=400, test_items=120)  # 9 trainings of 2.2-3 min + 3 warm-ups of ~45 s + 12 evaluations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=output_dir, default="runs/ablation")
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    add_recipe_arguments(parser)
    parser.set_defaults(**ABLATION_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from pointcopy.embedded.ablation import run_ablation

    run_ablation(args.root, recipe_from(args), seeds=tuple(args.seeds))
    return 0
