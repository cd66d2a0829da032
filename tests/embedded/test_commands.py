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


def test_a_finished_run_is_reused_only_for_the_recipe_it_was_trained_with(tmp_path):
    import json
    from dataclasses import asdict

    import pytest

    from pointcopy.embedded.recipe import RECIPE_FILE, train_variant

    trained = ShapesRecipe(steps=1300)
    final = tmp_path / "runs" / "copy-seed0" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (final / RECIPE_FILE).write_text(json.dumps({"recipe": asdict(trained), "variant": "copy", "seed": 0}))
    # the same training (evaluation-only fields may differ): reused, nothing is trained
    assert train_variant(tmp_path, trained.with_(test_items=120, max_new_tokens=10), "copy", seed=0) == final
    with pytest.raises(ValueError, match=r"another recipe \(steps: 1300 -> 600\)"):
        train_variant(tmp_path, trained.with_(steps=600), "copy", seed=0)
    stored = asdict(trained)
    del stored["z_loss_top_k"]  # a run from before the field existed
    (final / RECIPE_FILE).write_text(json.dumps({"recipe": stored, "variant": "copy", "seed": 0}))
    with pytest.raises(ValueError, match="z_loss_top_k: '<not recorded>' -> 0"):
        train_variant(tmp_path, trained, "copy", seed=0)
