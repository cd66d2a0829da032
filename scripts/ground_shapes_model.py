"""A tiny grounding model of the shapes world (model (a) of docs/results/grounding-shapes.md), through the shapes
recipe's training machinery (`embedded.recipe.train_options` -> `training.parallel.train_data_parallel`).

Why a new model: the shipped shapes-tiny answers questions with traces that enumerate *every* object in raster
order, so at the final prompt position nothing depends on which object a description names, and its attention
contrast does not localise (measured: docs/results/grounding-shapes.md, iteration 0). This script fine-tunes it on
one extra skill that cannot be done without looking at the named object: *read an attribute the question does not
give* ("What color is the large shiny cube?" -> "red"). The answer is the first token after the prompt, so the
final prompt position must gather the object's features through attention -- exactly the position and signal
Algorithm 1 reads.

    .venv/bin/python scripts/ground_shapes_model.py --root runs/ground [--steps 600] [--scenes 4000]

Writes ROOT/data/train/ground.jsonl (+ images/) from scenes of its own seed (never the test split's), then trains
ROOT/runs/ground-seed0/final (resumable, like every recipe run). Questions per object: for each attribute in turn
(colour, shape, size, material) the object is named by a random subset of its *other* words that no other object
of the scene shares; objects that cannot be named that way are skipped for that attribute.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from pointcopy.data.shapes.scene import SceneConfig, generate_scene
from pointcopy.data.shapes.traces import _word  # the canonical word of an attribute value ("metal" -> "shiny")

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "pointcopy" / "embedded" / "assets" / "shapes-tiny"
ATTRS = ("size", "color", "material", "shape")  # canonical order of a description
QUESTION = {"color": "What color is the {d}?", "shape": "What shape is the {d}?", "size": "What size is the {d}?",
            "material": "What material is the {d}?"}


def words(obj) -> dict[str, str]:
    return {a: _word(a, obj.attr(a)) for a in ATTRS}


def phrase(chosen: dict[str, str]) -> str:
    """Words in canonical order; a description without a shape ends in "thing"."""
    out = [chosen[a] for a in ATTRS if a in chosen]
    return " ".join(out) + ("" if "shape" in chosen else " thing")


def questions(scene, rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs of one scene."""
    objs = [words(o) for o in scene.objects]
    out = []
    for w in objs:
        for asked in ATTRS:
            others = [a for a in ATTRS if a != asked]
            subsets = [s for k in (1, 2, 3) for s in _subsets(others, k)]
            rng.shuffle(subsets)
            for s in subsets:
                named = {a: w[a] for a in s}
                matches = [v for v in objs if all(v[a] == named[a] for a in s)]
                if len(matches) == 1:
                    out.append((QUESTION[asked].format(d=phrase(named)), w[asked]))
                    break
    return out


def _subsets(items, k):
    from itertools import combinations

    return [list(c) for c in combinations(items, k)]


def build(root: Path, scenes: int, seed: int, per_scene: int, min_objects: int = 1) -> Path:
    from pointcopy.data.shapes.build import png_bytes
    from pointcopy.data.v1g import IMAGE_PREFIX, V1GRecord, write_v1g

    path = root / "data" / "train" / "ground.jsonl"
    # scenes of 1-8 objects: the few-object ones make "look at the named object" pay off from the first steps
    config = SceneConfig(min_objects=min_objects, max_objects=8, exclusive_cells=True)
    rng = random.Random(f"ground-data:{seed}")
    records = []
    for i in range(scenes):
        scene = generate_scene(f"ground-train:{seed}:{i}", config)
        image = png_bytes(scene)
        qa = questions(scene, rng)
        rng.shuffle(qa)
        for j, (q, a) in enumerate(qa[:per_scene]):
            conv = [{"from": "human", "value": IMAGE_PREFIX + q}, {"from": "gpt", "value": a}]
            records.append(V1GRecord(f"ground-{seed}-{i:05d}-{j}", image, conv, {}, scene.size))
    write_v1g(records, path, resume=True)
    return path


def save_untrained(out: Path, seed: int) -> None:
    """Model (b): the shapes-tiny preset (architecture, tokenizer, prompt template) with fresh weights."""
    from pointcopy.embedded.recipe import PRESET
    from pointcopy.presets import build_preset

    model, processor = build_preset(PRESET, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def eval_qa(model_dir: Path, scenes: int = 25, per_scene: int = 4) -> dict:
    """Held-out accuracy of the training task (exact answer word), by objects per scene (scenes of their own seed,
    neither the training nor the test split's)."""
    import torch

    from pointcopy.analysis.traces import load_model
    from pointcopy.data.shapes.scene import render
    from pointcopy.inference import generate

    torch.set_num_threads(1)
    model, processor, _ = load_model(model_dir)
    rng = random.Random("ground-qa-eval")
    out = {}
    for n in (1, 2, 4, 8):
        right = []
        for i in range(scenes):
            scene = generate_scene(f"ground-qa-eval:{n}:{i}", SceneConfig(min_objects=n, max_objects=n,
                                                                          exclusive_cells=True))
            qa = questions(scene, rng)
            rng.shuffle(qa)
            qa = qa[:per_scene]
            gens = generate(processor=processor, model=model, questions=[q for q, _ in qa],
                            images=[[render(scene)]] * len(qa), max_new_tokens=3)
            right += [g.text.strip() == a for (_, a), g in zip(qa, gens)]
        out[f"{n}_objects"] = round(sum(right) / len(right), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--scenes", type=int, default=4000)
    parser.add_argument("--per-scene", type=int, default=4, help="questions kept per scene")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (16)")
    parser.add_argument("--lr-scheduler", default=None, help="default: the recipe's (cosine)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--min-objects", type=int, default=1, help="fewest objects of a training scene")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--train-vision", action="store_true",
                        help="train the vision tower too (the recipe freezes it after its warm-up)")
    parser.add_argument("--start", default=str(SHIPPED), help="checkpoint to fine-tune (default: shipped model)")
    parser.add_argument("--eval-qa", type=Path, metavar="DIR", help="only report DIR's accuracy on the training task")
    parser.add_argument("--save-untrained", type=Path, metavar="DIR",
                        help="only write the control: the shapes-tiny architecture, freshly initialised (--seed)")
    args = parser.parse_args()
    if args.eval_qa:
        print(json.dumps({"model": str(args.eval_qa), "qa_accuracy": eval_qa(args.eval_qa)}))
        return
    if args.save_untrained:
        save_untrained(args.save_untrained, args.seed)
        print(args.save_untrained)
        return
    from pointcopy.embedded.recipe import ShapesRecipe, train_options
    from pointcopy.training.parallel import train_data_parallel

    data = build(args.root, args.scenes, args.data_seed, args.per_scene, args.min_objects)
    changes = {"max_steps": args.steps}
    if args.learning_rate is not None:
        changes["learning_rate"] = args.learning_rate
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.lr_scheduler is not None:
        changes["lr_scheduler"] = args.lr_scheduler
    if args.train_vision:
        changes["freeze"] = None
    recipe = ShapesRecipe.of(**changes)
    out = args.root / "runs" / f"ground-seed{args.seed}"
    options = train_options(recipe, data, out, args.seed, require_object_regions=False, model=args.start)
    summary = train_data_parallel(options, args.processes or recipe.processes)
    (out / "final" / "GROUNDING.json").write_text(json.dumps(
        {"start": args.start, "steps": args.steps, "scenes": args.scenes, "per_scene": args.per_scene,
         "min_objects": args.min_objects, "train_vision": args.train_vision,
         "data_seed": args.data_seed, "seed": args.seed, "learning_rate": recipe.training.learning_rate,
         "batch_size": recipe.training.batch_size, "lr_scheduler": recipe.training.lr_scheduler,
         "summary": summary}, indent=1, default=str))
    print(out / "final")


if __name__ == "__main__":
    main()
