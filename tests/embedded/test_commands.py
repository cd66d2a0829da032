"""The recipe commands parse every recipe field (Optional fields included) into the same ShapesRecipe."""

from __future__ import annotations

from dataclasses import replace

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
    assert recipe.training.freeze == "model\\\\.visual\\\\.merger" and recipe.training.max_steps == 10
    assert args.seeds == [4, 5]
    assert shapes.recipe_from(_parse(ablate, [])).training.max_steps == ablate.ABLATION_DEFAULTS["max_steps"]
    assert shapes.recipe_from(_parse(shapes, ["train", "--group-by-length"])).training.group_by_length is True
    assert shapes.recipe_from(_parse(shapes, ["train", "--no-group-by-length"])).training.group_by_length is False


def test_checkpoint_recipe_round_trip(tmp_path):
    import json
    from dataclasses import asdict

    from pointcopy.embedded.recipe import RECIPE_FILE, load_recipe

    assert load_recipe(tmp_path) == ShapesRecipe()  # no RECIPE.json: the default recipe
    trained = ShapesRecipe(scenes=replace(ShapesRecipe().scenes, position_tint=12, max_objects=6))
    (tmp_path / RECIPE_FILE).write_text(json.dumps({"recipe": {**asdict(trained), "retired_field": 1},
                                                    "variant": "copy", "seed": 0}))
    got = load_recipe(tmp_path)
    assert got == trained and got.scenes.position_tint == 12  # unknown (older/newer) fields are ignored


def test_a_finished_run_is_reused_only_for_the_recipe_it_was_trained_with(tmp_path):
    import json
    from dataclasses import asdict

    import pytest

    from pointcopy.embedded.recipe import RECIPE_FILE, train_variant

    trained = ShapesRecipe.of(max_steps=1300)
    final = tmp_path / "runs" / "copy-seed0" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (final / RECIPE_FILE).write_text(json.dumps({"recipe": asdict(trained), "variant": "copy", "seed": 0}))
    # the same training (evaluation-only fields may differ): reused, nothing is trained
    assert train_variant(tmp_path, trained.with_(test_items=120, max_new_tokens=10), "copy", seed=0) == final
    with pytest.raises(ValueError, match=r"another recipe \(training.max_steps: 1300 -> 600\)"):
        train_variant(tmp_path, trained.with_(max_steps=600), "copy", seed=0)
    stored = asdict(trained)
    del stored["z_loss_top_k"]  # a run from before the field existed
    (final / RECIPE_FILE).write_text(json.dumps({"recipe": stored, "variant": "copy", "seed": 0}))
    with pytest.raises(ValueError, match="z_loss_top_k: '<not recorded>' -> 0"):
        train_variant(tmp_path, trained, "copy", seed=0)


def test_each_stage_has_the_flags_it_reads():
    import pytest

    def flags(stage):
        parser = argparse.ArgumentParser()
        shapes.add_arguments(parser)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[stage]
        return {o for a in sub._actions for o in a.option_strings}

    data, train, evaluate = flags("data"), flags("train"), flags("eval")
    assert {"--max-objects", "--exclusive-cells", "--train-items", "--test-seed"} <= data
    assert not {"--steps", "--learning-rate", "--model", "--variant"} & data
    assert {"--steps", "--learning-rate", "--max-objects", "--ship", "--variant"} <= train
    assert {"--model", "--limit", "--no-pointing", "--max-new-tokens", "--test-items", "--max-objects"} <= evaluate
    assert not {"--steps", "--learning-rate", "--ship"} & evaluate
    recipe = shapes.recipe_from(_parse(shapes, ["train", "--max-objects", "6", "--steps", "20"]))
    assert recipe.scenes.max_objects == 6 and recipe.scenes.exclusive_cells is True and recipe.training.max_steps == 20
    with pytest.raises(SystemExit):
        _parse(shapes, ["eval", "--steps", "20"])  # eval does not train


def test_recipes_written_before_scenes_were_nested_still_load_and_match(tmp_path):
    import json
    from dataclasses import asdict

    from pointcopy.embedded.recipe import RECIPE_FILE, _check_same_training, load_recipe

    current = ShapesRecipe()
    old = {k: v for k, v in asdict(current).items() if k != "scenes"}
    old.update({k: getattr(current.scenes, k) for k in ("min_objects", "max_objects", "position_tint",
                                                          "exclusive_cells")})
    (tmp_path / RECIPE_FILE).write_text(json.dumps({"recipe": old, "variant": "copy", "seed": 0}))
    assert load_recipe(tmp_path) == current
    _check_same_training(tmp_path, current)  # the same training: not refused
    import pytest

    with pytest.raises(ValueError, match=r"scenes.max_objects: 8 -> 6"):
        _check_same_training(tmp_path, current.with_(scenes=replace(current.scenes, max_objects=6)))


def test_recipes_with_flat_training_fields_still_load_and_match(tmp_path):
    """Recipes stored before `training` was nested kept steps, batch_size, ... at the top level."""
    import json
    from dataclasses import asdict

    import pytest

    from pointcopy.embedded.recipe import RECIPE_FILE, _check_same_training, load_recipe

    current = ShapesRecipe.of(max_steps=1300, length_chunks=1)
    old = {k: v for k, v in asdict(current).items() if k not in ("scenes", "training")}
    old.update({k: getattr(current.scenes, k) for k in ("min_objects", "max_objects", "position_tint",
                                                          "exclusive_cells")})
    t = current.training
    old.update(steps=t.max_steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
               vision_lr_scale=t.vision_lr_scale, freeze=t.freeze, warmup_ratio=t.warmup_ratio,
               lr_scheduler=t.lr_scheduler, threads=t.threads, group_by_length=t.group_by_length,
               length_chunks=t.length_chunks, balance_ranks=t.balance_ranks)
    (tmp_path / RECIPE_FILE).write_text(json.dumps({"recipe": old, "variant": "copy", "seed": 0}))
    assert load_recipe(tmp_path) == current
    _check_same_training(tmp_path, current)
    with pytest.raises(ValueError, match=r"training.max_steps: 1300 -> 1100"):
        _check_same_training(tmp_path, current.with_(max_steps=1100))
