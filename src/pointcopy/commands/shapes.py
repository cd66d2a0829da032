"""`pointcopy shapes {data,train,eval,all}`: the embedded default's recipe, stage by stage.

    pointcopy shapes all --root runs/shapes            # data -> train (copy variant) -> held-out metrics
    pointcopy shapes train --root runs/shapes --ship   # ... and install the result as the demo's checkpoint
    pointcopy shapes eval --root runs/shapes --model src/pointcopy/embedded/assets/shapes-tiny

Each stage has the flags it uses (`pointcopy shapes train --help`): the `ShapesRecipe` fields (its scene fields
included, e.g. `--max-objects 6`) that the stage reads, plus the stage's own options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from .args import add_dataclass_arguments, dataclass_from_args, output_dir, positive_int

# ShapesRecipe fields each stage reads (None: all); the scene fields decide data and the held-out split alike
_DATA = ("train_items", "test_items", "train_seed", "test_seed")
_EVAL = ("test_items", "test_seed", "threads", "eval_batch_size", "max_new_tokens")
# training fields `embedded.recipe.train_options` sets per run (the stage's own --seed is the training seed)
# (and the collate's image cap, which shares its name with the scenes' max_side and stays off for these images)
RUN_FIELDS = ("seed", "progress", "save_steps", "model_overrides", "require_object_regions", "training.max_side")


def _scene_fields() -> tuple[str, ...]:
    from pointcopy.data.shapes.scene import SceneConfig

    return tuple(f.name for f in dataclasses.fields(SceneConfig))


STAGES = {
    "data": ("build the train and held-out splits under ROOT/data", lambda: _DATA + _scene_fields()),
    "train": ("build the data if needed, then train one variant", lambda: None),
    "eval": ("held-out metrics of a trained run (or of --model)", lambda: _EVAL + _scene_fields()),
    "all": ("data, train, eval", lambda: None),
}


def add_recipe_arguments(parser: argparse.ArgumentParser, only=None) -> None:
    """The `ShapesRecipe` flags (all, or the fields named in `only`)."""
    from pointcopy.embedded.recipe import ShapesRecipe

    add_dataclass_arguments(parser, ShapesRecipe, only=only, exclude=RUN_FIELDS, aliases={"max_steps": ["--steps"]},
                            helps={"preset_overrides": "JSON object of model config fields"})


def recipe_from(args):
    """The recipe of parsed flags; fields a stage has no flag for keep the recipe's defaults."""
    from pointcopy.embedded.recipe import ShapesRecipe

    return dataclass_from_args(ShapesRecipe, args, exclude=RUN_FIELDS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    stages = parser.add_subparsers(dest="stage", required=True, metavar="{" + ",".join(STAGES) + "}")
    for name, (help_text, fields) in STAGES.items():
        sub = stages.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--root", type=output_dir, default="runs/shapes", help="working directory (data/, runs/)")
        if name != "data":
            sub.add_argument("--variant", default="copy", choices=["copy", "coord", "nocopy"])
            sub.add_argument("--seed", type=int, default=0, help="training seed")
        if name in ("train", "all"):
            sub.add_argument("--ship", action="store_true", help="copy the trained model to the demo's asset folder")
        if name in ("eval", "all"):
            sub.add_argument("--model", help="model directory to evaluate (default: the trained run's final/)")
            sub.add_argument("--limit", type=positive_int, help="evaluate on the first N held-out items")
            sub.add_argument("--no-pointing", action="store_true", help="evaluate with pointing disabled")
        add_recipe_arguments(sub, only=fields())


def run(args: argparse.Namespace) -> int:
    from pointcopy.embedded.recipe import build_data, evaluate_model, train_variant
    from pointcopy.eval.shapes import format_markdown

    recipe, root = recipe_from(args), Path(args.root)
    if args.stage in ("data", "all", "train"):
        build_data(root, recipe)
    model_dir = Path(args.model) if getattr(args, "model", None) else None
    if args.stage in ("train", "all"):
        model_dir = train_variant(root, recipe, args.variant, seed=args.seed)
        print(f"model: {model_dir}")
        if getattr(args, "ship", False):
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
        out_dir = root / "eval" / Path(model_dir).name if getattr(args, "model", None) else Path(model_dir).parent
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
