"""Focus decay (`pointcopy analyze focus`): does a model keep attending to the evidence as its trace grows?

For every trace step t and analysed layer, head-averaged attention mass of the step's query (see `traces` for t):

    image            on all image tokens of the prompt
    relevant         on the image tokens inside the item's boxes (the merged cells the boxes overlap)
    copies           on the copied tokens written so far (pointer positions of the trace before t)
    relevant_copies  on those copies whose source cell is relevant
    visual           image + copies: a copy is visual evidence too, so a fair comparison counts it
    relevant_visual  relevant + relevant_copies
    ratio            the paper's (mean attention on box tokens / mean on all image tokens)
                     = (relevant / image) / (n_relevant / n_image);  1 = no preference for the box
    ratio_visual     the same over image tokens and copies: ((relevant + relevant_copies) / visual) / share

Per model: per-item curves, binned by normalised position (t / T, `POSITION_BINS` bins) and by absolute step
(`STEP_BIN` tokens per bin); per condition (models sharing a label are seeds): each item's curve averaged over
the seeds, then bootstrap 95% CIs over items; each item's decay slope (OLS of the value on t / T) with its CI; late
focus (mean over the last quarter of the trace) and its link to answering right (AUC and a logistic coefficient
per standard deviation, bootstrap CIs); and the matched comparison of each condition with the first one (paired
bootstrap over the items both analysed: difference curves and the late-focus difference).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import stats
from .attention import step_masses
from .probe import default_layers
from .run import RunOptions, analyse_models, paired_indices, rounded

__all__ = ["GROUPS", "METRICS", "focus_groups", "item_metrics", "run_focus", "aggregate"]

GROUPS = ("image", "relevant", "copies", "relevant_copies")
METRICS = ("image", "visual", "copies", "relevant", "relevant_visual", "ratio", "ratio_visual")
POSITION_BINS = 20
STEP_BIN = 16
LATE = 0.75  # late focus: normalised positions from here to the end
LINKED = ("visual", "relevant_visual", "ratio_visual")  # metrics whose late value is tested against correctness


def focus_groups(t) -> torch.Tensor:
    """(S, 4) key weights of a Traced over its whole sequence, in `GROUPS` order."""
    w = torch.zeros(len(t.ids), len(GROUPS))
    relevant = set(t.relevant_slots())
    for k, pos in enumerate(t.image_positions):
        w[pos, 0] = 1
        w[pos, 1] = float(k in relevant)
    for start, slots in t.copy_events():
        for j, k in enumerate(slots):
            pos = t.prompt_len + start + j
            w[pos, 2] = 1
            w[pos, 3] = float(k in relevant)
    return w


def item_metrics(row: dict, layer: str) -> dict[str, np.ndarray]:
    """`METRICS` of one stored item row at one layer, each (T,)."""
    m = {g: np.asarray(row["layers"][layer][g], dtype=float) for g in GROUPS}
    share = row["n_relevant"] / row["n_image"] if row["n_image"] else math.nan
    visual = m["image"] + m["copies"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (m["relevant"] / m["image"]) / share if row["n_relevant"] else np.full_like(visual, np.nan)
        ratio_v = ((m["relevant"] + m["relevant_copies"]) / visual) / share if row["n_relevant"] else \
            np.full_like(visual, np.nan)
    out = {"image": m["image"], "visual": visual, "copies": m["copies"], "relevant": m["relevant"],
           "relevant_visual": m["relevant"] + m["relevant_copies"], "ratio": ratio, "ratio_visual": ratio_v}
    return {k: out[k] for k in METRICS}


def _summarise(layers):
    def summarise(batch, model, processor, info):
        use = layers or default_layers(info.num_layers)
        masses = step_masses(model, processor, batch, use, focus_groups)
        rows = []
        for t, m in zip(batch, masses):
            rows.append({
                "id": t.item.id, "steps": t.steps, "finished": t.finished, "correct": t.item.correct(t.text, t.slot_map),
                "n_image": len(t.image_positions), "n_relevant": len(t.relevant_slots()),
                "n_copies": sum(len(s) for _, s in t.copy_events()),
                "layers": {str(layer): {g: rounded(v[:, j]) for j, g in enumerate(GROUPS)} for layer, v in m.items()},
            })
        return rows
    return summarise


# ---- curves and statistics --------------------------------------------------------------------------------------
def _binned_mean(values: np.ndarray, idx: np.ndarray, n_bins: int) -> np.ndarray:
    ok = np.isfinite(values) & (idx < n_bins)
    total = np.bincount(idx[ok], weights=values[ok], minlength=n_bins)[:n_bins]
    count = np.bincount(idx[ok], minlength=n_bins)[:n_bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def position_curve(values: np.ndarray, bins: int = POSITION_BINS) -> np.ndarray:
    """(T,) -> (bins,): mean of the steps whose normalised position t / T falls in each bin (NaN if none)."""
    idx = np.minimum((np.arange(len(values)) * bins) // max(len(values), 1), bins - 1)
    return _binned_mean(values, idx, bins)


def step_curve(values: np.ndarray, n_bins: int, width: int = STEP_BIN) -> np.ndarray:
    """(T,) -> (n_bins,): mean per block of `width` absolute steps (NaN past the trace's end)."""
    return _binned_mean(values, np.arange(len(values)) // width, n_bins)


def late_value(values: np.ndarray, late: float = LATE) -> float:
    start = int(math.floor(late * len(values)))
    tail = values[start:]
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if tail.size else math.nan


def _ci(values) -> dict:
    mean, lo, hi = stats.bootstrap_mean_ci(values)
    return {"mean": _list(mean), "lo": _list(lo), "hi": _list(hi)}


def _list(a):
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return None if not np.isfinite(a) else float(f"{float(a):.6g}")
    return [None if not np.isfinite(v) else float(f"{v:.6g}") for v in a]


def aggregate(runs, items_order: list[str]) -> dict:
    """Statistics of `ModelRun`s (see the module docstring): {"conditions": ..., "comparisons": ...}."""
    by_label: dict[str, list] = {}
    for r in runs:
        by_label.setdefault(r.spec.label, []).append(r)
    layers = sorted({layer for r in runs for row in r.rows.values() for layer in row["layers"]}, key=int)
    max_steps = max((row["steps"] for r in runs for row in r.rows.values()), default=0)
    n_step_bins = math.ceil(max_steps / STEP_BIN)
    conditions, item_level = {}, {}
    for label, group in by_label.items():
        ids = [i for i in items_order if all(i in r.rows for r in group)]
        cond = {"models": [r.name for r in group], "n_items": len(ids), "layers": {},
                "accuracy": _accuracy(group, ids), "mean_steps": _list(np.mean([[r.rows[i]["steps"] for i in ids]
                                                                                  for r in group]) if ids else np.nan),
                "copies_per_item": _list(np.mean([[r.rows[i]["n_copies"] for i in ids] for r in group]) if ids
                                         else np.nan)}
        item_level[label] = {"ids": ids, "layers": {}}
        for layer in layers:
            per_metric, levels = {}, {}
            shape = (len(METRICS), len(group), len(ids))
            pos_all, steps_all = np.full((*shape, POSITION_BINS), np.nan), np.full((*shape, max(n_step_bins, 1)), np.nan)
            late_all, slope_all = np.full(shape, np.nan), np.full(shape, np.nan)
            neg_all = np.zeros(shape, dtype=bool)
            for s, r in enumerate(group):
                for n, i in enumerate(ids):
                    for k, v in enumerate(item_metrics(r.rows[i], layer).values()):
                        pos_all[k, s, n] = position_curve(v)
                        steps_all[k, s, n] = step_curve(v, max(n_step_bins, 1))
                        late_all[k, s, n] = late_value(v)
                        b, lo, hi = stats.ols_slope(np.arange(len(v)) / len(v), v)
                        slope_all[k, s, n] = b
                        neg_all[k, s, n] = np.isfinite(hi) and hi < 0
            for k, metric in enumerate(METRICS):
                pos, steps, late, slope, slope_neg = pos_all[k], steps_all[k], late_all[k], slope_all[k], neg_all[k]
                with np.errstate(invalid="ignore"):
                    pos_i, steps_i = _seed_mean(pos), _seed_mean(steps)
                    late_i, slope_i = _seed_mean(late), _seed_mean(slope)
                levels[metric] = {"position": pos_i, "late": late_i}
                per_metric[metric] = {
                    "by_position": _ci(pos_i), "by_step": _ci(steps_i),
                    "by_position_per_seed": [_list(np.nanmean(p, axis=0)) if len(ids) else [] for p in pos],
                    "late": _ci(late_i), "slope": _ci(slope_i),
                    "share_items_decaying": _list(slope_neg.mean()) if slope_neg.size else None,
                    "accuracy_link": _accuracy_link(late_i, _correct(group, ids)) if metric in LINKED else None,
                }
            cond["layers"][layer] = per_metric
            item_level[label]["layers"][layer] = levels
        conditions[label] = cond
    labels = list(by_label)
    comparisons = {}
    for other in labels[1:]:
        comparisons[f"{labels[0]} - {other}"] = _compare(item_level[labels[0]], item_level[other], layers)
    return {"layers": layers, "position_bins": POSITION_BINS, "step_bin": STEP_BIN, "late_from": LATE,
            "conditions": conditions, "comparisons": comparisons}


def _seed_mean(a: np.ndarray) -> np.ndarray:
    """(seeds, items, ...) -> (items, ...): each item's value averaged over the condition's models."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(a, axis=0)


def _correct(group, ids) -> np.ndarray:
    """Per item: share of the condition's models that answered right (NaN if the items have no answer)."""
    vals = [[r.rows[i]["correct"] for i in ids] for r in group]
    out = np.full(len(ids), np.nan)
    for n in range(len(ids)):
        known = [v[n] for v in vals if v[n] is not None]
        if known:
            out[n] = float(np.mean(known))
    return out


def _accuracy(group, ids):
    c = _correct(group, ids)
    return _list(np.nanmean(c)) if np.isfinite(c).any() else None


def _accuracy_link(late: np.ndarray, correct: np.ndarray) -> dict | None:
    """Does late focus predict a right answer? Items pooled over seeds by majority (right in most runs)."""
    ok = np.isfinite(late) & np.isfinite(correct)
    if ok.sum() < 10:
        return None
    x, y = late[ok], (correct[ok] > 0.5).astype(float)
    if y.min() == y.max():
        return {"n": int(ok.sum()), "note": "every item right or every item wrong: no link to estimate"}
    auc, lo, hi = stats.auc_ci(x, y)
    sd = float(np.std(x))
    logit = stats.logistic_ci((x - x.mean()) / sd, y) if sd > 0 else None
    return {"n": int(ok.sum()), "auc": _list(auc), "auc_ci": [_list(lo), _list(hi)],
            "logistic_coef_per_sd": None if logit is None else _list(logit["coef"]),
            "logistic_coef_ci": None if logit is None else [_list(v) for v in logit["coef_ci"]]}


def _compare(a: dict, b: dict, layers) -> dict:
    """Paired differences a - b over the items both conditions analysed."""
    common, ia, ib = paired_indices(a["ids"], b["ids"])
    out = {"n_items": len(common), "layers": {}}
    for layer in layers:
        out["layers"][layer] = {}
        for metric in METRICS:
            la, lb = a["layers"][layer][metric], b["layers"][layer][metric]
            curve = stats.paired_difference_ci(la["position"][ia], lb["position"][ib])
            late = stats.paired_difference_ci(la["late"][ia], lb["late"][ib])
            out["layers"][layer][metric] = {"by_position": dict(zip(("mean", "lo", "hi"), map(_list, curve))),
                                            "late": dict(zip(("mean", "lo", "hi"), map(_list, late)))}
    return out


# ---- the command ------------------------------------------------------------------------------------------------
def run_focus(opts: RunOptions, echo=print) -> dict | None:
    items, runs = analyse_models(opts, _summarise(opts.layers), analysis="focus", echo=echo)
    if runs is None:  # another rank's share: rank 0 writes the report
        return None
    result = aggregate(runs, [it.id for it in items])
    result["items"] = opts.items
    result["traces"] = opts.traces
    result["models"] = {r.name: r.summary() for r in runs}
    from .report import write_focus_report

    write_focus_report(result, Path(opts.out))
    return result

