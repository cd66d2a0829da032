"""`pointcopy analyze copy-use`: attention to copy tokens vs their source image tokens, by distance from the copy.

Runs the shipped tiny model (CPU, ~20 s in all)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from pointcopy.analysis import copy_use
from pointcopy.analysis.copy_use import BIN_SCHEME, EDGES, aggregate, bin_labels, bin_means, window_mean
from pointcopy.analysis.run import ModelRun, ModelSpec, RunOptions

MODEL = Path(__file__).resolve().parents[2] / "src" / "pointcopy" / "embedded" / "assets" / "shapes-tiny"


def _png(path: Path, size=(112, 84)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (40, 160, 90)).save(path)
    return path


# ---- (1) known masses: analysed layers attend uniformly --------------------------------------------------------
def _expected_item_curves(prompt_len, steps, events):
    """Hand model of uniform attention: the query of step t sees prompt_len + t keys, each with 1 / (prompt_len + t).
    copy_i: event i's pointers at trace indices start .. start+n-1 are keys once t > their index; source_i: its
    distinct slots, always visible. Binned per event, then averaged over the events reaching each bin."""
    t = np.arange(steps)
    keys = prompt_len + t
    per_event = []
    for start, slots in events:
        d = t - start
        cols = {"copy": np.clip(d, 0, len(slots)) / keys, "source": len(set(slots)) / keys}
        curves = {}
        for q, v in cols.items():
            out = []
            for lo, hi in zip(EDGES[:-1], EDGES[1:]):
                sel = (d >= lo) & (d < hi)
                out.append(v[sel].mean() if sel.any() else np.nan)
                if hi > d.max():
                    break
            curves[q] = np.array(out)
        curves["after_copy"] = cols["copy"][(d >= 1) & (d <= 16)].mean()
        curves["after_source"] = cols["source"][(d >= 1) & (d <= 16)].mean()
        per_event.append(curves)
    k = max(len(c["copy"]) for c in per_event)
    item = {}
    for q in ("copy", "source"):
        m = np.full((len(per_event), k), np.nan)
        for e, c in enumerate(per_event):
            m[e, : len(c[q])] = c[q]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a bin no event reaches stays NaN
            item[q] = np.nanmean(m, axis=0)
    return item, per_event


def test_uniform_attention_gives_the_hand_computed_masses_by_distance():
    """Catches: copy positions off by one (prompt_len - 1 + start: copy mass at d = 0, the pointing step), copy_i
    counting every copy instead of event i's (event 2's copy mass before d = 1 would be event 1's), source built from
    slot indices instead of image positions (the direct group check) or counting a repeated slot twice, columns of
    batch items mixed up under padding, distance measured from the event's end, and events averaged unequally."""
    import torch
    from PIL import Image

    from pointcopy.analysis.items import AnalysisItem
    from pointcopy.analysis.traces import load_model, traced

    model, processor, info = load_model(MODEL, threads=1)
    layers = [0, 3]
    for layer in layers:
        attn = model.model.language_model.layers[layer].self_attn
        with torch.no_grad():
            attn.q_proj.weight.zero_()
            attn.q_proj.bias.zero_()
    filler = processor.tokenizer.encode("a", add_special_tokens=False)[0]
    p = processor.copy_token_start

    def trace(length, events):
        ids = [filler] * length
        for start, slots in events:
            ids[start:start + len(slots)] = [p + k for k in slots]
        return ids

    image = Image.new("RGB", (112, 84), (200, 20, 20))
    specs = [(130, [(20, [3, 4]), (95, [7])]),  # two events; the second's window before holds the first
             (60, [(5, [5, 5, 2])])]  # shorter item (padded in the batch), a repeated slot
    batch = []
    for n, (length, events) in enumerate(specs):
        item = AnalysisItem(f"i{n}", "How many objects?", [(0, (0, 0, 10, 10))], [image])
        batch.append(traced(processor, item, trace(length, events)))
        assert batch[-1].copy_events() == events
    rows = copy_use._summarise(layers)(batch, model, processor, info)

    # uniform attention cannot tell which prompt keys a group holds: check them directly
    t = batch[0]
    w = copy_use.copy_use_groups(t)
    assert w.shape == (len(t.ids), 2 + 2 * 2)
    cols = [torch.nonzero(w[:, g]).flatten().tolist() for g in range(w.shape[1])]
    assert cols[0] == t.image_positions
    assert cols[1] == [t.prompt_len + 20, t.prompt_len + 21, t.prompt_len + 95]
    assert cols[2:] == [[t.prompt_len + 20, t.prompt_len + 21], [t.image_positions[3], t.image_positions[4]],
                        [t.prompt_len + 95], [t.image_positions[7]]]

    for t, row, (length, events) in zip(batch, rows, specs):
        assert row["events"] == [[s, slots] for s, slots in events]
        expected, per_event = _expected_item_curves(t.prompt_len, length, events)
        for layer in layers:
            got = row["layers"][str(layer)]
            for q in ("copy", "source"):
                np.testing.assert_allclose(np.array(got["curve"][q], dtype=float), expected[q], rtol=1e-4,
                                           atol=1e-7, err_msg=f"{row['id']} layer {layer} {q}")
            zero = int(np.searchsorted(EDGES, 0))  # the bin holding d = 0 alone
            assert got["curve"]["copy"][zero] == 0.0
            assert got["curve"]["copy"][zero + 1] == pytest.approx(
                np.mean([1 / (t.prompt_len + s + 1) for s, _ in events]), rel=1e-4)
            np.testing.assert_allclose(got["windows"]["copy"]["after"], [e["after_copy"] for e in per_event],
                                       rtol=1e-4)
            np.testing.assert_allclose(got["windows"]["source"]["after"], [e["after_source"] for e in per_event],
                                       rtol=1e-4)
            np.testing.assert_allclose(got["windows"]["source"]["point"],
                                       [len(set(slots)) / (t.prompt_len + s) for s, slots in events], rtol=1e-4)
            # context groups: every image token, every copy token written so far
            steps = np.arange(length)
            image_mass = len(t.image_positions) / (t.prompt_len + steps)
            assert got["windows"]["image"]["after"][0] == pytest.approx(
                image_mass[events[0][0] + 1: events[0][0] + 17].mean(), rel=1e-4)


# ---- (2) binning and averaging -----------------------------------------------------------------------------------
def test_distance_bins_and_window_means_match_hand_values():
    """Catches: bins that are not unit-wide near the copy, half-open edges shifted by one (d = 8 or d = 16 in the
    bin before), the window before the copy not starting at -64, NaN steps counted, inclusive window ends wrong."""
    labels = bin_labels(len(EDGES) - 1)

    def label(d):
        return labels[int(np.searchsorted(EDGES, d, side="right")) - 1]

    assert EDGES[0] == -64
    assert [label(d) for d in (-64, -57, -56, -17, -9, -8, -1, 0, 1, 7, 8, 9, 15, 16, 100, 1000)] == [
        "-64..-57", "-64..-57", "-56..-49", "-20..-17", "-10..-9", "-8", "-1", "0", "1", "7", "8..9", "8..9",
        "14..15", "16..19", "96..111", "896..1023"]
    v = np.array([9.0, 1.0, 2.0, 3.0, 4.0, 5.0, np.nan, 6.0])
    d = np.array([-65, -1, 0, 1, 8, 9, 10, 11])
    means = bin_means(v, d)
    got = {labels[b]: m for b, m in enumerate(means) if np.isfinite(m)}
    assert got == {"-1": 1.0, "0": 2.0, "1": 3.0, "8..9": 4.5, "10..11": 6.0}
    assert len(means) == int(np.searchsorted(EDGES, 11, side="right"))  # up to the last bin with a step only
    assert window_mean(v, d, 1, 16) == pytest.approx((3 + 4 + 5 + 6) / 4)
    assert window_mean(v, d, -16, 0) == pytest.approx(1.5)
    assert window_mean(v, d, 17, None) != window_mean(v, d, 17, None)  # NaN: no step there


def _approx(v):
    return pytest.approx(v, rel=1e-5, abs=1e-9)  # stored numbers keep 6 significant digits


def _row(item, events, curve_copy, curve_source, windows):
    n = len(curve_copy)
    curves = {"copy": curve_copy, "source": curve_source, "copies": [None] * n, "image": [None] * n}
    return {"id": item, "steps": 100, "events": [[10 * e, [e]] for e in range(events)], "bins": BIN_SCHEME,
            "bin_events": [1] * n, "layers": {"0": {"curve": curves, "windows": windows}}}


def _windows(copy_after, source_after, copy_later=None, source_later=None, approach=None, before=None,
             point=None):
    n = len(copy_after)
    none = [None] * n
    return {"copy": {"before": none, "approach": none, "point": none, "after": copy_after,
                     "later": copy_later or none},
            "source": {"before": before or none, "approach": approach or none, "point": point or none,
                       "after": source_after, "later": source_later or none}}


def test_aggregate_averages_events_then_seeds_then_items():
    """Catches: pooling events or seeds instead of averaging each item over its events and then over the seeds
    that analysed it (item A has 3 events in one seed and 1 in the other, item B is missing from a seed), NaN
    windows counted as 0, a copy share at d <= 0, and an unpaired comparison."""
    zero, one = int(np.searchsorted(EDGES, 0)), int(np.searchsorted(EDGES, 1))
    k = one + 1

    def curve(at0, at1):
        c = [None] * k
        c[zero], c[one] = at0, at1
        return c

    s1 = {"A": _row("A", 3, curve(0.0, 0.4), curve(0.2, 0.1),
                    _windows([0.3, 0.1, 0.2], [0.1, 0.2, 0.1], [0.05, None, 0.02], [0.01, None, 0.04],
                             approach=[0.2, 0.3, 0.1], before=[0.1, None, 0.1], point=[0.4, 0.5, 0.1])),
          "B": _row("B", 1, curve(0.0, 0.1), curve(0.3, 0.1), _windows([0.1], [0.3], approach=[0.3]))}
    s2 = {"A": _row("A", 1, curve(0.0, 0.2), curve(0.1, 0.3), _windows([0.5], [0.1], approach=[0.4], before=[0.2],
                                                                               point=[0.6]))}
    other = {"A": _row("A", 1, curve(0.0, 0.1), curve(0.1, 0.1), _windows([0.1], [0.1])),
             "B": _row("B", 1, curve(0.0, 0.2), curve(0.1, 0.2), _windows([0.2], [0.2]))}
    runs = [ModelRun(ModelSpec("copy", "a"), "copy-1", None, s1, [], 0.0),
            ModelRun(ModelSpec("copy", "b"), "copy-2", None, s2, [{"id": "B", "reason": "x"}], 0.0),
            ModelRun(ModelSpec("other", "c"), "other-1", None, other, [], 0.0)]
    result = aggregate(runs, ["A", "B"])
    cond = result["conditions"]["copy"]
    assert cond["n_items"] == 2 and cond["n_events"] == 5
    cell = cond["layers"]["0"]
    curves = cell["curves"]
    assert len(result["bins"]["edges"]) == k + 1
    assert curves["copy"]["mean"][one] == _approx((0.3 + 0.1) / 2)  # pooled would be 0.7 / 3
    assert curves["source"]["mean"][one] == _approx((0.2 + 0.1) / 2)
    assert curves["diff"]["mean"][one] == _approx((0.1 + 0.0) / 2)
    assert curves["share"]["mean"][one] == _approx((0.6 + 0.5) / 2)
    assert curves["share"]["mean"][zero] is None and curves["copy"]["mean"][zero] == 0.0
    assert curves["copy"]["n"][one] == 2
    s = cell["summary"]
    item_a = (np.mean([0.2, -0.1, 0.1]) + 0.4) / 2
    assert s["diff_after"]["mean"] == _approx((item_a + -0.2) / 2)
    assert s["copy_wins_after"]["mean"] == _approx(((2 / 3 + 1) / 2 + 0) / 2)
    assert s["diff_later"]["mean"] == _approx(0.01) and s["diff_later"]["n"] == 1
    assert s["copy_wins_later"]["mean"] == _approx(0.5)
    assert s["source_rise"]["mean"] == _approx((0.05 + 0.2) / 2) and s["source_rise"]["n"] == 1
    assert s["source_point_jump"]["mean"] == _approx((np.mean([0.2, 0.2, 0.0]) + 0.2) / 2)
    assert cell["pooled_events"]["after"] == {"events": 5, "copy_wins": 3, "share": 0.6}
    comp = result["comparisons"]["copy - other"]
    assert comp["n_items"] == 2
    assert comp["layers"]["0"]["diff_after"]["mean"] == _approx((item_a + -0.2) / 2)

    s1["A"]["bins"] = "8-token"
    with pytest.raises(ValueError, match="another --out"):
        aggregate(runs, ["A", "B"])


# ---- (3) traces without copies -----------------------------------------------------------------------------------
def _simple_items(path: Path, traces: dict[str, str]) -> Path:
    image = _png(path.parent / "img.png")
    with path.open("w") as fh:
        for rid, trace in traces.items():
            fh.write(json.dumps({"id": rid, "image": str(image), "question": "How many objects?",
                                 "box": [0, 0, 20, 20], "trace": trace}) + "\n")
    return path


def test_a_trace_without_copies_is_skipped_and_no_copy_at_all_is_an_error(tmp_path):
    """Catches: an item that copies nothing analysed (an empty event list breaks the curves) or silently dropped
    without a recorded reason; an all-no-copy run writing an empty report instead of saying why."""
    items = _simple_items(tmp_path / "items.jsonl", {
        "points": "The red one <|copy_3|><|copy_4|> is here, and " + "more text " * 6 + "<|copy_7|> done.",
        "text-only": "No pointer in this trace at all, just words and words."})
    out = tmp_path / "out"
    result = copy_use.run_copy_use(RunOptions(items=str(items), out=str(out), models=[ModelSpec("copy", str(MODEL))],
                                              traces="given", threads=1, progress=False), echo=lambda *a: None)
    assert result["conditions"]["copy"]["n_items"] == 1
    assert result["conditions"]["copy"]["n_events"] == 2
    skipped = [json.loads(x) for x in (out / "models" / "copy-1" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["field"]) for s in skipped] == [("text-only", "trace")]
    assert "copies nothing" in skipped[0]["reason"]
    analysed = [json.loads(x)["id"] for x in (out / "models" / "copy-1" / "items.jsonl").read_text().splitlines()]
    assert analysed == ["points"]

    none = _simple_items(tmp_path / "none.jsonl", {"a": "Only words here.", "b": "And no copy here either."})
    with pytest.raises(ValueError, match="copies nothing: copy-use needs a model that points"):
        copy_use.run_copy_use(RunOptions(items=str(none), out=str(tmp_path / "out2"),
                                         models=[ModelSpec("copy", str(MODEL))], traces="given", threads=1,
                                         progress=False), echo=lambda *a: None)
    assert not (tmp_path / "out2" / "copy_use.md").exists()


# ---- (4) the command end to end ------------------------------------------------------------------------------------
def test_command_on_the_shipped_model_writes_sane_outputs(tmp_path, capsys):
    """Catches: the CLI not reaching run_copy_use or the report files missing; masses outside [0, 1]; copy mass
    before the copy is visible (d <= 0) not exactly 0 (causality: wrong copy positions); no copy attention after
    it; the difference curve not copy - source; the report missing a layer's row; default layers not used."""
    from pointcopy.cli import main
    from pointcopy.data.shapes.build import build_split
    from pointcopy.data.shapes.scene import SceneConfig

    split = tmp_path / "test"
    build_split(split, 6, 2, config=SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True))
    out = tmp_path / "out"
    rc = main(["analyze", "copy-use", "--items", str(split), "--model", f"copy={MODEL}", "--out", str(out),
               "--no-progress", "--threads", "1", "--max-new-tokens", "400"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "# Copy use" in printed
    result = json.loads((out / "copy_use.json").read_text())
    assert result["layers"] == ["0", "2", "3"]  # default_layers(4): early, middle, last
    cond = result["conditions"]["copy"]
    assert cond["n_items"] >= 4 and cond["events_per_item"] >= 1
    edges = np.array(result["bins"]["edges"])
    assert edges[0] == -64 and len(result["bins"]["x"]) == len(edges) - 1
    before = edges[1:] <= 1  # bins with every d <= 0
    for layer in result["layers"]:
        curves = cond["layers"][layer]["curves"]
        copy = np.array([np.nan if v is None else v for v in curves["copy"]["mean"]])
        source = np.array([np.nan if v is None else v for v in curves["source"]["mean"]])
        diff = np.array([np.nan if v is None else v for v in curves["diff"]["mean"]])
        ok = np.isfinite(copy)
        assert ok.sum() > 20
        assert ((copy[ok] >= 0) & (copy[ok] <= 1) & (source[ok] >= 0) & (source[ok] <= 1)).all()
        assert (copy[before & ok] == 0).all()
        assert (source[before & ok] > 0).all()
        np.testing.assert_allclose(diff[ok], copy[ok] - source[ok], atol=2e-6)
        summary = cond["layers"][layer]["summary"]
        assert summary["copy_after"]["mean"] > 0
        assert summary["copy_after"]["lo"] <= summary["copy_after"]["mean"] <= summary["copy_after"]["hi"]
        assert 0 <= summary["copy_wins_after"]["mean"] <= 1
    md = (out / "copy_use.md").read_text()
    assert all(f"| copy | {layer} |" in md for layer in result["layers"])
    png = (out / "copy_use.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
