"""Training data streamed from an index (pointcopy.data.index, training.dataset): the indexed records are the
records `read_v1g` reads, for parquet and JSONL, bad rows included; the index is cached and rebuilt when a file
changes; DataLoader workers serve the same batches as the main process; and a run on parquet data killed
mid-epoch resumes to the uninterrupted run's weights."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pointcopy.data.index import RecordIndex, index_cache_path
from pointcopy.data.v1g import read_v1g

from test_train import ENV, _cli  # the `pointcopy train` subprocess the other resume test runs
from toy_grounded import write_toy



def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def to_parquet(jsonl: Path, dest: Path, row_group_size: int = 7, extra: list[dict] = ()) -> Path:
    """The JSONL v1g file as parquet shards with embedded image bytes (the released layout), in two files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    for r in rows:
        with Image.open(jsonl.parent / r["image"]) as im:
            r["image"] = {"bytes": _png(im), "path": None}
    rows += list(extra)
    dest.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for k, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), dest / f"train-{k:05d}.parquet", row_group_size=row_group_size)
    return dest


def _same(a, b) -> None:
    assert (a.id, a.conversations, a.regions, tuple(a.image_size), a.num_tokens, a.clamped) == \
        (b.id, b.conversations, b.regions, tuple(b.image_size), b.num_tokens, b.clamped)


@pytest.fixture()
def data(tmp_path):
    jsonl = write_toy(tmp_path / "j" / "train.jsonl", 30, seed=0)
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    bad = dict(rows[0], id="bad-box", regions=json.dumps({"<obj1>": [0, 0, 500, 20]}))
    edge = dict(rows[1], id="edge", regions=json.dumps({"<obj1>": [-1, 4, 24, 24]}))  # clamped, kept
    lines = jsonl.read_text().splitlines()
    lines[5:5] = [json.dumps(bad), "{not json", json.dumps(edge)]
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_indexed_records_are_the_reader_records(data, tmp_path, kind):
    source = data if kind == "jsonl" else to_parquet(write_toy(tmp_path / "p" / "t.jsonl", 30, seed=1),
                                                     tmp_path / "pq")
    reference = read_v1g(source)
    index = RecordIndex.build(source)
    assert len(index) == len(reference.records)
    for i, ref in enumerate(reference.records):
        rec = index.record(i)
        _same(rec, ref)
        if kind == "parquet":
            assert rec.image == ref.image  # the embedded bytes, read back from their row group
        else:
            assert Path(rec.image) == Path(ref.image)
    assert [(b["index"], b["id"], b["field"]) for b in index.bad] == \
        [(b.index, b.id, b.field) for b in reference.bad]
    if kind == "jsonl":
        assert [b["field"] for b in index.bad] == ["regions", "<row>"] and len(index.clamped) == 1


def test_index_is_cached_rebuilt_when_a_file_changes_and_kept_elsewhere_when_read_only(data, tmp_path, monkeypatch):
    first = RecordIndex.build(data)
    assert index_cache_path(data).exists()
    monkeypatch.setattr(RecordIndex, "_scan", classmethod(lambda *a, **k: pytest.fail("rebuilt a current index")))
    again = RecordIndex.build(data)
    assert again.fingerprint == first.fingerprint and (again.locations == first.locations).all()
    monkeypatch.undo()
    with data.open("a") as fh:  # one more record: size and mtime change
        fh.write(data.read_text().splitlines()[0].replace('"toy0-0"', '"added"') + "\n")
    grown = RecordIndex.build(data)
    assert len(grown) == len(first) + 1 and grown.record(len(grown) - 1).id == "added"
    assert RecordIndex.build(data, require_object_regions=False).validation != first.validation
    ro = tmp_path / "ro"
    ro.mkdir()
    target = write_toy(ro / "t.jsonl", 3, seed=2)
    # a read-only data folder (simulated: CI runs as root, for whom permissions do not bind)
    import pointcopy.data.index as index_module

    real_access = os.access
    monkeypatch.setattr(index_module.os, "access",
                        lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    RecordIndex.build(target)
    assert index_cache_path(target).is_relative_to(tmp_path / "cache") and index_cache_path(target).exists()
    assert not list(ro.glob("*.pcindex.npz"))


def test_dataset_lengths_and_fingerprint_come_from_the_index(data):
    from pointcopy.training.dataset import V1GDataset

    ds = V1GDataset([data, data])
    records = read_v1g(data).records
    assert len(ds) == 2 * len(records)
    assert ds.lengths[: len(records)] == [sum(len(t["value"]) for t in r.conversations) + len(r.regions)
                                          for r in records]
    # record 6 of the second copy is row 8 of the file: the bad row and the junk line before it count as rows
    assert ds.record(len(records) + 6).id == records[6].id and ds.origin(len(records) + 6) == (str(data), 8)
    assert V1GDataset([data]).fingerprint != ds.fingerprint


def test_loader_workers_serve_the_batches_the_main_process_serves(tmp_path):
    from torch.utils.data import DataLoader

    from pointcopy.collate import GroundedCollator
    from pointcopy.presets import build_tiny_processor
    from pointcopy.training.dataset import V1GDataset

    source = to_parquet(write_toy(tmp_path / "t.jsonl", 24, seed=3), tmp_path / "pq", row_group_size=5)
    collator = GroundedCollator(build_tiny_processor())
    ds = V1GDataset([source], prepare=collator.prepare)

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collator, num_workers=workers,
                            generator=torch.Generator().manual_seed(0))
        return list(loader)

    main, two = batches(0), batches(2)
    assert len(main) == len(two) == 6
    for a, b in zip(main, two):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_parquet_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    """64 parquet records, batch 4: the kill at step 8 lands mid-epoch (16 steps an epoch); two loader workers."""
    source = to_parquet(write_toy(tmp_path / "t.jsonl", 64, seed=4), tmp_path / "pq", row_group_size=6)
    args = ["--model", "tiny", "--train-data", str(source), "--batch-size", "4", "--max-steps", "12",
            "--save-steps", "4", "--learning-rate", "3e-3", "--no-progress", "--save-total-limit", "5",
            "--num-workers", "2"]
    straight = _cli(*args, "--output-dir", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    crashed = _cli(*args, "--output-dir", str(tmp_path / "b"), env={**ENV, "POINTCOPY_CRASH_AFTER_STEP": "8"})
    assert crashed.returncode == 137 and not (tmp_path / "b" / "final").exists()
    resumed = _cli(*args, "--output-dir", str(tmp_path / "b"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-8") and summary["global_step"] == 12
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
