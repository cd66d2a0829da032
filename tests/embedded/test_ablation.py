"""The ablation pipeline end to end on a minute budget (the numbers are meaningless; the plumbing is not)."""

from __future__ import annotations

import json
import math

from PIL import Image

from pointcopy.embedded.ablation import markdown_table, run_ablation, seed_interval, wilson
from pointcopy.embedded.recipe import ShapesRecipe


def test_intervals():
    lo, hi = wilson(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-3) and math.isclose(hi, 0.5962, abs_tol=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    mean, lo, hi = seed_interval([0.5, 0.6, 0.7])
    assert math.isclose(mean, 0.6) and math.isclose(hi - mean, 4.303 * 0.1 / math.sqrt(3), rel_tol=1e-6)


def test_ablation_runs_all_conditions_and_writes_outputs(tmp_path):
    recipe = ShapesRecipe.of(train_items=24, test_items=6, max_steps=3, batch_size=4, max_new_tokens=12, eval_batch_size=6,
                          threads=1, vision_warmup_steps=2, max_objects=4)
    logs = []
    summary = run_ablation(tmp_path, recipe, seeds=(0, 1), progress=False, echo=logs.append)
    conds = summary["conditions"]
    assert list(conds) == ["a", "b", "c", "d"]
    for c in conds.values():
        assert len(c["per_seed_accuracy"]) == 2
        assert c["ci95"][0] <= c["accuracy"] <= c["ci95"][1]
        assert sum(cell["n"] for cell in c["by_family"].values()) == 2 * 6
    # (a) and (b) evaluate the same trained weights; (c) and (d) are separate trainings on their own variants,
    # all three starting from the seed's one warmed-up vision tower
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["coord-seed0", "coord-seed1", "copy-seed0", "copy-seed1", "nocopy-seed0", "nocopy-seed1",
                    "vision-init-seed0", "vision-init-seed1"]
    out = tmp_path / "ablation"
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1]
    table = (out / "table.md").read_text()
    assert table == markdown_table(summary) and "(b) copy-trained, pointing off" in table
    assert summary["wall_seconds"] > 0 and f"{summary['wall_seconds'] / 60:.1f} minutes" in table
    assert Image.open(out / "ablation.png").size[0] > 600
