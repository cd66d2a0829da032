"""Copy use (`pointcopy analyze copy-use`): once a model has copied image tokens, does it read the copies or the
originals? (the paper's Fig. 5, measured with CIs).

A copy event is a run of consecutive pointer tokens (`Traced.copy_events()`: trace index `start` of its first
pointer, the slots it copies). For every event i, at every trace step t and analysed layer, the head-averaged
attention mass of the step's query (see `traces` for t) summed over two key groups:

    copy      event i's copy tokens: sequence positions prompt_len + start + j, j = 0 .. n-1
    source    the image tokens it copied: `image_positions[slot]` of its (distinct) slots

and, as context, on all copy tokens of the trace (`copies`) and all image tokens (`image`). Steps are keyed by the
distance d = t - start from the event: d = 0 is the query that points (it produces the first pointer), d = 1 the
first that can see a copy (copy mass is 0 for d <= 0 by causality), negative d before the event (from -`BEFORE`).

Distance bins (`EDGES`, fixed, so per-item rows stay comparable across runs): one token wide for -8 <= d <= 7, then
quarter-octaves (8, 10, 12, 14, 16, 20, ..., 64, 80, ...): fine near the copy, ~4 bins per doubling beyond, so a
150-token shapes trace and a 4000-token real one both get readable curves; the report keeps bins up to the
longest distance seen. An event's value in a bin is the mean over its steps there; an item's value is the mean
over its events that reach the bin (`bin_events` counts them); per condition (models sharing a label are seeds),
each item's value is averaged over the seeds that analysed it, then bootstrap 95% CIs over items.

Per layer: curves of copy, source, copy - source and copy share (copy / (copy + source), 0.5 = balanced; d >= 1
only), and window summaries (`WINDOWS`, d inclusive): copy, source and copy - source right after the copy
(d 1..16) and later (d >= 17), the share of events whose copy mass beats their source mass there, and how source
attention moves before the copy: `source_rise` = source mass at d -16..-1 minus at d -64..-17, `source_point_jump`
= at d = 0 (the pointing step) minus at d -16..-1 (per event, then averaged as above). Masses are sums over a
fixed set of keys, so they dilute slowly as the sequence grows: a fall over tens of tokens is partly that. Conditions
after the first are compared with it, paired over the items both analysed.

Per-item rows hold the event-averaged binned curves and the per-event window means (compact for long traces).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import stats
from .attention import step_masses
from .probe import default_layers
from .run import json_num as _num, json_nums as _nums
from .run import RunOptions, analyse_models, paired_indices, write_report

__all__ = ["BEFORE", "EDGES", "BIN_SCHEME", "QUANTITIES", "WINDOWS", "copy_use_groups", "bin_means",
           "window_mean", "event_summaries", "item_row", "item_values", "aggregate", "run_copy_use",
           "write_copy_use_report", "plot_copy_use", "copy_use_markdown"]

BEFORE = 64  # steps before an event that are kept (source attention may rise before the copy)
QUANTITIES = ("copy", "source", "copies", "image")
WINDOWS = {"before": (-BEFORE, -17), "approach": (-16, -1), "point": (0, 0), "after": (1, 16),
           "later": (17, None)}  # d, inclusive
BIN_SCHEME = "unit<=8,quarter-octave;before=64;windows=v2"
NO_COPY_REASON = "copies nothing"


def _quarter_octaves(limit: int) -> list[int]:
    """0, 1, ..., 8, then 4 equal bins per doubling: 10, 12, 14, 16, 20, 24, 28, 32, 40, ... up to >= limit."""
    edges, width = list(range(9)), 2
    while edges[-1] < limit:
        for _ in range(4):
            edges.append(edges[-1] + width)
        width *= 2
    return edges


_POS = _quarter_octaves(1 << 17)
EDGES = np.array([-e for e in reversed(_POS) if 1 <= e <= BEFORE] + _POS, dtype=np.int64)  # bin b = [E[b], E[b+1])


def bin_x(n_bins: int) -> np.ndarray:
    """Plot position of bins 0 .. n_bins - 1: the mean distance d they hold."""
    return (EDGES[:n_bins] + EDGES[1:n_bins + 1] - 1) / 2.0


def bin_labels(n_bins: int) -> list[str]:
    return [str(a) if b == a + 1 else f"{a}..{b - 1}" for a, b in zip(EDGES[:n_bins], EDGES[1:n_bins + 1])]


# ---- per item --------------------------------------------------------------------------------------------------
def copy_use_groups(t) -> torch.Tensor:
    """(S, 2 + 2E) key weights of a Traced: image, copies, then copy_i, source_i for each copy event i."""
    events = t.copy_events()
    w = torch.zeros(len(t.ids), 2 + 2 * len(events))
    for pos in t.image_positions:
        w[pos, 0] = 1
    for i, (start, slots) in enumerate(events):
        for j, slot in enumerate(slots):
            pos = t.prompt_len + start + j
            w[pos, 1] = 1
            w[pos, 2 + 2 * i] = 1
            w[t.image_positions[slot], 3 + 2 * i] = 1
    return w


def bin_means(values: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Mean of `values` per distance bin (`EDGES`), bins 0 .. the last with a step; NaN for a bin with none.
    Steps before -BEFORE (or with a NaN value) are left out."""
    values = np.asarray(values, dtype=float)
    d = np.asarray(d)
    keep = (d >= EDGES[0]) & (d < EDGES[-1]) & np.isfinite(values)
    idx = np.searchsorted(EDGES, d[keep], side="right") - 1
    if not idx.size:
        return np.zeros(0)
    n = int(idx.max()) + 1
    sums = np.bincount(idx, weights=values[keep], minlength=n)
    counts = np.bincount(idx, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def window_mean(values: np.ndarray, d: np.ndarray, lo: int, hi: int | None) -> float:
    """Mean of `values` over steps with lo <= d <= hi (hi None: no upper end); NaN if there is none."""
    sel = (d >= lo) if hi is None else (d >= lo) & (d <= hi)
    v = np.asarray(values, dtype=float)[sel]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def event_summaries(masses: np.ndarray, events: list[tuple[int, list[int]]]) -> dict:
    """One layer of one item: `masses` (T, 2 + 2E) in `copy_use_groups` order ->
    {"curve": {q: (K,) mean over events per bin}, "bin_events": (K,) events per bin,
     "windows": {q: {w: (E,) per event}}}."""
    steps = masses.shape[0]
    per_q: dict[str, list[np.ndarray]] = {q: [] for q in QUANTITIES}
    windows = {q: {w: [] for w in WINDOWS} for q in QUANTITIES}
    for i, (start, _slots) in enumerate(events):
        d = np.arange(steps) - start
        cols = {"copy": masses[:, 2 + 2 * i], "source": masses[:, 3 + 2 * i], "copies": masses[:, 1],
                "image": masses[:, 0]}
        for q in QUANTITIES:
            per_q[q].append(bin_means(cols[q], d))
            for w, (lo, hi) in WINDOWS.items():
                windows[q][w].append(window_mean(cols[q], d, lo, hi))
    k = max((len(c) for c in per_q["copy"]), default=0)
    curve, count = {}, np.zeros(k, dtype=int)
    for q in QUANTITIES:
        padded = np.full((len(events), k), np.nan)
        for e, c in enumerate(per_q[q]):
            padded[e, : len(c)] = c
        if q == "copy":
            count = np.isfinite(padded).sum(axis=0)
        curve[q] = _nanmean(padded, axis=0) if len(events) else np.zeros(0)
    return {"curve": curve, "bin_events": count, "windows": windows}


def item_row(t, masses: dict[int, np.ndarray]) -> dict:
    """The stored summary of one Traced given its `step_masses` ({layer: (T, 2 + 2E)})."""
    events = t.copy_events()
    row = {"id": t.item.id, "steps": t.steps, "finished": t.finished, "correct": t.item.correct(t.text, t.slot_map),
           "n_image": len(t.image_positions), "bins": BIN_SCHEME,
           "events": [[start, list(slots)] for start, slots in events], "layers": {}}
    for layer, m in masses.items():
        s = event_summaries(m, events)
        row["bin_events"] = [int(c) for c in s["bin_events"]]
        row["layers"][str(layer)] = {
            "curve": {q: _nums(v) for q, v in s["curve"].items()},
            "windows": {q: {w: _nums(v) for w, v in ws.items()} for q, ws in s["windows"].items()},
        }
    return row


def _summarise(layers):
    def summarise(batch, model, processor, info):
        use = layers or default_layers(info.num_layers)
        masses = step_masses(model, processor, batch, use, copy_use_groups)
        return [item_row(t, m) for t, m in zip(batch, masses)]
    return summarise


# ---- statistics ------------------------------------------------------------------------------------------------
def _nanmean(a, axis=0):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(np.asarray(a, dtype=float), axis=axis)


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _ci(values) -> dict:
    v = np.asarray(values, dtype=float)
    mean, lo, hi = stats.bootstrap_mean_ci(v)
    n = np.isfinite(v).sum(axis=0)
    if v.ndim == 1:
        return {"mean": _num(mean), "lo": _num(lo), "hi": _num(hi), "n": int(n)}
    return {"mean": _nums(mean), "lo": _nums(lo), "hi": _nums(hi), "n": [int(c) for c in n]}


def _diff_ci(a, b) -> dict:
    mean, lo, hi = stats.paired_difference_ci(a, b)
    n = (np.isfinite(np.asarray(a, float)) & np.isfinite(np.asarray(b, float))).sum(axis=0)
    if np.ndim(mean) == 0:
        return {"mean": _num(mean), "lo": _num(lo), "hi": _num(hi), "n": int(n)}
    return {"mean": _nums(mean), "lo": _nums(lo), "hi": _nums(hi), "n": [int(c) for c in n]}


def _share(copy: np.ndarray, source: np.ndarray, n_bins: int) -> np.ndarray:
    """copy / (copy + source) per item and bin; NaN for d <= 0 (no copy visible yet) and where both are 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        s = copy / (copy + source)
    s = np.where(copy + source > 0, s, np.nan)
    s[..., EDGES[:n_bins] < 1] = np.nan
    return s


def event_level(row: dict, layer: str) -> dict[str, np.ndarray]:
    """Per event of one row at one layer: window means (copy_after, source_after, ...) and the derived values."""
    w = row["layers"][layer]["windows"]
    out = {f"{q}_{name}": _arr(w[q][name]) for q in ("copy", "source") for name in WINDOWS}
    for name in ("after", "later"):
        c, s = out[f"copy_{name}"], out[f"source_{name}"]
        out[f"diff_{name}"] = c - s
        out[f"copy_wins_{name}"] = np.where(np.isfinite(c) & np.isfinite(s), (c > s).astype(float), np.nan)
    out["source_rise"] = out["source_approach"] - out["source_before"]
    out["source_point_jump"] = out["source_point"] - out["source_approach"]
    return out


SUMMARIES = ("copy_after", "source_after", "diff_after", "copy_wins_after", "copy_later", "source_later",
             "diff_later", "copy_wins_later", "source_before", "source_approach", "source_point", "source_rise",
             "source_point_jump")
CURVES = ("copy", "source", "diff", "share", "copies", "image")


def item_values(group, ids: list[str], layer: str, n_bins: int) -> dict[str, np.ndarray]:
    """Item-level values of a condition at one layer: curves (items, n_bins) and summaries (items,), each item's
    value the mean over its events, then over the condition's models (seeds) that analysed it."""
    curves = {q: np.full((len(group), len(ids), n_bins), np.nan) for q in QUANTITIES}
    summ = {k: np.full((len(group), len(ids)), np.nan) for k in SUMMARIES}
    for s, run in enumerate(group):
        for n, i in enumerate(ids):
            row = run.rows.get(i)
            if row is None or layer not in row["layers"]:
                continue
            for q in QUANTITIES:
                c = _arr(row["layers"][layer]["curve"][q])[:n_bins]
                curves[q][s, n, : len(c)] = c
            ev = event_level(row, layer)
            for k in SUMMARIES:
                summ[k][s, n] = _nanmean(ev[k]) if ev[k].size else np.nan
    out = {q: _nanmean(v, axis=0) for q, v in curves.items()}
    out["diff"] = out["copy"] - out["source"]
    out["share"] = _share(out["copy"], out["source"], n_bins)
    out.update({k: _nanmean(v, axis=0) for k, v in summ.items()})
    return out


def aggregate(runs, items_order: list[str]) -> dict:
    """Statistics of `ModelRun`s (see the module docstring): {"conditions", "comparisons", "bins", ...}."""
    rows = [row for r in runs for row in r.rows.values()]
    stale = sorted({row.get("bins") for row in rows} - {BIN_SCHEME}, key=str)
    if stale:
        raise ValueError(f"stored copy-use rows were binned as {stale[0]!r}, not {BIN_SCHEME!r}: use another --out")
    layers = sorted({layer for row in rows for layer in row["layers"]}, key=int)
    n_bins = max((len(row["layers"][layer]["curve"]["copy"]) for row in rows for layer in row["layers"]), default=0)
    by_label: dict[str, list] = {}
    for r in runs:
        by_label.setdefault(r.spec.label, []).append(r)
    conditions, item_level = {}, {}
    for label, group in by_label.items():
        ids = [i for i in items_order if any(i in r.rows for r in group)]
        n_events = sum(len(r.rows[i]["events"]) for r in group for i in ids if i in r.rows)
        analysed = sum(1 for r in group for i in ids if i in r.rows)
        cond = {"models": [r.name for r in group], "n_items": len(ids), "n_events": n_events,
                "events_per_item": _num(n_events / analysed) if analysed else None,
                "mean_steps": _num(np.mean([r.rows[i]["steps"] for r in group for i in ids if i in r.rows]))
                if analysed else None,
                "skipped": {r.name: len(r.skipped) for r in group}, "layers": {}}
        item_level[label] = {"ids": ids, "layers": {}}
        for layer in layers:
            v = item_values(group, ids, layer, n_bins)
            item_level[label]["layers"][layer] = v
            cell = {"curves": {q: _ci(v[q]) for q in CURVES},
                    "summary": {k: _ci(v[k]) for k in SUMMARIES},
                    "pooled_events": _pooled(group, ids, layer)}
            cond["layers"][layer] = cell
        conditions[label] = cond
    labels = [lab for lab in by_label if conditions[lab]["n_items"]]
    comparisons = {}
    for other in labels[1:]:
        comparisons[f"{labels[0]} - {other}"] = _compare(item_level[labels[0]], item_level[other], layers)
    return {"layers": layers, "before": BEFORE, "windows": {k: list(v) for k, v in WINDOWS.items()},
            "bins": {"scheme": BIN_SCHEME, "edges": [int(e) for e in EDGES[: n_bins + 1]],
                     "x": _nums(bin_x(n_bins)), "labels": bin_labels(n_bins)},
            "conditions": conditions, "comparisons": comparisons}


def _pooled(group, ids, layer) -> dict:
    """Events pooled over items and seeds: how many have a copy mass above their source mass (no CI: events of one
    item are not independent; the item-level `copy_wins_*` carry the CI)."""
    out = {}
    for name in ("after", "later"):
        wins = [event_level(r.rows[i], layer)[f"copy_wins_{name}"] for r in group for i in ids
                if i in r.rows and layer in r.rows[i]["layers"]]
        wins = np.concatenate(wins) if wins else np.zeros(0)
        wins = wins[np.isfinite(wins)]
        out[name] = {"events": int(wins.size), "copy_wins": int(wins.sum()),
                     "share": _num(wins.mean()) if wins.size else None}
    return out


def _compare(a: dict, b: dict, layers) -> dict:
    """Paired differences a - b over the items both conditions analysed."""
    common, ia, ib = paired_indices(a["ids"], b["ids"])
    out = {"n_items": len(common), "layers": {}}
    for layer in layers:
        la, lb = a["layers"][layer], b["layers"][layer]
        out["layers"][layer] = {
            "diff_curve": _diff_ci(la["diff"][ia], lb["diff"][ib]) if common else None,
            **{k: _diff_ci(la[k][ia], lb[k][ib]) if common else None
               for k in ("diff_after", "diff_later", "copy_wins_after", "copy_wins_later", "source_rise",
                         "source_point_jump")}}
    return out


# ---- the command -----------------------------------------------------------------------------------------------
def run_copy_use(opts: RunOptions, echo=print) -> dict | None:
    items, runs = analyse_models(opts, _summarise(opts.layers), analysis="copy-use", echo=echo, needs_copies=True)
    if runs is None:  # another rank's share: rank 0 writes the report
        return None
    if not any(r.rows for r in runs):
        names = ", ".join(f"{r.name} ({r.spec.path})" for r in runs)
        reasons = [s.get("reason", "") for r in runs for s in r.skipped]
        no_copy = sum(NO_COPY_REASON in str(x) for x in reasons)
        if no_copy:
            raise ValueError(f"no item to analyse: every trace of {names} copies nothing: copy-use needs a model "
                             f"that points (a copy-trained checkpoint, --pointing auto or on); {no_copy} of "
                             f"{len(reasons)} skipped items have no pointer token")
        raise ValueError(f"no item to analyse with {names}: " + "; ".join(sorted(set(reasons))[:3]))
    result = aggregate(runs, [it.id for it in items])
    result["items"] = opts.items
    result["traces"] = opts.traces
    result["models"] = {r.name: r.summary() for r in runs}
    write_copy_use_report(result, Path(opts.out))
    return result



# ---- report ----------------------------------------------------------------------------------------------------
def write_copy_use_report(result: dict, out: Path) -> None:
    write_report(out, "copy_use", result, plot_copy_use, copy_use_markdown)


TICKS = (-64, -16, -4, 0, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


def plot_copy_use(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import plot_curves

    layers = result["layers"]
    x = np.array([np.nan if v is None else v for v in result["bins"]["x"]], dtype=float)
    conds = {label: c for label, c in result["conditions"].items() if c["n_items"]}
    rows = [("masses", "attention mass"), ("diff", "copy - source")]
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(3.6 * len(layers), 2.8 * len(rows)), squeeze=False)
    for c, layer in enumerate(layers):
        for r, (kind, ylabel) in enumerate(rows):
            ax = axes[r][c]
            if kind == "masses":
                cells = {}
                for label, cond in conds.items():
                    prefix = f"{label}: " if len(conds) > 1 else ""
                    cells[prefix + "copy"] = cond["layers"][layer]["curves"]["copy"]
                    cells[prefix + "source"] = cond["layers"][layer]["curves"]["source"]
                plot_curves(ax, x, cells, f"layer {layer}: copy vs its source image tokens",
                            ylabel if c == 0 else None)
            else:
                cells = {label: cond["layers"][layer]["curves"]["diff"] for label, cond in conds.items()}
                plot_curves(ax, x, cells, f"layer {layer}: copy - source", ylabel if c == 0 else None,
                            zero_line=True)
                ax.set_xlabel("distance from the copy (tokens, symlog)", fontsize=8)
            ax.set_xscale("symlog", linthresh=8)
            finite = x[np.isfinite(x)]
            ticks = [t for t in TICKS if finite.size and EDGES[0] <= t <= finite.max() + 1]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.axvline(0.5, color="grey", lw=0.7, ls="--")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("summed attention on one copy event's tokens vs the image tokens it copied; mean over items, "
                 "95% bootstrap CI (dashed: the copy becomes visible)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def copy_use_markdown(result: dict) -> str:
    from .report import fmt_ci

    layers, conds = result["layers"], result["conditions"]

    def pct(cell):
        return fmt_ci(cell, scale=100, digits=0).replace(" (", "% (") if cell and cell.get("mean") is not None \
            else "–"

    lines = [f"# Copy use: {result.get('items', '')}", "",
             f"Traces: {result.get('traces', 'generated')}. For each copy event (a run of pointer tokens), the "
             "summed, head-averaged attention of each later step on the event's copy tokens (**copy**) and on the "
             "image tokens it copied (**source**), by distance d from the event (d = 0 points, d = 1 is the first "
             "step that sees the copy). Each item's value is the mean over its events (and the condition's models); "
             "means over items with 95% bootstrap CIs. `after` = d 1..16, `later` = d >= 17; `copy wins` = share "
             "of events whose copy mass beats their source mass; `source rise` = source mass at d -16..-1 minus at "
             "d -64..-17, `source at pointing` = at d = 0 (the step that points) minus at d -16..-1 (positive: the "
             "model looks at the originals as it copies them).", "",
             "| condition | models | items | events/item | steps |", "|---|---|---|---|---|"]
    for label, c in conds.items():
        lines.append(f"| {label} | {len(c['models'])} | {c['n_items']} | {c['events_per_item'] or '–'} | "
                     f"{c['mean_steps'] or '–'} |")
    lines += ["", "| condition | layer | copy, after | source, after | copy - source, after | copy wins, after | "
                  "copy - source, later | copy wins, later | source rise | source at pointing |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for label, c in conds.items():
        if not c["n_items"]:
            continue
        for layer in layers:
            s = c["layers"][layer]["summary"]
            lines.append(f"| {label} | {layer} | {fmt_ci(s['copy_after'], digits=4)} | "
                         f"{fmt_ci(s['source_after'], digits=4)} | {fmt_ci(s['diff_after'], digits=4)} | "
                         f"{pct(s['copy_wins_after'])} | {fmt_ci(s['diff_later'], digits=4)} | "
                         f"{pct(s['copy_wins_later'])} | {fmt_ci(s['source_rise'], digits=4)} | "
                         f"{fmt_ci(s['source_point_jump'], digits=4)} |")
    for name, comp in result["comparisons"].items():
        lines += ["", f"## {name} (paired, {comp['n_items']} items)", "",
                  "| layer | copy - source, after | copy - source, later | copy wins, after | source rise | "
                  "source at pointing |", "|---|---|---|---|---|---|"]
        for layer in layers:
            m = comp["layers"][layer]
            lines.append(f"| {layer} | {fmt_ci(m['diff_after'], digits=4)} | {fmt_ci(m['diff_later'], digits=4)} | "
                         f"{pct(m['copy_wins_after'])} | {fmt_ci(m['source_rise'], digits=4)} | "
                         f"{fmt_ci(m['source_point_jump'], digits=4)} |")
    empty = [label for label, c in conds.items() if not c["n_items"]]
    if empty:
        lines += ["", f"No item with a copy for: {', '.join(empty)} (their traces copy nothing)."]
    lines += ["", "How to read: copy - source > 0 right after the copy means the model reads the copy rather than "
                  "the originals; near 0 later or in the last layer means balanced use. Curves by distance: "
                  "copy_use.png (top: both masses, bottom: their difference); every number, per-bin item counts "
                  "and the copy share copy / (copy + source): copy_use.json.", ""]
    return "\n".join(lines)
