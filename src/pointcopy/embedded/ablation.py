"""The controlled ablation: does the gain come from pointing, or just from more (grounded) text?

Same data items, steps and seeds for four conditions:

    a  copy-trained,  pointing at inference           (the method)
    b  copy-trained,  pointing disabled at inference   (paper Table 2 "w/o pointing")
    c  no-copy text   (identical traces without any region markup)
    d  coordinate text (box text, no copy tokens)

Accuracy per condition with 95% confidence intervals: a t-interval over seed means for the overall accuracy, and
Wilson intervals on pooled (all seeds) counts per question family and per trace-length bucket. Writes
`results.json`, `table.md` and `ablation.png` under `ROOT/ablation/`.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from ..analysis.stats import seed_interval, wilson
from .recipe import ShapesRecipe, build_data, evaluate_model, train_variant

CONDITIONS = [  # (key, training variant, pointing at inference, label)
    ("a", "copy", True, "copy-trained, pointing"),
    ("b", "copy", False, "copy-trained, pointing off"),
    ("c", "nocopy", True, "no-copy text"),
    ("d", "coord", True, "coordinate text"),
]

def _pooled(results: list[dict], field: str) -> dict[str, dict]:
    groups: dict[str, list[float]] = {}
    for r in results:
        for k, cell in r[field].items():
            c, n = groups.setdefault(k, [0.0, 0])
            groups[k] = [c + cell["accuracy"] * cell["n"], n + cell["n"]]
    return {k: {"n": n, "accuracy": c / n, "ci95": wilson(c, n)} for k, (c, n) in groups.items()}


def run_ablation(root: str | Path, recipe: ShapesRecipe, seeds=(0, 1, 2), eval_items: int | None = None,
                 progress: bool = True, echo=print) -> dict:
    started = time.perf_counter()
    root = Path(root)
    out = root / "ablation"
    out.mkdir(parents=True, exist_ok=True)
    build_data(root, recipe, progress=progress)
    per_condition: dict[str, list[dict]] = {key: [] for key, *_ in CONDITIONS}
    for seed in seeds:
        for variant in ("copy", "nocopy", "coord"):
            echo(f"train {variant} seed {seed} ({recipe.training.max_steps} steps)")
            model_dir = train_variant(root, recipe, variant, seed=seed, progress=progress)
            for key, v, pointing, label in CONDITIONS:
                if v != variant:
                    continue
                res = evaluate_model(model_dir, root / "data" / "test", recipe, limit=eval_items,
                                     pointing_enabled=pointing, progress=progress)
                res["seed"] = seed
                per_condition[key].append(res)
                echo(f"  {label}: accuracy {res['answer_accuracy']:.3f}")
    summary = {"recipe": asdict(recipe), "seeds": list(seeds), "eval_items": eval_items or recipe.test_items,
               # this invocation only: a resumed ablation reuses finished trainings and counts just its own part
               "wall_seconds": round(time.perf_counter() - started, 1), "conditions": {}}
    for key, variant, pointing, label in CONDITIONS:
        runs = per_condition[key]
        accs = [r["answer_accuracy"] for r in runs]
        mean, lo, hi = seed_interval(accs)
        summary["conditions"][key] = {
            "label": label, "variant": variant, "pointing": pointing, "per_seed_accuracy": accs,
            "accuracy": mean, "ci95": [lo, hi],
            "by_family": _pooled(runs, "accuracy_by_family"), "by_length": _pooled(runs, "accuracy_by_length"),
            "pointer_precision": _mean_of(runs, "pointer_precision"), "region_iou": _mean_of(runs, "region_iou"),
            "attribute_accuracy": _mean_of(runs, "attribute_accuracy"),
            "object_count_accuracy": _mean_of(runs, "object_count_accuracy"),
        }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(markdown_table(summary))
    plot(summary, out / "ablation.png")
    echo(markdown_table(summary))
    return summary


def _mean_of(runs: list[dict], field: str):
    vals = [r[field] for r in runs if r.get(field) is not None]
    return statistics.fmean(vals) if vals else None


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _steps(recipe: dict):
    """Training steps of a stored recipe (`training.max_steps`; results written before it was nested: `steps`)."""
    return (recipe.get("training") or {}).get("max_steps", recipe.get("steps"))


def markdown_table(summary: dict) -> str:
    conds = summary["conditions"]
    lines = [f"Shapes world, {summary['eval_items']} held-out items x seeds {summary['seeds']}; "
             f"{_steps(summary['recipe'])} training steps per run"
             + (f"; {summary['wall_seconds'] / 60:.1f} minutes" if summary.get("wall_seconds") else "")
             + ". Accuracy % (95% CI).", "",
             "| condition | accuracy | per seed | pointer precision | region IoU | attribute acc. | count acc. |",
             "|---|---|---|---|---|---|---|"]
    for key, c in conds.items():
        lines.append(f"| ({key}) {c['label']} | {_pct(c['accuracy'])} ({_pct(c['ci95'][0])}–{_pct(c['ci95'][1])}) | "
                     f"{', '.join(_pct(a) for a in c['per_seed_accuracy'])} | {_pct(c['pointer_precision'])} | "
                     f"{_pct(c['region_iou'])} | {_pct(c['attribute_accuracy'])} | {_pct(c['object_count_accuracy'])} |")
    for field, title in (("by_family", "question family"), ("by_length", "trace length (tokens)")):
        keys = sorted({k for c in conds.values() for k in c[field]}, key=_order)
        lines += ["", f"By {title} (pooled over seeds, Wilson 95% CI):", "",
                  "| condition | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for key, c in conds.items():
            cells = []
            for k in keys:
                cell = c[field].get(k)
                cells.append("–" if cell is None else
                             f"{_pct(cell['accuracy'])} ({_pct(cell['ci95'][0])}–{_pct(cell['ci95'][1])}), n={cell['n']}")
            lines.append(f"| ({key}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _order(k: str):
    import re

    m = re.match(r"(?:[<>]=?)?(\d+)", k)
    return (0, int(m.group(1)), k) if m else (1, 0, k)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = summary["conditions"]
    families = sorted({k for c in conds.values() for k in c["by_family"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 2.2]})
    keys = list(conds)
    colours = ["#4363d8", "#9db4f0", "#f58231", "#3cb44b"]
    means = [conds[k]["accuracy"] for k in keys]
    errs = [[m - conds[k]["ci95"][0] for k, m in zip(keys, means)], [conds[k]["ci95"][1] - m for k, m in zip(keys, means)]]
    axes[0].bar(range(len(keys)), means, yerr=errs, capsize=4, color=colours)
    axes[0].set_xticks(range(len(keys)), [f"({k})" for k in keys])
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("answer accuracy")
    axes[0].set_title("overall (95% CI over seeds)")
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        cells = [conds[k]["by_family"].get(f) for f in families]
        acc = [c["accuracy"] if c else 0 for c in cells]
        lo = [a - c["ci95"][0] if c else 0 for a, c in zip(acc, cells)]
        hi = [c["ci95"][1] - a if c else 0 for a, c in zip(acc, cells)]
        axes[1].bar([j + i * width for j in range(len(families))], acc, width, yerr=[lo, hi], capsize=2,
                    color=colours[i % len(colours)], label=f"({k}) {conds[k]['label']}")
    axes[1].set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(families))], families)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("by question family (Wilson 95% CI, pooled seeds)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
