"""`pointcopy shapes {data,train,eval,all}`: the embedded default's recipe, stage by stage.

    pointcopy shapes all --root runs/shapes            # data -> train (copy variant) -> held-out metrics
    pointcopy shapes train --root runs/shapes --ship   # ... and install the result as the demo's checkpoint
Every `ShapesRecipe` field is a flag (e.g. `--steps 900 --train-items 4000 --threads 2`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import typing
from pathlib import Path

from .args import output_dir, positive_int


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    from pointcopy.embedded.recipe import ShapesRecipe

    hints = typing.get_type_hints(ShapesRecipe)
    for f in dataclasses.fields(ShapesRecipe):
        if f.name == "preset_overrides":
            parser.add_argument("--preset-overrides", type=json.loads, default={},
                                help="JSON object of model config fields")
            continue
        hint = hints[f.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)  # Optional[X] -> X
        if base is bool:  # --group-by-length / --no-group-by-length (type=bool would read "False" as True)
            parser.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction,
                                default=f.default)
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), type=base, default=f.default)


def recipe_from(args):
    from pointcopy.embedded.recipe import ShapesRecipe

    return ShapesRecipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ShapesRecipe)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=["data", "train", "eval", "all"])
    parser.add_argument("--root", type=output_dir, default="runs/shapes", help="working directory (data/, runs/)")
    parser.add_argument("--variant", default="copy", choices=["copy", "coord", "nocopy"])
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--model", help="model directory to evaluate (default: the trained run's final/)")
    parser.add_argument("--limit", type=positive_int, help="evaluate on the first N held-out items")
    parser.add_argument("--no-pointing", action="store_true", help="evaluate with pointing disabled")
    parser.add_argument("--ship", action="store_true", help="copy the trained model to the demo's asset folder")
    add_recipe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pointcopy.embedded.recipe import build_data, evaluate_model, train_variant
    from pointcopy.eval.shapes import format_markdown

    recipe, root = recipe_from(args), Path(args.root)
    if args.stage in ("data", "all", "train"):
        build_data(root, recipe)
    model_dir = Path(args.model) if args.model else None
    if args.stage in ("train", "all"):
        model_dir = train_variant(root, recipe, args.variant, seed=args.seed)
        print(f"model: {model_dir}")
        if args.ship:
            from pointcopy.embedded.demo import ASSET

            shutil.rmtree(ASSET, ignore_errors=True)
            shutil.copytree(model_dir, ASSET)  # with the RECIPE.json that train_variant writes beside the weights
            if not (ASSET / "RECIPE.json").is_file():  # a model trained before checkpoints carried their recipe
                (ASSET / "RECIPE.json").write_text(json.dumps({"recipe": dataclasses.asdict(recipe), "variant":
                                                               args.variant, "seed": args.seed}, indent=1))
            print(f"shipped to {ASSET}")
    if args.stage in ("eval", "all"):
        model_dir = model_dir or root / "runs" / f"{args.variant}-seed{args.seed}" / "final"
        if args.stage == "eval":  # held-out scenes only: `eval --model DIR` needs no training data
            from pointcopy.data.shapes.build import build_split

            build_split(root / "data" / "test", recipe.test_items, recipe.test_seed, config=recipe.scenes)
        # A model given by --model (e.g. the shipped asset) keeps its folder clean: outputs go under --root.
        out_dir = root / "eval" / Path(model_dir).name if args.model else Path(model_dir).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = "-nopointing" if args.no_pointing else ""
        result = evaluate_model(model_dir, root / "data" / "test", recipe, limit=args.limit,
                                pointing_enabled=not args.no_pointing,
                                out_file=out_dir / f"predictions{suffix}-test.jsonl")
        out = out_dir / f"metrics{suffix}.json"
        out.write_text(json.dumps(result, indent=1))
        print(format_markdown(result))
        print(f"wrote {out}")
    return 0
