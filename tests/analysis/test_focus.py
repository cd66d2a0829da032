"""`pointcopy analyze focus` end to end with the shipped shapes-tiny model: bad items are recorded and skipped, a
run killed with SIGKILL resumes without losing or repeating an item, and the statistics it writes are sane."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pointcopy.analysis.focus import METRICS, POSITION_BINS, run_focus
from pointcopy.analysis.items import ItemError, load_items
from pointcopy.analysis.run import ModelSpec, RunOptions

SHAPES_TINY = Path(__file__).resolve().parents[2] / "src" / "pointcopy" / "embedded" / "assets" / "shapes-tiny"
N_ITEMS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from pointcopy.data.shapes.build import build_split
    from pointcopy.data.shapes.scene import SceneConfig

    out = tmp_path_factory.mktemp("focus") / "test"
    build_split(out, N_ITEMS, seed=5, config=SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True),
                progress=False)
    return out


def _rows(path: Path) -> list[dict]:
    """Complete lines of a JSONL file (a torn last line, from a killed writer, is not one)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def _complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------------------------------------------ bad items


def test_bad_items_are_errors_naming_item_and_field_and_a_run_records_them(split, tmp_path, capsys):
    # Catches a bad item that raises (stopping the whole load or run) or is dropped silently, an error that names
    # the wrong field, a box check that misses an overhanging or empty box, and a run that loses the load-time
    # errors instead of writing them to skipped.jsonl.
    from PIL import Image

    from pointcopy.cli import main
    from pointcopy.data.shapes.build import read_items

    row = read_items(split)[0]
    image = tmp_path / "scene.png"
    shutil.copy(split / "images" / f"{row['id']}.png", image)
    w, h = Image.open(image).size
    good_box = row["scene"]["objects"][0]["box"]
    lines = [
        {"id": "good", "image": "scene.png", "question": row["question"], "box": good_box, "answer": row["answer"]},
        {"id": "outside", "image": "scene.png", "question": "What is there?", "box": [0, 0, w + 40, h / 2]},
        {"id": "empty", "image": "scene.png", "question": "What is there?", "box": [30, 30, 30, 50]},
        {"id": "no-image", "image": "missing.png", "question": "What is there?", "box": [0, 0, 10, 10]},
        {"id": "no-question", "image": "scene.png", "box": [0, 0, 10, 10]},
    ]
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(x) + "\n" for x in lines))

    items, errors = load_items(items_file)
    assert [it.id for it in items] == ["good"]
    assert all(isinstance(e, ItemError) for e in errors)
    got = {e.item_id: (e.field, e.reason) for e in errors}
    assert {k: v[0] for k, v in got.items()} == {"outside": "boxes[0]", "empty": "boxes[0]", "no-image": "image",
                                                   "no-question": "question"}
    assert "outside" in got["outside"][1] and "empty" in got["empty"][1] and "missing.png" in got["no-image"][1]
    assert all(repr(e.item_id) in str(e) and repr(e.field) in str(e) for e in errors)  # the message names both

    out = tmp_path / "out"
    rc = main(["analyze", "focus", "--items", str(items_file), "--model", str(SHAPES_TINY), "--out", str(out),
               "--max-new-tokens", "48", "--no-progress"])
    capsys.readouterr()
    assert rc == 0
    folder = out / "models" / "shapes-tiny-1"
    skipped = {r["id"]: r["field"] for r in _rows(folder / "skipped.jsonl")}
    assert skipped == {"outside": "boxes[0]", "empty": "boxes[0]", "no-image": "image", "no-question": "question"}
    assert [r["id"] for r in _rows(folder / "items.jsonl")] == ["good"]
    result = json.loads((out / "focus.json").read_text())
    assert result["models"]["shapes-tiny-1"]["skipped"] == 4 and result["models"]["shapes-tiny-1"]["analysed"] == 1


# ------------------------------------------------------------------------------------------------ kill and resume


def _focus_cmd(split: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "pointcopy.cli", "analyze", "focus", "--items", str(split), "--model", str(model),
            "--out", str(out), "--batch-size", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def resumed(split, tmp_path_factory):
    """Run the CLI, SIGKILL it once items.jsonl holds >= 1 but < N_ITEMS rows, then rerun it to the end."""
    out = tmp_path_factory.mktemp("resume") / "out"
    folder = out / "models" / "shapes-tiny-1"
    rows_file = folder / "items.jsonl"
    env = dict(os.environ)
    killed_at = None
    for _attempt in range(4):  # the analysis window is short; a run that finished before the kill is redone
        proc = subprocess.Popen(_focus_cmd(split, out, SHAPES_TINY), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if _complete_lines(rows_file) >= 1:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        else:
            if proc.poll() is None:
                proc.kill()
                pytest.fail("the first run did not write items.jsonl in time")
        stderr = proc.communicate()[1].decode(errors="replace")
        n = _complete_lines(rows_file)
        if proc.returncode == -signal.SIGKILL and 1 <= n < N_ITEMS:
            killed_at = n
            break
        assert proc.returncode in (0, -signal.SIGKILL), stderr[-2000:]
        for name in ("items.jsonl", "skipped.jsonl"):  # keep traces.jsonl: the retry only re-analyses
            (folder / name).unlink(missing_ok=True)
    assert killed_at is not None, "could not kill the run while it was analysing"
    assert not (out / "focus.json").exists()
    torn = not rows_file.read_bytes().endswith(b"\n")

    done = subprocess.run(_focus_cmd(split, out, SHAPES_TINY), capture_output=True, text=True, env=env, timeout=300)
    return dict(out=out, folder=folder, killed_at=killed_at, torn=torn, done=done)


def test_a_killed_run_resumes_without_losing_or_repeating_items(resumed, split, tmp_path, capsys):
    # Catches a resume that re-analyses finished items (duplicate ids), skips unfinished ones, trips over a torn
    # last line (kill -9 mid-write), or regenerates into a second set of traces; and a rerun into the same --out
    # with another checkpoint that is not refused (it would mix two models' rows) or refused with a traceback.
    from pointcopy.data.shapes.build import read_items

    done = resumed["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [r["id"] for r in _rows(resumed["folder"] / "items.jsonl")]
    want = [r["id"] for r in read_items(split)]
    assert sorted(ids) == sorted(want) and len(ids) == len(set(ids)) == N_ITEMS
    traces = [r["id"] for r in _rows(resumed["folder"] / "traces.jsonl")]
    assert sorted(traces) == sorted(want)  # generated once: the rerun read them back
    for name in ("focus.json", "focus.md", "focus_position.png"):
        assert (resumed["out"] / name).stat().st_size > 0, name

    # a rerun into the same --out with another checkpoint under the same label (in process: the CLI's own entry
    # point, whose return value is the exit status)
    from pointcopy.cli import main

    other = tmp_path / "shapes-tiny"
    shutil.copytree(SHAPES_TINY, other)
    rows_before = (resumed["folder"] / "items.jsonl").read_text()
    capsys.readouterr()
    status = main(_focus_cmd(split, resumed["out"], other)[3:])
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pointcopy analyze: error:"), err[-3000:]
    assert str(other) in lines[0] and "another --out" in lines[0]
    assert (resumed["folder"] / "items.jsonl").read_text() == rows_before  # nothing appended
    assert json.loads((resumed["folder"] / "model.json").read_text())["path"] == str(SHAPES_TINY)


# ------------------------------------------------------------------------------------------------------ statistics


def _defined(cell):
    return [(m, lo, hi) for m, lo, hi in zip(*(cell[k] if isinstance(cell[k], list) else [cell[k]]
                                              for k in ("mean", "lo", "hi")))
            if m is not None and lo is not None and hi is not None]


def test_focus_statistics_are_sane_and_two_labels_of_one_model_differ_by_exactly_zero(resumed, split, tmp_path):
    # Catches default layers that are not an early, a middle and the last of a 4-layer model, curves of another
    # length than POSITION_BINS, intervals that do not contain their mean (lo/hi swapped, another statistic's
    # interval), a resumed run whose rows differ from an uninterrupted one's, and a paired comparison that is not
    # paired (items misaligned between conditions give nonzero differences of one model with itself).
    result = json.loads((resumed["out"] / "focus.json").read_text())
    assert result["layers"] == ["0", "2", "3"]
    assert result["position_bins"] == POSITION_BINS
    cond = result["conditions"]["shapes-tiny"]
    assert cond["n_items"] == N_ITEMS and cond["models"] == ["shapes-tiny-1"]
    assert 0.0 <= cond["accuracy"] <= 1.0 and cond["copies_per_item"] > 0
    assert sorted(cond["layers"]) == ["0", "2", "3"]
    n_checked = 0
    for layer, per_metric in cond["layers"].items():
        assert sorted(per_metric) == sorted(METRICS)
        for metric, cell in per_metric.items():
            for k in ("mean", "lo", "hi"):
                assert len(cell["by_position"][k]) == POSITION_BINS
            assert all(len(seed) == POSITION_BINS for seed in cell["by_position_per_seed"])
            for name in ("by_position", "by_step", "late", "slope"):
                for m, lo, hi in _defined(cell[name]):
                    tol = 1e-9 * max(1.0, abs(m))
                    assert lo - tol <= m <= hi + tol, (layer, metric, name, lo, m, hi)
                    n_checked += 1
            if metric in ("image", "visual", "copies", "relevant", "relevant_visual"):
                assert all(0.0 <= v <= 1.0 + 1e-6 for v in cell["by_position"]["mean"] if v is not None)
    assert n_checked > 500
    image = cond["layers"]["0"]["image"]["by_position"]["mean"]
    assert all(v is not None and v > 0 for v in image)  # every bin has steps, and they attend to the image

    # the same model under two labels, its traces given (no regeneration): every paired difference is exactly 0
    out = tmp_path / "two"
    for name in ("a-1", "b-1"):
        (out / "models" / name).mkdir(parents=True)
        shutil.copy(resumed["folder"] / "traces.jsonl", out / "models" / name / "traces.jsonl")
    two = run_focus(RunOptions(items=str(split), out=str(out), models=[ModelSpec("a", str(SHAPES_TINY)),
                                                                       ModelSpec("b", str(SHAPES_TINY))],
                               batch_size=4, progress=False), echo=lambda *a: None)
    comparison = two["comparisons"]["a - b"]
    assert comparison["n_items"] == N_ITEMS and sorted(comparison["layers"]) == ["0", "2", "3"]
    n_zero = 0
    for per_metric in comparison["layers"].values():
        for cell in per_metric.values():
            for part in (cell["by_position"], cell["late"]):
                for m, lo, hi in _defined(part):
                    assert m == lo == hi == 0.0
                    n_zero += 1
    assert n_zero > 100

    # the resumed run's rows equal those of this uninterrupted run (other batches, so other padding: ~rounding)
    resumed_rows = {r["id"]: r for r in _rows(resumed["folder"] / "items.jsonl")}
    for r in _rows(out / "models" / "a-1" / "items.jsonl"):
        s = resumed_rows[r["id"]]
        assert (r["steps"], r["n_image"], r["n_relevant"], r["n_copies"]) == \
            (s["steps"], s["n_image"], s["n_relevant"], s["n_copies"])
        for layer, groups in r["layers"].items():
            for g, values in groups.items():
                other = s["layers"][layer][g]
                assert all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6) for a, b in zip(values, other))
