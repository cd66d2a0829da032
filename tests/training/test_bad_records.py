"""Training survives bad images: real v1g files with a missing image, a non-image, a truncated PNG, a size mismatch
and a box a pixel past the edge; an image deleted after loading; a resumed run past a bad record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pointcopy.training.run import TrainOptions, train

from toy_grounded import write_toy

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
GOOD = 13  # + 5 added below = 18 rows, 15 after the load check: batch 5 -> 3 steps an epoch


def _mixed(root: Path) -> Path:
    """toy data + one row per kind of bad image (ids name the kind)."""
    path = write_toy(root / "train.jsonl", GOOD, seed=0)
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    images = root / "images"
    (images / "text.png").write_text("this is not an image\n")
    png = (root / rows[1]["image"]).read_bytes()
    (images / "cut.png").write_bytes(png[: len(png) // 2])  # the header reads, the pixels do not
    extra = {"missing": {"image": "images/nope.png"}, "not-image": {"image": "images/text.png"},
             "truncated": {"image": "images/cut.png"}, "size": {"image_size": [120, 112]}}
    for rid, over in extra.items():
        rows.append({**rows[1], "id": rid, **over})
    x1, y1, x2, y2 = json.loads(rows[2]["regions"])["<obj1>"]
    edge = {"<obj1>": [-1, y1, x2, y2]}  # a pixel past the left edge of the 112x112 image: clamped
    rows.append({**rows[2], "id": "edge", "regions": json.dumps(edge)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _options(data, out, **kw):
    base = dict(model="tiny", train_data=[str(data)], output_dir=str(out), batch_size=5, learning_rate=3e-3,
                max_steps=3, save_steps=1000, logging_steps=1, progress=False, resume=False)
    return TrainOptions(**{**base, **kw})


def _log(out: Path) -> dict:
    return {e["id"]: e for e in map(json.loads, (out / "bad_records.jsonl").read_text().splitlines())}


def test_bad_images_are_logged_and_training_finishes(tmp_path, caplog):
    data = _mixed(tmp_path)
    caplog.set_level("WARNING")
    summary = train(_options(data, tmp_path / "run"))  # 3 steps of 5 = every record once
    assert summary["global_step"] == 3 and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    log = _log(tmp_path / "run")
    assert set(log) == {"missing", "not-image", "size", "truncated", "edge"}
    assert (log["missing"]["stage"], log["missing"]["field"]) == ("load", "image")
    assert "No such file" in log["missing"]["reason"]
    assert "cannot identify image" in log["not-image"]["reason"]
    assert log["size"]["reason"] == "image is 112x112 but image_size says 120x112"
    # the truncated PNG passes the header check and fails when decoded: skipped during training, not fatal
    assert (log["truncated"]["stage"], log["truncated"]["field"]) == ("train", "image")
    assert "cannot decode image" in log["truncated"]["reason"]
    assert log["edge"]["action"] == "clamped" and "clamped to [0," in log["edge"]["reason"]
    assert all(e["action"] == "skipped" for k, e in log.items() if k != "edge")
    assert log["missing"]["source"] == str(data) and log["missing"]["index"] == GOOD
    assert (summary["bad_records"], summary["bad_records_in_training"], summary["clamped_boxes"]) == (3, 1, 1)
    clamp_warnings = [r.getMessage() for r in caplog.records if "clamped" in r.getMessage()]
    assert len(clamp_warnings) == 1 and "clamped 1 box(es) in 1 record(s)" in clamp_warnings[0]


def test_image_deleted_after_loading_is_skipped_and_logged(tmp_path, monkeypatch):
    from pointcopy.training import dataset as dataset_module

    data = write_toy(tmp_path / "train.jsonl", 10, seed=0)
    victim = tmp_path / json.loads(data.read_text().splitlines()[3])["image"]
    original = dataset_module.V1GDataset.__init__

    def load_then_delete(self, *args, **kwargs):  # the image is fine when loaded, gone when training reads it
        original(self, *args, **kwargs)
        victim.unlink()

    monkeypatch.setattr(dataset_module.V1GDataset, "__init__", load_then_delete)
    summary = train(_options(data, tmp_path / "run", batch_size=5, max_steps=2))  # one epoch: every record
    assert summary["global_step"] == 2 and summary["bad_records_in_training"] == 1
    (entry,) = _log(tmp_path / "run").values()
    assert (entry["id"], entry["field"], entry["stage"], entry["index"]) == ("toy0-3", "image", "train", 3)
    assert "cannot open image" in entry["reason"] and "No such file" in entry["reason"]


def test_substitute_is_deterministic_and_a_whole_bad_batch_still_steps(tmp_path):
    """A bad record's place goes to the next usable one (wrapping), so even a batch of only bad records is a full
    batch; if nothing is usable, a clear error."""
    from pointcopy.collate import GroundedCollator
    from pointcopy.presets import build_tiny_processor
    from pointcopy.training.dataset import V1GDataset

    data = write_toy(tmp_path / "train.jsonl", 6, seed=0)
    ds = V1GDataset([data], bad_log=tmp_path / "bad.jsonl", prepare=GroundedCollator(build_tiny_processor()).prepare)
    for i in (1, 2, 5):
        (tmp_path / "images" / f"toy0-{i}.png").unlink()
    ids = [ds[i].id for i in range(6)]
    assert ids == ["toy0-0", "toy0-3", "toy0-3", "toy0-3", "toy0-4", "toy0-0"]
    assert [ds[i].id for i in range(6)] == ids  # the same again (no state beyond the files)
    batch = GroundedCollator(build_tiny_processor())([ds[1], ds[2]])  # both bad: still two rows
    assert batch["input_ids"].shape[0] == 2
    logged = [json.loads(l)["id"] for l in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert logged == ["toy0-1", "toy0-2", "toy0-5"]  # each once
    for i in (0, 3, 4):
        (tmp_path / "images" / f"toy0-{i}.png").unlink()
    fresh = V1GDataset([data], prepare=ds.prepare)
    with pytest.raises(RuntimeError, match="no usable record left: all 6 records failed"):
        fresh[0]


def test_resumed_run_passes_the_bad_record_and_matches_the_straight_run(tmp_path):
    data = _mixed(tmp_path)
    straight = train(_options(data, tmp_path / "a", max_steps=5, save_steps=2))
    cli = [sys.executable, "-m", "pointcopy.cli", "train", "--model", "tiny", "--train-data", str(data),
           "--output-dir", str(tmp_path / "b"), "--batch-size", "5", "--learning-rate", "3e-3", "--max-steps", "5",
           "--save-steps", "2", "--logging-steps", "1", "--no-progress"]
    crashed = subprocess.run(cli, cwd=REPO, env={**ENV, "POINTCOPY_CRASH_AFTER_STEP": "4"}, capture_output=True,
                             text=True, timeout=900)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    resumed = train(_options(data, tmp_path / "b", max_steps=5, save_steps=2, resume=True))
    assert resumed["resumed_from"].endswith("checkpoint-4") and resumed["global_step"] == 5
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert straight["bad_records_in_training"] == resumed["bad_records_in_training"] == 1  # logged once, kept
    assert [e["stage"] for e in _log(tmp_path / "b").values()].count("train") == 1
