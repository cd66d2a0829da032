"""Reports of the analyses: the JSON with every number, matplotlib figures and a short markdown summary."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_atomic

__all__ = ["write_focus_report", "fmt_ci", "plot_curves"]

COLOURS = ["#4363d8", "#f58231", "#3cb44b", "#911eb4", "#e6194b", "#42d4f4"]


def fmt_ci(cell: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    """`mean (lo–hi)` of a {"mean", "lo", "hi"} cell; '–' where a value is missing."""
    if not cell or cell.get("mean") is None:
        return "–"
    f = (lambda v: "?" if v is None else f"{v * scale:.{digits}f}")
    return f"{f(cell['mean'])} ({f(cell.get('lo'))}–{f(cell.get('hi'))})"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(ax, x, cells: dict[str, dict], title: str, ylabel: str | None = None, zero_line: bool = False):
    """One line with a CI band per {name: {"mean", "lo", "hi"}} over x."""
    import numpy as np

    for n, (name, cell) in enumerate(cells.items()):
        mean = np.array([np.nan if v is None else v for v in cell["mean"]], dtype=float)
        lo = np.array([np.nan if v is None else v for v in cell["lo"]], dtype=float)
        hi = np.array([np.nan if v is None else v for v in cell["hi"]], dtype=float)
        c = COLOURS[n % len(COLOURS)]
        ax.plot(x[: len(mean)], mean, color=c, label=name, lw=1.5)
        ax.fill_between(x[: len(mean)], lo, hi, color=c, alpha=0.2, lw=0)
    if zero_line:
        ax.axhline(0, color="black", lw=0.7)
    ax.set_title(title, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


FOCUS_PLOTS = [("visual", "visual attention (image + copies)"), ("image", "attention on image tokens"),
               ("ratio_visual", "box focus ratio (image + copies)"), ("ratio", "box focus ratio (image only)")]


def write_focus_report(result: dict, out: Path) -> None:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "focus.json", json.dumps(result, indent=1))
    plt = _pyplot()
    layers, conds = result["layers"], result["conditions"]
    bins = result["position_bins"]
    x_pos = (np.arange(bins) + 0.5) / bins
    for kind, key, x, xlabel in (("position", "by_position", x_pos, "position in trace (t / T)"),
                                 ("steps", "by_step", None, "generation step (tokens)")):
        fig, axes = plt.subplots(len(FOCUS_PLOTS), len(layers), figsize=(3.3 * len(layers), 2.4 * len(FOCUS_PLOTS)),
                                 squeeze=False)
        for r, (metric, title) in enumerate(FOCUS_PLOTS):
            for c, layer in enumerate(layers):
                cells = {label: cond["layers"][layer][metric][key] for label, cond in conds.items()}
                xs = x if x is not None else (np.arange(max(len(v["mean"]) for v in cells.values())) + 0.5) * \
                    result["step_bin"]
                plot_curves(axes[r][c], xs, cells, f"layer {layer}: {title}")
                if r == len(FOCUS_PLOTS) - 1:
                    axes[r][c].set_xlabel(xlabel, fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("mean over items, 95% bootstrap CI (items averaged over each condition's models)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / f"focus_{kind}.png", dpi=100)
        plt.close(fig)
    if result["comparisons"]:
        metrics = ("visual", "relevant_visual", "ratio_visual")
        fig, axes = plt.subplots(len(metrics), len(layers), figsize=(3.3 * len(layers), 2.4 * len(metrics)),
                                 squeeze=False)
        for r, metric in enumerate(metrics):
            for c, layer in enumerate(layers):
                cells = {name: comp["layers"][layer][metric]["by_position"]
                         for name, comp in result["comparisons"].items()}
                plot_curves(axes[r][c], x_pos, cells, f"layer {layer}: difference in {metric}", zero_line=True)
                if r == len(metrics) - 1:
                    axes[r][c].set_xlabel("position in trace (t / T)", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("paired difference over the same items, 95% bootstrap CI", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "focus_difference.png", dpi=100)
        plt.close(fig)
    write_atomic(out / "focus.md", focus_markdown(result))


def focus_markdown(result: dict) -> str:
    layers, conds = result["layers"], result["conditions"]
    lines = [f"# Focus decay: {result.get('items', '')}", "",
             f"Traces: {result.get('traces', 'generated')}. Late = normalised positions >= {result['late_from']}. "
             "Means over items with 95% bootstrap CIs; slope = per-item OLS slope of the value on t/T.", "",
             "| condition | models | items | accuracy | steps | copies/item |", "|---|---|---|---|---|---|"]
    for label, c in conds.items():
        acc = "–" if c["accuracy"] is None else f"{100 * c['accuracy']:.1f}%"
        steps, copies = c["mean_steps"], c["copies_per_item"]
        lines.append(f"| {label} | {len(c['models'])} | {c['n_items']} | {acc} | "
                     f"{'–' if steps is None else f'{steps:.0f}'} | {'–' if copies is None else f'{copies:.1f}'} |")
    lines += ["", "| condition | layer | late visual | late image | late ratio (visual) | slope of visual | "
                  "items decaying | late ratio (visual) -> right answer: AUC |", "|---|---|---|---|---|---|---|---|"]
    for label, c in conds.items():
        for layer in layers:
            m = c["layers"][layer]
            link = m["ratio_visual"]["accuracy_link"] or {}
            auc = "–" if "auc" not in link else f"{link['auc']:.2f} ({link['auc_ci'][0]:.2f}–{link['auc_ci'][1]:.2f})"
            share = m["visual"]["share_items_decaying"]
            lines.append(f"| {label} | {layer} | {fmt_ci(m['visual']['late'])} | {fmt_ci(m['image']['late'])} | "
                         f"{fmt_ci(m['ratio_visual']['late'], digits=2)} | {fmt_ci(m['visual']['slope'])} | "
                         f"{'–' if share is None else f'{100 * share:.0f}%'} | {auc} |")
    for name, comp in result["comparisons"].items():
        lines += ["", f"## {name} (paired, {comp['n_items']} items): late-trace differences", "",
                  "| layer | visual | image | relevant visual | ratio (visual) |", "|---|---|---|---|---|"]
        for layer in layers:
            m = comp["layers"][layer]
            lines.append(f"| {layer} | {fmt_ci(m['visual']['late'])} | {fmt_ci(m['image']['late'])} | "
                         f"{fmt_ci(m['relevant_visual']['late'])} | {fmt_ci(m['ratio_visual']['late'], digits=2)} |")
    lines += ["", "Figures: focus_position.png, focus_steps.png" +
              (", focus_difference.png" if result["comparisons"] else "") + "; every number: focus.json.", ""]
    return "\n".join(lines)
