"""The recipe commands parse every recipe field (Optional fields included) into the same ShapesRecipe."""

from __future__ import annotations

import argparse

from pointcopy.commands import ablate, shapes
from pointcopy.embedded.recipe import ShapesRecipe


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_shapes_defaults_are_the_recipe():
    assert shapes.recipe_from(_parse(shapes, ["eval"])) == ShapesRecipe()


def test_ablate_flags_and_optional_fields():
    args = _parse(ablate, ["--freeze", "model\\\\.visual\\\\.merger", "--steps", "10", "--seeds", "4", "5"])
    recipe = shapes.recipe_from(args)
    assert recipe.freeze == "model\\\\.visual\\\\.merger" and recipe.steps == 10 and args.seeds == [4, 5]
    assert shapes.recipe_from(_parse(ablate, [])).steps == ablate.ABLATION_DEFAULTS["steps"]
    assert shapes.recipe_from(_parse(shapes, ["train", "--group-by-length"])).group_by_length is True
    assert shapes.recipe_from(_parse(shapes, ["train", "--no-group-by-length"])).group_by_length is False


def test_checkpoint_recipe_round_trip(tmp_path):
    import json
    from dataclasses import asdict

    from pointcopy.embedded.recipe import RECIPE_FILE, load_recipe

    assert load_recipe(tmp_path) == ShapesRecipe()  # no RECIPE.json: the default recipe
    trained = ShapesRecipe(position_tint=12, max_objects=6)
    (tmp_path / RECIPE_FILE).write_text(json.dumps({"recipe": {**asdict(trained), "retired_field": 1},
                                                    "variant": "copy", "seed": 0}))
    got = load_recipe(tmp_path)
    assert got == trained and got.scenes.position_tint == 12  # unknown (older/newer) fields are ignored
