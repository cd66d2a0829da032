"""The pipeline's closed loop on CPU (docs/results/pipeline-closed-loop.md): does `pointcopy pipeline build` make
useful training data?

    .venv/bin/python scripts/pipeline_closed_loop.py [--root runs/closed-loop] [--items 4000] [--seeds 0]

1. shapes scenes the grounding model never saw (train seed 11) and the recipe's held-out split (seed 2);
2. the pipeline gets only their questions and *text-only* reasoning (`pointcopy pipeline shapes-input`: no detect
   calls, no regions, no boxes) and builds v1g records twice: decomposed by the deterministic shapes decomposer,
   grounded (a) by attention contrast with the shipped shapes-tiny model, (b) with the scenes' true boxes;
3. the embedded recipe trains on each (same items: those both arms kept; same steps, seeds and vision warm-up),
   optionally also on the same items' `nocopy` traces (no regions at all);
4. held-out answer accuracy, pointer precision and region IoU of each, and the gap, go to
   docs/results/pipeline-closed-loop.json (the table: --report-only; the write-up: pipeline-closed-loop.md).
Every stage resumes (data, pipeline, training, evaluation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PC = [sys.executable, "-m", "pointcopy.cli"]
TRAIN_SEED = 11  # scenes unseen by shapes-tiny (trained on seed 1) and by the held-out split (seed 2)
GROUND_FLAGS = ["--prompt", "What shape is the {description}?", "--layers", "0,1,2,3"]  # issue 20's best setting
METRICS = ("answer_accuracy", "pointer_precision", "pointer_recall", "region_iou", "attribute_accuracy",
           "object_count_accuracy", "parse_problem_rate")


def sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def subset(src: Path, ids: list[str], dest: Path) -> Path:
    """The rows of v1g file `src` whose id is in `ids`, in `ids` order, written beside it (image paths stay valid)."""
    rows = {json.loads(line)["id"]: line for line in src.read_text().splitlines() if line.strip()}
    dest.write_text("".join(rows[i] + "\n" for i in ids))
    return dest


ARMS = {"ground-truth": "true boxes (the scenes' own)", "attention": "pipeline: attention-contrast boxes",
        "nocopy": "no regions at all (text-only trace)"}


def markdown(r: dict) -> str:
    """The results table (one row per arm and seed) and the gaps to the true-box arm."""
    runs = r["runs"]
    lines = ["| training data | seed | answer accuracy | pointer precision | pointer recall | region IoU | "
             "attribute accuracy | object count accuracy |", "|---|---|---|---|---|---|---|---|"]
    order = [a for a in ARMS if any(v["arm"] == a for v in runs.values())]
    for arm in order:
        for key, v in sorted(runs.items()):
            if v["arm"] != arm:
                continue
            cells = [v["answer_accuracy"], v["pointer_precision"], v["pointer_recall"], v["region_iou"],
                     v["attribute_accuracy"], v["object_count_accuracy"]]
            lines.append(f"| {ARMS[arm]} | {v['seed']} | " + " | ".join(
                "--" if c is None else f"{c:.3f}" for c in cells) + " |")
    gt = {v["seed"]: v for v in runs.values() if v["arm"] == "ground-truth"}
    gaps = []
    for v in runs.values():
        if v["arm"] != "ground-truth" and v["seed"] in gt:
            gaps.append(f"* {ARMS[v['arm']]}, seed {v['seed']}: answer accuracy "
                        f"{100 * (v['answer_accuracy'] - gt[v['seed']]['answer_accuracy']):+.1f} points against "
                        f"true boxes")
    return "\n".join(lines) + "\n\n" + "\n".join(gaps) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/closed-loop")
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ap.add_argument("--arms", default="attention,ground-truth", help="also: nocopy")
    ap.add_argument("--model", default="src/pointcopy/embedded/assets/shapes-tiny", help="the grounding model")
    ap.add_argument("--results", default="docs/results/pipeline-closed-loop")
    ap.add_argument("--report-only", action="store_true", help="print the results table of the .json")
    args = ap.parse_args(argv)
    out = REPO / args.results
    if args.report_only:
        print(markdown(json.loads(out.with_suffix(".json").read_text())), end="")
        return 0

    sys.path.insert(0, str(REPO / "src"))
    from pointcopy.embedded.recipe import ShapesRecipe, build_data, evaluate_model, train_variant

    root = (REPO / args.root).resolve()
    recipe = ShapesRecipe.of(train_items=args.items, train_seed=TRAIN_SEED)
    build_data(root, recipe)
    inputs = root / "pipeline" / "inputs.jsonl"
    if not inputs.exists():
        sh(PC + ["pipeline", "shapes-input", "--split", str(root / "data" / "train"), "--out", str(inputs)])
    built = {}
    for grounder in ("attention", "ground-truth"):
        out = root / "pipeline" / grounder
        flags = ["--model", args.model, *GROUND_FLAGS, "--threads", "2"] if grounder == "attention" else []
        sh(PC + ["pipeline", "build", "--input", str(inputs), "--out", str(out), "--decomposer", "shapes",
                 "--grounder", grounder, "--no-progress", *flags])
        built[grounder] = out
    kept = {g: [json.loads(line)["id"] for line in (out / "v1g.jsonl").read_text().splitlines()]
            for g, out in built.items()}
    common = [i for i in kept["attention"] if i in set(kept["ground-truth"])]
    data = {g: subset(out / "v1g.jsonl", common, out / "train-common.jsonl") for g, out in built.items()}
    data["nocopy"] = subset(root / "data" / "train" / "nocopy.jsonl", common,
                            root / "data" / "train" / "nocopy-common.jsonl")
    results = {"items": args.items, "train_seed": TRAIN_SEED, "common_items": len(common),
               "pipeline": {g: json.loads((out / "report.json").read_text()) for g, out in built.items()},
               "grounding_model": args.model, "ground_flags": GROUND_FLAGS, "steps": recipe.training.max_steps,
               "runs": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            variant = "nocopy" if arm == "nocopy" else "copy"
            final = train_variant(root, recipe, variant, seed=seed, out_dir=root / "runs" / f"{arm}-seed{seed}",
                                  data=data[arm])
            metrics_file = final.parent / "metrics.json"
            if not metrics_file.exists():
                m = evaluate_model(final, root / "data" / "test", recipe,
                                   out_file=final.parent / "predictions-test.jsonl")
                metrics_file.write_text(json.dumps(m, indent=1))
            m = json.loads(metrics_file.read_text())
            results["runs"][f"{arm}-seed{seed}"] = {"arm": arm, "seed": seed, **{k: m.get(k) for k in METRICS}}
            print(arm, seed, {k: m.get(k) for k in METRICS}, flush=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results), end="")
    print(f"wrote {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
